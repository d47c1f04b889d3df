"""The call token of the request a runner is serving now (read by ``klieg.call``).

Module-level rather than a context variable: a runner serves one call at a time, and threads
the endpoint starts must see the token too. The runner sets it before running endpoint code and
clears it after; outside a runner there is none.
"""

from __future__ import annotations

from collections.abc import Sequence

from klieg.exceptions import KliegError

_MIXED = object()
_current: str | object | None = None


def set_token(token: str | None) -> None:
    """The token of the call about to run (None or empty: the request carries none)."""
    global _current
    _current = token or None


def set_batch_tokens(tokens: Sequence[str]) -> None:
    """The tokens of a batch about to run. When all act for one tenant, the one that expires
    last; else a marker that makes ``current_token`` raise."""
    global _current
    parsed = [_tenant_and_expiry(t) for t in tokens]
    if len({tenant for tenant, _ in parsed}) > 1:
        _current = _MIXED
        return
    _current = max(tokens, key=lambda t: _tenant_and_expiry(t)[1], default="") or None


def _tenant_and_expiry(token: str) -> tuple[str, int]:
    """(tenant id, expiry) read from a ``kc1.<tenant>.<expiry>.<sig>`` token without verifying
    it (the gateway does); an unknown shape is its own tenant."""
    parts = token.split(".")
    if len(parts) == 4 and parts[2].isascii() and parts[2].isdigit():
        return parts[1], int(parts[2])
    return token, 0


def clear() -> None:
    """No call is running."""
    global _current
    _current = None


def current_token() -> str | None:
    """The token of the running request; None outside a request (or when it carries none).

    Raises ``KliegError`` inside a batch whose requests come from different tenants."""
    if _current is _MIXED:
        raise KliegError(
            "klieg.call inside a batch of requests from different tenants is not supported; "
            "call it per request (from an endpoint without max_batch_size)"
        )
    return _current if isinstance(_current, str) else None
