"""File routes:

GET  /files/{key}?expires=&sig=   a stored blob (media an endpoint returned, an upload), by
                                  signed URL; no API key needed, like a presigned S3 URL
POST /files/upload                store the body as a file (``Content-Type``, ``X-Fal-File-Name``
                                  or ``X-Klieg-File-Name``); {url, content_type, file_name,
                                  file_size}, the URL signed for ``result_ttl_s``
"""

from __future__ import annotations

import asyncio
import mimetypes
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import NotFoundError
from klieg_platform.gateway import auth
from klieg_platform.gateway.intake import read_limited
from klieg_platform.gateway.state import gateway
from klieg_platform.storage import MEDIA, UPLOADS, direct_url, put_async, upload_key
from klieg_platform.storage.signing import signed_url, verify

_SERVED_PREFIXES = (MEDIA, UPLOADS)


async def download(request: Request) -> Response:
    gw = gateway(request)
    key = request.path_params["key"]
    query = request.query_params
    verify(gw.settings.signing_key, key, query.get("expires", ""), query.get("sig", ""))
    if not key.startswith(_SERVED_PREFIXES):
        raise NotFoundError("no such file")
    data = await asyncio.to_thread(gw.store.get, key)
    kind = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, 200, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})


async def upload(request: Request) -> Response:
    gw = gateway(request)
    tenant = auth.caller(request)
    data = await read_limited(request, gw.settings.max_upload_bytes)
    name = (
        request.headers.get("x-klieg-file-name") or request.headers.get("x-fal-file-name") or ""
    ).replace("/", "_")[-128:]
    kind = request.headers.get("content-type") or "application/octet-stream"
    name = name or "upload" + (mimetypes.guess_extension(kind) or ".bin")
    key = upload_key(tenant.id, uuid.uuid4().hex, name)
    await put_async(gw.store, key, data)
    ttl = gw.settings.result_ttl_s
    url = direct_url(gw.store, key, ttl) or signed_url(
        gw.settings.base_url, gw.settings.signing_key, key, ttl
    )
    body = {"url": url, "content_type": kind, "file_name": name, "file_size": len(data)}
    return JSONResponse(body, 201)
