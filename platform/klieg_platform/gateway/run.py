"""Inference routes: sync ``POST /{owner}/{app}[/{path}]`` and the fal-style queue.

POST /{owner}/{app}[@ref][/{path}]                 run and wait; the endpoint's output
POST /queue/{owner}/{app}[@ref][/{path}]           submit; {request_id, status_url, ...}
GET  /queue/{owner}/{app}/requests/{id}/status     IN_QUEUE (queue_position) | IN_PROGRESS |
                                                   COMPLETED; ``?logs=1`` adds the logs
GET  /queue/{owner}/{app}/requests/{id}            the result (or the request's error)
PUT  /queue/{owner}/{app}/requests/{id}/cancel     cancel a queued request
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationError,
)
from klieg_platform.broker import NewRequest, Outcome, RequestState
from klieg_platform.gateway.errors import error_response
from klieg_platform.gateway.state import GatewayState
from klieg_platform.gateway.waiter import Waiter


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if body.strip():
        try:
            json.loads(body)
        except ValueError as exc:
            raise ValidationError(
                [{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]
            ) from exc
    return body


async def _enqueue(request: Request) -> tuple[GatewayState, NewRequest]:
    gw = _state(request)
    tenant = await gw.tenant(request)
    owner = request.path_params["owner"]
    app_ref = request.path_params["app"]
    path = request.path_params.get("path", "")
    resolved = await gw.resolve(tenant, owner, app_ref)
    route = resolved.spec.route(path)
    if route is None:
        raise NotFoundError(f"app {owner}/{resolved.spec.name} has no endpoint at '/{path}'")
    fn, ep = route
    body = await read_body(request, gw.settings.max_body_bytes)
    new = NewRequest(
        id=uuid.uuid4().hex,
        owner=owner,
        tenant=tenant.id,
        app=resolved.spec.name,
        revision=resolved.revision.id,
        function=fn.name,
        endpoint=ep.path,
        pool=fn.pool,
        payload=body,
        timeout_s=fn.request_timeout,
    )
    return gw, new


def result_response(request_id: str, outcome: Outcome) -> Response:
    headers = {"x-klieg-request-id": request_id}
    if outcome.ok:
        return Response(outcome.result, 200, media_type="application/json", headers=headers)
    err = outcome.error or {"detail": "request failed", "error_type": "KliegError"}
    return error_response(
        outcome.http_status, err.get("detail"), str(err.get("error_type")), headers=headers
    )


async def run_sync(request: Request) -> Response:
    gw, new = await _enqueue(request)
    waiter: Waiter = request.app.state.waiter
    fut = waiter.expect(new.id)
    await gw.broker.enqueue(new)
    await waiter.wait(new.id, fut)
    outcome = await gw.broker.outcome(new.id)
    if outcome is None:
        raise NotFoundError(f"request {new.id} expired before its result was read")
    return result_response(new.id, outcome)


def _urls(request: Request, owner: str, app: str, request_id: str) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    root = f"{base}/queue/{owner}/{app}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


async def submit(request: Request) -> Response:
    gw, new = await _enqueue(request)
    await gw.broker.enqueue(new)
    state = await gw.broker.get(new.id)
    body: dict[str, Any] = {
        "request_id": new.id,
        "status": "IN_QUEUE",
        "queue_position": state.queue_position if state else None,
        **_urls(request, new.owner, new.app, new.id),
    }
    return JSONResponse(body, 200)


async def _owned(request: Request) -> tuple[GatewayState, RequestState]:
    gw = _state(request)
    tenant = await gw.tenant(request)
    rid = request.path_params["request_id"]
    state = await gw.broker.get(rid)
    app = request.path_params["app"].partition("@")[0]
    if (
        state is None
        or state.tenant != tenant.id
        or state.owner != request.path_params["owner"]
        or state.app != app
    ):
        raise NotFoundError(f"request {rid} not found")
    return gw, state


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


async def status(request: Request) -> Response:
    _, state = await _owned(request)
    urls = _urls(request, state.owner, state.app, state.id)
    body: dict[str, Any] = {
        "request_id": state.id,
        "status": state.status,
        "response_url": urls["response_url"],
        "status_url": urls["status_url"],
        "cancel_url": urls["cancel_url"],
        "logs": (state.logs or []) if _flag(request, "logs") else None,
    }
    if state.status == "IN_QUEUE":
        body["queue_position"] = state.queue_position
    if state.status == "COMPLETED":
        if state.started_ms and state.finished_ms:
            body["metrics"] = {"inference_time": (state.finished_ms - state.started_ms) / 1000}
        if state.outcome == "error" and state.error:
            body["error"] = state.error.get("detail")
            body["error_type"] = state.error.get("error_type")
    return JSONResponse(body, 200 if state.status == "COMPLETED" else 202)


async def result(request: Request) -> Response:
    gw, state = await _owned(request)
    outcome = await gw.broker.outcome(state.id) if state.status == "COMPLETED" else None
    if outcome is None:
        raise InvalidRequestError(f"request {state.id} is {state.status}, not COMPLETED yet")
    return result_response(state.id, outcome)


async def cancel(request: Request) -> Response:
    gw, state = await _owned(request)
    outcome = await gw.broker.cancel(state.id)
    if outcome == 1:
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)
    if outcome == 2:
        return error_response(
            409, "the request is already running and cannot be cancelled", "InvalidRequestError"
        )
    return JSONResponse(
        {
            "status": "ALREADY_COMPLETED",
            "detail": "request already completed",
            "error_type": "InvalidRequestError",
        },
        400,
    )
