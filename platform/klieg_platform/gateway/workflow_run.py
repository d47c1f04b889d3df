"""Workflow run routes: workflows are called like apps (see workflows/executor.py).

  POST /workflows/{owner}/{name}[@ref]               run; answers with the workflow's output
  POST /workflows/{owner}/{name}[@ref]/stream        run; node events as server-sent events
  POST /queue/workflows/{owner}/{name}[@ref]         submit; {request_id, status_url, ...}
  GET  /queue/workflows/{owner}/{name}/requests/{id}[/status[/stream]]   result, status
  PUT  /queue/workflows/{owner}/{name}/requests/{id}/cancel              cancel (its nodes too)

The input is checked against the workflow's input schema (422 naming the field; media URLs of
allowed schemes only) before anything is queued. A workflow request is a request record in the
``workflow`` pool with the caller's tenant, tier, deadline (``X-Fal-Request-Timeout``) and
webhook (``?fal_webhook=``).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from klieg.exceptions import NotFoundError
from klieg.workflow import WorkflowDoc, validate_input
from klieg_platform import keys
from klieg_platform.broker import NewRequest
from klieg_platform.gateway import auth, bodies, queue
from klieg_platform.gateway.contract import answers, takes
from klieg_platform.gateway.intake import deadline_ms, read_input, webhook_url
from klieg_platform.gateway.run import enqueue_and_answer
from klieg_platform.gateway.state import gateway
from klieg_platform.registry import WORKFLOW_PREFIX, AppRecord, Revision
from klieg_platform.storage import offload_payload
from klieg_platform.workflows.executor import FUNCTION
from klieg_platform.workflows.store import stored_workflow

WORKFLOW_TIMEOUT_S = 3600.0
"""A workflow's own limit (its nodes have their endpoints' limits); a deadline can shorten it."""

Handler = Callable[[Request], Awaitable[Response]]


async def _intake(request: Request, *, stream: bool) -> NewRequest:
    gw = gateway(request)
    tenant = auth.caller(request)
    owner = request.path_params["owner"]
    name, _, ref = request.path_params["name"].partition("@")

    def lookup() -> tuple[AppRecord, Revision, WorkflowDoc] | None:
        found = stored_workflow(gw.registry, owner, name, ref or "latest")
        return found if found is not None and gw.registry.can_call(found[0], tenant) else None

    found = await asyncio.to_thread(lookup)
    if found is None:
        raise NotFoundError(f"workflow {owner}/{request.path_params['name']} not found")
    app, rev, doc = found
    limit = gw.settings.max_body_bytes
    body, value = await read_input(request, limit)
    validate_input(doc, value, max_data_url=limit)
    rid = uuid.uuid4().hex
    body, ref_key = await offload_payload(gw.store, rid, body, gw.settings.inline_payload_bytes)
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
        webhook=await webhook_url(request, gw),
        stream=stream,
        tier=gw.tier_of(tenant),
    )


@answers(bodies.Output)
@takes(bodies.INPUT, "the workflow's input")
async def run_workflow(request: Request) -> Response:
    """Run the workflow; its output (``/stream``: its node events as server-sent events)."""
    new = await _intake(request, stream=request.url.path.endswith("/stream"))
    return await enqueue_and_answer(request, gateway(request), new)


@answers(bodies.Submitted)
@takes(bodies.INPUT, "the workflow's input")
async def submit_workflow(request: Request) -> Response:
    """Queue a run of the workflow; its request id and URLs."""
    new = await _intake(request, stream=False)
    return await queue.enqueue_and_accept(request, gateway(request), new)


def _as_app(handler: Handler) -> Handler:
    """A queue route of apps, serving ``/queue/workflows/{owner}/{name}/...``: the workflow is
    the app ``workflows/{name}`` of its owner."""

    @functools.wraps(handler)
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
