"""File routes:

GET  /files/{key}?expires=&sig=   a stored blob (media an endpoint returned, an upload), by
                                  signed URL; no API key needed, like a presigned S3 URL
POST /files/upload                store the body as a file (``Content-Type``, ``X-Fal-File-Name``
                                  or ``X-Klieg-File-Name``); {url, access_url, content_type,
                                  file_name, file_size}, the URL signed for ``result_ttl_s``
POST /storage/auth/token?storage_type=fal-cdn-v3
                                  fal_client's upload token: {token, token_type, base_url,
                                  expires_at}; the token is a call token of the caller's tenant
                                  (``calltokens.py``), good for ``POST /files/upload`` at
                                  ``base_url`` (this gateway) for ``UPLOAD_TOKEN_TTL_S``

fal_client (1.0.3, the newest) uploads by asking ``{REST_URL}/storage/auth/token`` for a token
and posting the bytes to ``{CDN_URL}/files/upload`` with it, reading ``access_url`` from the
answer; both hosts are constants of its ``fal_client.client`` module (``https://rest.fal.ai``,
``https://v3.fal.media``) that no variable sets. Pointed at this gateway (those constants set
in the caller's process before its first upload, or those names resolving here with a
certificate for them), the unmodified client uploads into Klieg's blob store. Its multipart
path (files over 100 MiB) and its fallback (``storage/upload/initiate``) are not served.
"""

from __future__ import annotations

import asyncio
import mimetypes
import uuid
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import InvalidRequestError, NotFoundError, UnavailableError
from klieg_platform import calltokens
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.contract import answers, query, takes
from klieg_platform.gateway.intake import read_limited
from klieg_platform.gateway.state import gateway
from klieg_platform.storage import MEDIA, UPLOADS, direct_url, put_async, upload_key
from klieg_platform.storage.signing import signed_url, verify

_SERVED_PREFIXES = (MEDIA, UPLOADS)


@answers("application/octet-stream")
@query(expires={"type": "string"}, sig={"type": "string"})
async def download(request: Request) -> Response:
    """A stored file, by its signed URL."""
    gw = gateway(request)
    key = request.path_params["key"]
    query = request.query_params
    verify(gw.settings.signing_key, key, query.get("expires", ""), query.get("sig", ""))
    if not key.startswith(_SERVED_PREFIXES):
        raise NotFoundError("no such file")
    data = await asyncio.to_thread(gw.store.get, key)
    kind = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, 200, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})


@answers(bodies.Uploaded, 201)
@takes(bodies.FILE, "the file's bytes", media="application/octet-stream")
async def upload(request: Request) -> Response:
    """Store the body as a file; its signed URL."""
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
    body = {"url": url, "access_url": url, "content_type": kind, "file_name": name,
            "file_size": len(data)}  # fmt: skip
    return JSONResponse(body, 201)


UPLOAD_TOKEN_TTL_S = 3600.0
UPLOAD_STORAGE = "fal-cdn-v3"


@answers(bodies.UploadToken)
@query(storage_type={"enum": [UPLOAD_STORAGE], "default": UPLOAD_STORAGE})
async def upload_token(request: Request) -> Response:
    """fal_client's upload token (see the module's contract)."""
    gw = gateway(request)
    kind = request.query_params.get("storage_type", UPLOAD_STORAGE)
    if kind != UPLOAD_STORAGE:
        raise InvalidRequestError(f"storage_type {kind!r} is not served; use {UPLOAD_STORAGE}")
    if not gw.settings.signing_key:
        raise UnavailableError("this gateway has no signing key: it cannot issue upload tokens")
    token = calltokens.issue(gw.settings.signing_key, auth.caller(request).id, UPLOAD_TOKEN_TTL_S)
    expires = datetime.now(UTC) + timedelta(seconds=UPLOAD_TOKEN_TTL_S)
    return JSONResponse(
        {
            "token": token,
            "token_type": "Bearer",
            "base_url": str(request.base_url).rstrip("/"),
            "expires_at": expires.isoformat(),
        }
    )
