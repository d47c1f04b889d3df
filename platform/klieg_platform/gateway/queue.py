"""Queue routes (fal's queue protocol):

  POST /queue/{owner}/{app}[@ref][/{path}]           submit; {request_id, status_url, ...}
  GET  .../requests/{id}/status[?logs=1][&wait_s=S]  IN_QUEUE (queue_position, queue_eta_s) |
                                                     IN_PROGRESS | COMPLETED; ``logs`` always;
                                                     with ``wait_s`` (at most MAX_WAIT_S) it
                                                     answers once the request is COMPLETED or
                                                     S seconds have passed (a long poll)
  GET  .../requests/{id}/status/stream[?logs=1]      the same as server-sent events, until done
  GET  .../requests/{id}                             the result (or the request's error)
  PUT  .../requests/{id}/cancel                      cancel a queued or running request
  GET  /requests/{id}/status[?logs=1]                status by id alone (``klieg logs``)

``...`` is ``/queue/{owner}/{app}``. Only the tenant that submitted a request can see it; a
tenant that does not own the app sees its logs and errors as ``klieg_platform.disclosure``
describes, unless the app shows its logs to callers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import InvalidRequestError, NotFoundError
from klieg_platform.broker import NewRequest, RequestState
from klieg_platform.disclosure import error_view, logs_view
from klieg_platform.gateway import auth, bodies, sse
from klieg_platform.gateway.contract import answers, query, takes
from klieg_platform.gateway.intake import (
    DEFAULT_SERVICE_S,
    enqueue,
    intake,
    result_response,
    seconds,
)
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.gateway.waiter import Waiter
from klieg_platform.registry import WORKFLOW_PREFIX
from klieg_platform.scheduler import estimate_start_s


def request_urls(request: Request, owner: str, app: str, request_id: str) -> dict[str, str]:
    """response_url, status_url and cancel_url of a request (a workflow's are under
    ``/queue/workflows/{owner}/{name}``)."""
    base = str(request.base_url).rstrip("/")
    if app.startswith(WORKFLOW_PREFIX):
        root = f"{base}/queue/workflows/{owner}/{app.removeprefix(WORKFLOW_PREFIX)}"
    else:
        root = f"{base}/queue/{owner}/{app}"
    root = f"{root}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


@answers(bodies.Submitted)
@takes(bodies.INPUT, "the endpoint's input")
async def submit(request: Request) -> Response:
    """Queue a call of the app's endpoint; its request id and URLs."""
    job = await intake(request, allow_stream=False)
    return await enqueue_and_accept(request, job.gw, job.new)


async def enqueue_and_accept(request: Request, gw: GatewayState, new: NewRequest) -> Response:
    """Queue ``new`` and answer with its id, queue position and URLs (fal's submit reply)."""
    position = await enqueue(gw, new, position=True)
    body: dict[str, Any] = {
        "request_id": new.id,
        "status": "IN_QUEUE",
        "queue_position": position,
        **request_urls(request, new.owner, new.app, new.id),
    }
    return JSONResponse(body, 200)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


async def _owned(request: Request, *, logs: bool = False) -> tuple[GatewayState, RequestState]:
    """The request named in the path, if the caller's tenant submitted it (else 404)."""
    gw = gateway(request)
    tenant = auth.caller(request)
    rid = request.path_params["request_id"]
    state = await gw.broker.queue.get(rid, with_logs=logs)
    owner = request.path_params.get("owner")
    app = request.path_params.get("app", "").partition("@")[0]
    if (
        state is None
        or state.tenant != tenant.id
        or (owner is not None and (state.owner != owner or state.app != app))
    ):
        raise NotFoundError(f"request {rid} not found")
    return gw, state


async def full_view(request: Request, gw: GatewayState, state: RequestState) -> bool:
    """Whether the caller sees ``state``'s logs and errors in full (``GatewayState.full_view``);
    otherwise ``status_body`` and ``result_response`` show them through ``disclosure``."""
    return await gw.full_view(auth.caller(request).id, state.owner, state.app)


def status_body(request: Request, state: RequestState, *, logs: bool, full: bool) -> dict[str, Any]:
    lines = state.logs or []
    body: dict[str, Any] = {
        "request_id": state.id,
        "status": state.status,
        **request_urls(request, state.owner, state.app, state.id),
        "logs": (lines if full else logs_view(lines)) if logs else None,
    }
    if state.status == "IN_QUEUE":
        body["queue_position"] = state.queue_position
    if state.status == "COMPLETED":
        if state.started_ms and state.finished_ms:
            body["metrics"] = {"inference_time": (state.finished_ms - state.started_ms) / 1000}
        if state.outcome == "error" and state.error:
            error = state.error if full else error_view(state.error)
            body["error"] = error.get("detail")
            body["error_type"] = error.get("error_type")
    if state.cancel_requested and state.status != "COMPLETED":
        body["cancel_requested"] = True
    if state.webhook:
        body["webhook"] = {
            "url": state.webhook,
            "status": state.webhook_status or "pending",
            "attempts": state.webhook_attempts,
            "last_error": state.webhook_last_error or None,
        }
    return body


async def queue_eta_s(gw: GatewayState, state: RequestState) -> float | None:
    """Seconds until a queued request is expected to start, from measured service and
    cold-start times of its app and the slots serving its pool now."""
    if state.queue_position is None:
        return None
    app_key = f"{state.owner}/{state.app}"
    capacity, warm = await gw.broker.workers.capacity(state.pool)
    service = await gw.broker.stats.mean_time("service", app_key) or DEFAULT_SERVICE_S
    cold = await gw.broker.stats.mean_time("cold", app_key) or 0.0
    eta = estimate_start_s(state.queue_position, service, capacity, cold, app_key in warm)
    return round(eta, 2)


MAX_WAIT_S = 60.0
"""The longest a status request may wait for its request to complete (``wait_s``)."""


def _wait_s(request: Request) -> float:
    raw = request.query_params.get("wait_s")
    return 0.0 if raw is None else seconds(raw, "wait_s", most=MAX_WAIT_S, zero=True)


@answers(bodies.RequestStatus, 200, 202)
@query(
    logs={"type": "string", "description": "1, true or yes: with the logs"},
    wait_s={"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
)
async def status(request: Request) -> Response:
    """The request's status: 200 once COMPLETED, 202 before."""
    logs = _flag(request, "logs")
    wait_s = _wait_s(request)
    if wait_s > 0:
        await _until_completed(request, wait_s)
    gw, state = await _owned(request, logs=logs)
    body = status_body(request, state, logs=logs, full=await full_view(request, gw, state))
    if state.status == "IN_QUEUE":
        body["queue_eta_s"] = await queue_eta_s(gw, state)
    return JSONResponse(body, 200 if state.status == "COMPLETED" else 202)


async def _until_completed(request: Request, wait_s: float) -> None:
    """Return once the request named in the path (the caller's, else 404) is COMPLETED, or
    after ``wait_s``."""
    waiter: Waiter = request.app.state.waiter
    async with waiter.watch(request.path_params["request_id"]) as done:
        gw, state = await _owned(request)
        if state.status != "COMPLETED":
            await gw.broker.queue.completed(
                state.id, done, poll_s=min(wait_s, 5.0), within_s=wait_s
            )


@answers("text/event-stream")
@query(logs={"type": "string", "description": "1, true or yes: with the logs"})
async def status_stream(request: Request) -> Response:
    """SSE: a status document whenever the status changes or log lines arrive (each event
    carries only the lines that are new since the previous one), ending with COMPLETED."""
    logs = _flag(request, "logs")
    gw, first = await _owned(request)
    full = await full_view(request, gw, first)

    async def events() -> AsyncIterator[bytes]:
        seen_logs = 0
        last: tuple[str, int | None] | None = None
        while True:
            state = await gw.broker.queue.get(first.id)
            if state is None:
                return
            new_lines = await gw.broker.streams.logs(first.id, seen_logs) if logs else []
            key = (state.status, state.queue_position)
            if key != last or new_lines:
                body = status_body(request, state, logs=False, full=full)
                if state.status == "IN_QUEUE" and key != last:
                    body["queue_eta_s"] = await queue_eta_s(gw, state)
                body["logs"] = (new_lines if full else logs_view(new_lines)) if logs else None
                seen_logs += len(new_lines)
                last = key
                yield sse.event(json.dumps(body).encode())
            if state.status == "COMPLETED":
                return
            await asyncio.sleep(0.1)

    return sse.response(events())


@answers(bodies.Output)
async def result(request: Request) -> Response:
    """The request's result, or its error."""
    gw, state = await _owned(request)
    outcome = await gw.broker.queue.outcome(state.id) if state.status == "COMPLETED" else None
    if outcome is None:
        raise InvalidRequestError(f"request {state.id} is {state.status}, not COMPLETED yet")
    full = outcome.ok or await full_view(request, gw, state)
    return await result_response(gw, state.id, outcome, full=full)


@answers(bodies.CancelRequested, 202)
async def cancel(request: Request) -> Response:
    """Cancel a queued or running request (400 once it completed)."""
    gw, state = await _owned(request)
    outcome = await gw.broker.queue.cancel(state.id)
    if outcome in (1, 2):
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)
    if outcome == -1:
        raise NotFoundError(f"request {state.id} not found")
    body = {
        "status": "ALREADY_COMPLETED",
        "detail": f"request {state.id} is already completed",
        "error_type": "InvalidRequestError",
    }
    return JSONResponse(body, 400)
