"""``GET /requests``: the caller's own requests, newest first, kept as long as their records.

Query: ``app`` (``name`` or ``owner/name``), ``status`` (``IN_QUEUE``, ``IN_PROGRESS``,
``COMPLETED``, or how a completed one ended: ``ok``, ``error``, ``cancelled``), ``since`` (unix
seconds), ``limit`` (1-1000, default 50) and ``after`` (the ``next`` cursor of the previous
page). Each request: id, app, endpoint, revision, tier, status, outcome, error type, attempts,
when it was created, and its seconds queued and running. Its input, result and logs are at the
queue routes (``/requests/{id}/status?logs=1``, the result URL). API keys only: a call token is
for calling apps, not for reading a tenant's history.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import InvalidRequestError, PermissionDeniedError
from klieg_platform.broker import RequestState
from klieg_platform.gateway import auth
from klieg_platform.gateway.state import gateway

STATUSES = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
ENDINGS = ("ok", "error", "cancelled")
MAX_LIMIT = 1000


def ending(state: RequestState) -> str | None:
    """How a completed request ended: ok, error or cancelled; None before it completes."""
    if state.status != "COMPLETED":
        return None
    if state.error and state.error.get("error_type") == "RequestCancelledError":
        return "cancelled"
    return "ok" if state.outcome == "ok" else "error"


def row(state: RequestState) -> dict[str, Any]:
    started, finished = state.started_ms, state.finished_ms
    return {
        "request_id": state.id,
        "app": f"{state.owner}/{state.app}",
        "endpoint": state.endpoint,
        "revision": state.revision,
        "tier": state.tier,
        "status": state.status,
        "outcome": ending(state),
        "error_type": (state.error or {}).get("error_type"),
        "attempts": state.attempts,
        "created_at": state.created_ms / 1000,
        "queue_s": round((started - state.created_ms) / 1000, 3) if started else None,
        "run_s": round((finished - started) / 1000, 3) if started and finished else None,
    }


def _limit(text: str | None) -> int:
    if text is None:
        return 50
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _since_ms(text: str | None) -> int:
    if text is None:
        return 0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e11:
        raise InvalidRequestError(f"since must be unix seconds, not {text!r}")
    return int(value * 1000)


async def list_requests(request: Request) -> Response:
    """The caller's requests, newest first."""
    if auth.caller_key(request) is None:
        raise PermissionDeniedError("a request history takes an API key, not a call token")
    tenant = auth.caller(request)
    q = request.query_params
    status, app = q.get("status"), q.get("app")
    if status is not None and status not in (*STATUSES, *ENDINGS):
        allowed = ", ".join((*STATUSES, *ENDINGS))
        raise InvalidRequestError(f"unknown status {status!r}; one of {allowed}")

    def keep(state: RequestState) -> bool:
        if app is not None and app not in (state.app, f"{state.owner}/{state.app}"):
            return False
        return status is None or status in (state.status, ending(state))

    found, cursor = await gateway(request).broker.queue.history(
        tenant.id,
        after=q.get("after"),
        since_ms=_since_ms(q.get("since")),
        limit=_limit(q.get("limit")),
        keep=keep,
    )
    return JSONResponse({"requests": [row(s) for s in found], "next": cursor})
