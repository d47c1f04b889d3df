"""Run routes: ``POST /{owner}/{app}[@ref][/{path}]`` answers with the endpoint's output once it
is done; on a generator endpoint, ``.../stream`` answers with its items as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response

from klieg.exceptions import NotFoundError
from klieg_platform.broker import CHUNK_END, NewRequest
from klieg_platform.gateway import sse
from klieg_platform.gateway.intake import enqueue, intake, result_response
from klieg_platform.gateway.state import GatewayState
from klieg_platform.gateway.waiter import Waiter


async def run_sync(request: Request) -> Response:
    job = await intake(request, allow_stream=True)
    return await enqueue_and_answer(request, job.gw, job.new)


async def enqueue_and_answer(request: Request, gw: GatewayState, new: NewRequest) -> Response:
    """Queue ``new`` and answer with its items as SSE (a streamed request) or, once it is
    done, with its result or error."""
    if new.stream:
        await enqueue(gw, new)
        return sse.response(chunks(gw, new.id), {"x-fal-request-id": new.id})
    waiter: Waiter = request.app.state.waiter
    fut = waiter.expect(new.id)
    try:
        await enqueue(gw, replace(new, reply_to=waiter.channel))
    except BaseException:
        waiter.forget(new.id)
        raise
    outcome = await waiter.wait(new.id, fut) or await gw.broker.queue.outcome(new.id)
    if outcome is None:
        raise NotFoundError(f"request {new.id} expired before its result was read")
    return await result_response(gw, new.id, outcome)


async def chunks(gw: GatewayState, request_id: str) -> AsyncIterator[bytes]:
    """The request's items as they arrive; an ``error`` event if it failed; then the end.

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
                    yield sse.event(entry[CHUNK_END], "error")
                return
            yield sse.event(entry[b"data"])
        if entries:
            continue
        state = await gw.broker.queue.get(request_id)
        if completed:
            if state is not None and state.error:
                yield sse.event(json.dumps(state.error).encode(), "error")
            return
        completed = state is None or state.status == "COMPLETED"
