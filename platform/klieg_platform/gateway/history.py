"""The caller's own requests, kept as long as their records.

``GET /requests``: newest first. Query: ``app`` (``name`` or ``owner/name``), ``status``
(``IN_QUEUE``, ``IN_PROGRESS``, ``COMPLETED``, or how a completed one ended: ``ok``, ``error``,
``cancelled``), ``since`` (unix seconds), ``limit`` (1-1000, default 50) and ``after`` (the
``next`` cursor of the previous page). Each request: id, app, endpoint, revision, tier, queue
priority (``normal`` or ``low``), status,
outcome, error type, attempts, when it was created, and its seconds queued, running, and of
those running the wait for a runner started for it (``cold_start_s``, null when a warm runner
served it).

``GET /requests/{id}``: one of them, with its input (the JSON accepted; null with
``input_stored`` when a large one went to the blob store), its logs and error as the caller may
see them (``disclosure``), and its ``response_url`` (the result) and ``status_url``.

API keys only: a call token is for calling apps, not for reading a tenant's history.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import InvalidRequestError, NotFoundError, PermissionDeniedError
from klieg_platform.broker import RequestState
from klieg_platform.disclosure import error_view, logs_view
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.contract import answers, query
from klieg_platform.gateway.queue import request_urls
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
        "priority": state.priority,
        "status": state.status,
        "outcome": ending(state),
        "error_type": (state.error or {}).get("error_type"),
        "attempts": state.attempts,
        "created_at": state.created_ms / 1000,
        "queue_s": round((started - state.created_ms) / 1000, 3) if started else None,
        "cold_start_s": round(state.cold_ms / 1000, 3) if state.cold_ms else None,
        "setup_s": round(state.setup_ms / 1000, 3) if state.cold_ms else None,
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


def _keyed(request: Request) -> None:
    if auth.caller_key(request) is None:
        raise PermissionDeniedError("a request history takes an API key, not a call token")


@answers(bodies.RequestDetail)
async def one_request(request: Request) -> Response:
    """One of the caller's requests, with its input and logs (404 for anyone else's)."""
    _keyed(request)
    gw, tenant = gateway(request), auth.caller(request)
    rid = request.path_params["request_id"]
    state = await gw.broker.queue.get(rid, with_logs=True)
    if state is None or state.tenant != tenant.id:
        raise NotFoundError(f"request {rid} not found")
    body, ref = await gw.broker.queue.payload(rid)
    try:
        given = json.loads(body) if body else None
    except ValueError:
        given = None
    full = await gw.full_view(tenant.id, state.owner, state.app)
    error = state.error if full or not state.error else error_view(state.error)
    return JSONResponse({
        **row(state),
        "input": given,
        "input_stored": bool(ref),
        "error": (error or {}).get("detail"),
        "logs": (state.logs or []) if full else logs_view(state.logs or []),
        "queue_position": state.queue_position,
        **request_urls(request, state.owner, state.app, state.id),
    })  # fmt: skip


@answers(bodies.RequestPage)
@query(
    app={"type": "string", "description": "name or owner/name"},
    status={"enum": [*STATUSES, *ENDINGS]},
    since={"type": "number", "minimum": 0, "exclusiveMaximum": 1e11, "description": "unix s"},
    limit={"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
    after={"type": "string", "description": "the next cursor of the previous page"},
)
async def list_requests(request: Request) -> Response:
    """The caller's requests, newest first."""
    _keyed(request)
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
