"""Run routes: ``POST /{owner}/{app}[@ref][/{path}]`` answers with the endpoint's output once it
is done; on a generator endpoint, ``.../stream`` answers with its items as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from klieg.exceptions import NotFoundError
from klieg_platform.broker import CHUNK_END, NewRequest
from klieg_platform.disclosure import error_view, event_view
from klieg_platform.gateway import auth, bodies, sse
from klieg_platform.gateway.contract import answers, takes
from klieg_platform.gateway.intake import enqueue, intake, result_response
from klieg_platform.gateway.state import GatewayState
from klieg_platform.gateway.waiter import Waiter
from klieg_platform.registry import WORKFLOW_PREFIX


@answers(bodies.Output)
@takes(bodies.INPUT, "the endpoint's input")
async def run_sync(request: Request) -> Response:
    waiter: Waiter = request.app.state.waiter
    job = await intake(request, allow_stream=True, reply_to=waiter.channel)
    return await enqueue_and_answer(request, job.gw, job.new)


async def enqueue_and_answer(request: Request, gw: GatewayState, new: NewRequest) -> Response:
    """Queue ``new`` and answer with its items as SSE (a streamed request) or, once it is
    done, with its result or error. A caller that does not own the app sees the errors (and a
    workflow's node events) as ``klieg_platform.disclosure`` describes."""
    caller = auth.caller(request).id
    if new.stream:
        full = await gw.full_view(caller, new.owner, new.app)
        events = new.app.startswith(WORKFLOW_PREFIX)
        await enqueue(gw, new)
        return sse.response(
            chunks(gw, new.id, full=full, events=events), {"x-fal-request-id": new.id}
        )
    waiter: Waiter = request.app.state.waiter
    fut = waiter.expect(new.id)
    if new.reply_to != waiter.channel:
        new = replace(new, reply_to=waiter.channel)
    try:
        await enqueue(gw, new)
    except BaseException:
        waiter.forget(new.id)
        raise
    outcome = await waiter.wait(new.id, fut) or await gw.broker.queue.outcome(new.id)
    if outcome is None:
        raise NotFoundError(f"request {new.id} expired before its result was read")
    full = outcome.ok or await gw.full_view(caller, new.owner, new.app)
    return await result_response(gw, new.id, outcome, full=full)


def _error_event(error: bytes | dict[str, Any], full: bool) -> bytes:
    if full:
        return sse.event(error if isinstance(error, bytes) else json.dumps(error).encode(), "error")
    value = json.loads(error) if isinstance(error, bytes) else error
    return sse.event(json.dumps(error_view(value)).encode(), "error")


def _item(data: bytes, full: bool, events: bool) -> bytes:
    """One item as the caller sees it: a workflow's node event through ``event_view``."""
    if full or not events:
        return data
    event = json.loads(data)
    return json.dumps(event_view(event)).encode() if isinstance(event, dict) else data


async def chunks(
    gw: GatewayState, request_id: str, *, full: bool, events: bool
) -> AsyncIterator[bytes]:
    """The request's items as they arrive; an ``error`` event if it failed; then the end.
    Unless ``full``, errors are seen through ``disclosure.error_view``, and so are the errors
    in the items when they are a workflow's node ``events``.

    The worker closes the chunk stream when the request ends. A request that ended without
    reaching a worker (cancelled while queued, its worker lost for good) has no such end: once
    its record says COMPLETED, what is left of the stream is sent, then the record's error.
    """
    after = "0"
    completed = False
    while True:
        entries = await gw.broker.streams.read_chunks(
            request_id, after, None if completed else 2000
        )
        for entry_id, entry in entries:
            after = entry_id
            if CHUNK_END in entry:
                if entry[CHUNK_END]:
                    yield _error_event(entry[CHUNK_END], full)
                return
            yield sse.event(_item(entry[b"data"], full, events))
        if entries:
            continue
        state = await gw.broker.queue.get(request_id)
        if completed:
            if state is not None and state.error:
                yield _error_event(state.error, full)
            return
        completed = state is None or state.status == "COMPLETED"
