"""Signed, expiring URLs for blobs the gateway serves (``GET /files/{key}?expires=&sig=``).

``sig`` is an HMAC-SHA256 of ``key`` and ``expires`` under the platform's signing key, so any
gateway sharing the key can verify a URL without a lookup, and a URL stops working after it
expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

from klieg.exceptions import AuthenticationError


def signature(secret: str, key: str, expires: int) -> str:
    message = f"{key}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_url(base_url: str, secret: str, key: str, ttl_s: int) -> str:
    if not secret:
        raise RuntimeError("no signing key: set KLIEG_SIGNING_KEY (klieg up makes one)")
    expires = int(time.time()) + ttl_s
    sig = signature(secret, key, expires)
    return f"{base_url.rstrip('/')}/files/{quote(key)}?expires={expires}&sig={sig}"


def verify(secret: str, key: str, expires: str, sig: str) -> None:
    """Raise AuthenticationError unless ``sig`` signs ``key`` and ``expires`` has not passed."""
    if not secret or not expires.isdigit():
        raise AuthenticationError("invalid file URL")
    if not hmac.compare_digest(signature(secret, key, int(expires)), sig):
        raise AuthenticationError("invalid file URL signature")
    if int(expires) < time.time():
        raise AuthenticationError("the file URL has expired")
