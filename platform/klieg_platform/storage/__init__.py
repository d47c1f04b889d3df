"""Blob storage: the ``BlobStore`` protocol and its backends (``local``, ``s3``).

Keys are ``/``-separated relative paths such as ``code/<sha256>.tar.gz``. Writes are atomic:
a reader sees the whole object or none of it. ``get`` of an absent key raises ``NotFoundError``;
``delete`` of an absent key is a no-op; any other backend failure raises ``StorageError``.

A store may also hand out direct URLs (``DirectURLs``: S3 presigned GETs); ``direct_url`` asks
any store for one and is ``None`` where callers must go through the gateway's signed URLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from klieg.exceptions import InvalidRequestError, KliegError


class StorageError(KliegError):
    """The blob store failed (unreachable, denied, misconfigured); ``detail`` names the key."""

    status_code = 503


class BlobStore(Protocol):
    inline_put_bytes: int
    """``put_async`` writes objects up to this size on the event loop itself: cheaper than a
    thread hop where a write is a few system calls (the local store); 0 for network stores."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """``delete`` of every key (absent ones are no-ops), in as few calls as the backend
        allows."""
        ...

    def written_before(self, prefix: str, before: float, limit: int) -> list[str]:
        """Up to ``limit`` keys under ``prefix`` (a folder such as ``media/``) last written
        before ``before`` (epoch seconds), for the retention sweep."""
        ...


@runtime_checkable
class DirectURLs(Protocol):
    def url_for(self, key: str, ttl_s: int) -> str | None: ...


def check_key(key: str) -> str:
    """``key`` if it is a valid relative key (no empty, ``.`` or ``..`` segment, no leading
    ``/``, no NUL); otherwise ``InvalidRequestError``. Both backends check keys this way, by
    their text alone, so a key means the same object in either."""
    if not key or key.startswith("/") or "\0" in key:
        raise InvalidRequestError(f"invalid blob key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidRequestError(f"invalid blob key {key!r}")
    return key


def direct_url(store: BlobStore, key: str, ttl_s: int) -> str | None:
    """A URL callers fetch ``key`` from directly for ``ttl_s`` seconds, or ``None`` (no such URLs:
    the local store, or S3 without ``KLIEG_S3_PRESIGN``)."""
    return store.url_for(key, ttl_s) if isinstance(store, DirectURLs) else None


async def put_async(store: BlobStore, key: str, data: bytes) -> None:
    """``store.put`` from async code: small objects of a local store inline, the rest in a
    thread (an output of a batch is many small files; each thread hop wakes a thread that
    competes with the model for the CPU)."""
    if len(data) <= store.inline_put_bytes:
        store.put(key, data)
    else:
        await asyncio.to_thread(store.put, key, data)


MEDIA = "media/"
"""Files endpoints returned: ``media/<first two characters of the request id>/<request id>-
<token>-<name>`` (``media_key``)."""
UPLOADS = "uploads/"
"""Files tenants uploaded: ``uploads/<tenant id>/<random>/<name>``."""
PAYLOADS = "payloads/"
RESULTS = "results/"


def code_key(code_hash: str) -> str:
    """Where a revision's code archive lives."""
    return f"code/{code_hash}.tar.gz"


def media_key(request_id: str, token: str, name: str) -> str:
    """Where a file an endpoint returned lives: in one of 256 folders by its request id (hex),
    not a folder of its request's own. On a local disk a new folder per request cost the
    worker a directory inode per request, a third of its CPU on an image app's requests;
    the files of a request still share their name's head."""
    return f"{MEDIA}{request_id[:2]}/{request_id}-{token}-{name}"


def upload_key(tenant_id: str, folder: str, name: str) -> str:
    """Where a file a tenant uploaded lives."""
    return f"{UPLOADS}{tenant_id}/{folder}/{name}"


def payload_key(request_id: str) -> str:
    """Where a request body too large to keep in Redis lives."""
    return f"{PAYLOADS}{request_id}.json"


async def offload_payload(
    store: BlobStore, request_id: str, body: bytes, inline_limit: int
) -> tuple[bytes, str]:
    """``(body, "")`` when ``body`` fits in ``inline_limit`` bytes; otherwise it is stored under
    ``payload_key(request_id)`` and ``(b"", key)`` is returned, for the record to keep."""
    if len(body) <= inline_limit:
        return body, ""
    key = payload_key(request_id)
    await put_async(store, key, body)
    return b"", key


def result_key(request_id: str) -> str:
    """Where a result too large to keep in Redis lives."""
    return f"{RESULTS}{request_id}.json"


def request_of(key: str) -> str:
    """The request id of a ``payload_key`` or a ``result_key``."""
    return key.split("/", 1)[1].removesuffix(".json")
