"""Call tokens: short-lived credentials that let an app call other apps as its caller's tenant.

A worker issues one per request it hands to a runner (``klieg.call`` sends it back as
``Authorization: Bearer <token>``); any gateway sharing the platform's signing key verifies it
without a lookup. Format: ``kc1.<tenant_id>.<expiry_unix>.<hmac_sha256_hex>``; the HMAC covers
the prefix, tenant id and expiry under a key derived from the signing key, so a call token can
never be confused with a signed file URL (``storage/signing.py``) made with the same key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import time

PREFIX = "kc1"


@functools.lru_cache(maxsize=8)
def _key(signing_key: bytes | str) -> bytes:
    raw = signing_key.encode() if isinstance(signing_key, str) else signing_key
    return hmac.new(raw, b"klieg call token", hashlib.sha256).digest()


def _signature(signing_key: bytes | str, tenant_id: str, expires: int) -> str:
    message = f"{PREFIX}\n{tenant_id}\n{expires}".encode()
    return hmac.new(_key(signing_key), message, hashlib.sha256).hexdigest()


def is_call_token(credential: str) -> bool:
    """Whether ``credential`` has the shape of a call token (not whether it is valid)."""
    return credential.startswith(PREFIX + ".")


def issue(signing_key: bytes | str, tenant_id: str, ttl_s: float) -> str:
    """A token acting for ``tenant_id`` until ``ttl_s`` seconds from now (rounded up).

    Raises ``ValueError`` without a signing key or for a tenant id that is empty or holds a dot.
    """
    if not signing_key:
        raise ValueError("no signing key: set KLIEG_SIGNING_KEY (klieg up makes one)")
    if not tenant_id or "." in tenant_id:
        raise ValueError(f"invalid tenant id {tenant_id!r}")
    expires = math.ceil(time.time() + ttl_s)
    return f"{PREFIX}.{tenant_id}.{expires}.{_signature(signing_key, tenant_id, expires)}"


def verify(signing_key: bytes | str, token: str) -> str | None:
    """The tenant id ``token`` acts for; None when it is malformed, forged or expired (or there
    is no signing key)."""
    parts = token.split(".")
    if not signing_key or len(parts) != 4 or parts[0] != PREFIX:
        return None
    _, tenant_id, expires, sig = parts
    if not tenant_id or not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return None
    expected = _signature(signing_key, tenant_id, int(expires))
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        return None
    if int(expires) <= time.time():
        return None
    return tenant_id


class Issued:
    """Tokens issued by one process, reused: a token for a tenant is valid for ``ttl_s`` and up
    to ``REUSE_S`` more, and is handed out again for the same tenant and (whole seconds of)
    ``ttl_s`` while at least ``ttl_s`` of it is left, so a busy worker signs about one token
    per tenant and duration every ``REUSE_S`` instead of one per request."""

    REUSE_S = 10.0
    KEEP = 1024
    """Tokens held at most (all are dropped past it)."""

    def __init__(self, signing_key: bytes | str) -> None:
        self.signing_key = signing_key
        self._held: dict[tuple[str, int], tuple[float, str]] = {}

    def token(self, tenant_id: str, ttl_s: float) -> str:
        """A token acting for ``tenant_id`` for at least ``ttl_s`` seconds from now."""
        key = (tenant_id, math.ceil(ttl_s))
        now = time.monotonic()
        held = self._held.get(key)
        if held is not None and now - held[0] < self.REUSE_S:
            return held[1]
        if len(self._held) >= self.KEEP:
            self._held.clear()
        token = issue(self.signing_key, tenant_id, key[1] + self.REUSE_S)
        self._held[key] = (now, token)
        return token
