"""Workflow run routes: workflows are called like apps (see workflows/executor.py).

  POST /workflows/{owner}/{name}[@ref]               run; answers with the workflow's output
  POST /workflows/{owner}/{name}[@ref]/stream        run; node events as server-sent events
  POST /queue/workflows/{owner}/{name}[@ref]         submit; {request_id, status_url, ...}
  GET  /queue/workflows/{owner}/{name}/requests/{id}[/status[/stream]]   result, status
  PUT  /queue/workflows/{owner}/{name}/requests/{id}/cancel              cancel (its nodes too)

The input is checked against the workflow's input schema (422 naming the field) before anything
is queued. A workflow request is a request record in the ``workflow`` pool with the caller's
tenant, tier, deadline (``X-Fal-Request-Timeout``) and webhook (``?fal_webhook=``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import NotFoundError, ValidationError
from klieg.workflow import validate_input
from klieg_platform import keys
from klieg_platform.broker import NewRequest
from klieg_platform.gateway import queue, sse
from klieg_platform.gateway.intake import (
    deadline_ms,
    enqueue,
    gateway,
    read_body,
    result_response,
    webhook_url,
)
from klieg_platform.gateway.run import chunks
from klieg_platform.gateway.waiter import Waiter
from klieg_platform.registry import WORKFLOW_PREFIX
from klieg_platform.storage import payload_key
from klieg_platform.workflows.executor import FUNCTION
from klieg_platform.workflows.store import stored_workflow

WORKFLOW_TIMEOUT_S = 3600.0
"""A workflow's own limit (its nodes have their endpoints' limits); a deadline can shorten it."""

Handler = Callable[[Request], Awaitable[Response]]


async def _intake(request: Request, *, stream: bool) -> NewRequest:
    gw = gateway(request)
    tenant = await gw.tenant(request)
    owner = request.path_params["owner"]
    name, _, ref = request.path_params["name"].partition("@")
    found = await asyncio.to_thread(stored_workflow, gw.registry, owner, name, ref or "latest")
    if found is None or not gw.registry.can_call(found[0], tenant):
        raise NotFoundError(f"workflow {owner}/{request.path_params['name']} not found")
    app, rev, doc = found
    body = await read_body(request, gw.settings.max_body_bytes)
    try:
        value = json.loads(body) if body.strip() else {}
    except ValueError as exc:  # read_body checked it; kept for the type checker
        raise ValidationError(str(exc)) from None
    validate_input(doc, value)
    rid = uuid.uuid4().hex
    ref_key = ""
    if len(body) > gw.settings.inline_payload_bytes:
        ref_key = payload_key(rid)
        await asyncio.to_thread(gw.store.put, ref_key, body)
        body = b""
    return NewRequest(
        id=rid,
        owner=owner,
        tenant=tenant.id,
        app=app.name,
        revision=rev.id,
        function=FUNCTION,
        endpoint="/",
        pool=keys.WORKFLOW_POOL,
        payload=body,
        payload_ref=ref_key,
        timeout_s=WORKFLOW_TIMEOUT_S,
        deadline_ms=deadline_ms(request),
        webhook=webhook_url(request),
        stream=stream,
        tier=gw.tier_of(tenant),
    )


async def run_workflow(request: Request) -> Response:
    gw = gateway(request)
    stream = request.url.path.endswith("/stream")
    new = await _intake(request, stream=stream)
    if stream:
        await enqueue(gw, new)
        return sse.response(chunks(gw, new.id), {"x-fal-request-id": new.id})
    waiter: Waiter = request.app.state.waiter
    fut = waiter.expect(new.id)
    await enqueue(gw, new)
    await waiter.wait(new.id, fut)
    outcome = await gw.broker.outcome(new.id)
    if outcome is None:
        raise NotFoundError(f"request {new.id} expired before its result was read")
    return await result_response(gw, new.id, outcome)


async def submit_workflow(request: Request) -> Response:
    gw = gateway(request)
    new = await _intake(request, stream=False)
    await enqueue(gw, new)
    state = await gw.broker.get(new.id)
    body = {
        "request_id": new.id,
        "status": "IN_QUEUE",
        "queue_position": state.queue_position if state else None,
        **queue.request_urls(request, new.owner, new.app, new.id),
    }
    return JSONResponse(body, 200)


def _as_app(handler: Handler) -> Handler:
    """A queue route of apps, serving ``/queue/workflows/{owner}/{name}/...``: the workflow is
    the app ``workflows/{name}`` of its owner."""

    async def wrapped(request: Request) -> Response:
        params = dict(request.scope["path_params"])
        params["app"] = WORKFLOW_PREFIX + params.pop("name")
        request.scope["path_params"] = params
        return await handler(request)

    return wrapped


status = _as_app(queue.status)
status_stream = _as_app(queue.status_stream)
result = _as_app(queue.result)
cancel = _as_app(queue.cancel)
