"""Blob storage: the ``BlobStore`` protocol and its backends (``local`` now; S3 alongside).

Keys are ``/``-separated relative paths such as ``code/<sha256>.tar.gz``. Writes are atomic:
a reader sees the whole object or none of it.
"""

from __future__ import annotations

from typing import Protocol


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


def code_key(code_hash: str) -> str:
    """Where a revision's code archive lives."""
    return f"code/{code_hash}.tar.gz"


def payload_key(request_id: str) -> str:
    """Where a request body too large to keep in Redis lives."""
    return f"payloads/{request_id}.json"


def result_key(request_id: str) -> str:
    """Where a result too large to keep in Redis lives."""
    return f"results/{request_id}.json"
