"""Run routes: ``POST /{owner}/{app}[@ref][/{path}]`` answers with the endpoint's output once it
is done; on a generator endpoint, ``.../stream`` answers with its items as server-sent events.

``RunRoutes`` takes these requests past the router: the router tries each of the routes before
them in turn (dozens of patterns for every sync call); a POST whose first path segment is no
literal segment of another route can only be a run route, so it goes straight to the run
route's app (``auth.Authenticate`` with its access mark, then ``run_sync``) with the same
exception handlers as the exception middleware's. Every other request takes the router.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from starlette._exception_handler import wrap_app_handling_exceptions
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

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
    job = await intake(request, allow_stream=True)
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
    try:
        await enqueue(gw, replace(new, reply_to=waiter.channel))
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


class RunRoutes:
    """ASGI middleware (inside ``ListenerSplit``, whose path it sees): a request only the run
    routes of ``routes`` can take goes to them directly; the rest go to ``app`` (the router).
    ``handlers``: the app's exception handlers (``Exception`` stays with the outer error
    middleware, as Starlette arranges it)."""

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], handlers: Mapping[Any, Any]
    ) -> None:
        self.app = app
        runs = [r for r in routes if isinstance(r, Route) and r.endpoint is run_sync]
        others = [r for r in routes if isinstance(r, Route) and r.endpoint is not run_sync]
        self.taken = frozenset(r.path.split("/")[1] for r in others if not r.path.startswith("/{"))
        """First path segments the other routes spell out: those requests take the router."""
        shadowed = any(r.path.startswith("/{") and "POST" in (r.methods or ()) for r in others)
        literal = any(not r.path.startswith("/{") for r in runs)
        self.runs = [] if shadowed or literal else [r for r in runs if "POST" in (r.methods or ())]
        """The run routes, in order; none when another route could take a POST by pattern."""
        by_class: dict[Any, Any] = {
            k: v for k, v in handlers.items() if k not in (500, Exception)
        }  # as ExceptionMiddleware has them
        self.handlers: tuple[dict[Any, Any], dict[int, Any]] = (by_class, {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.route_for(scope)
        if found is None:
            await self.app(scope, receive, send)
        else:
            await self._run(*found, scope, receive, send)

    def route_for(self, scope: Scope) -> tuple[Route, dict[str, str]] | None:
        """The run route a request goes to directly, with its path's parameters; None: it
        takes the router."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = get_route_path(scope)
        if path[1:].partition("/")[0] in self.taken:
            return None
        for route in self.runs:
            match = route.path_regex.match(path)
            if match is not None:
                return route, match.groupdict()
        return None

    async def _run(
        self, route: Route, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """What the router and the exception middleware do for a full match of ``route``."""
        convert = route.param_convertors
        scope["path_params"] = {
            **scope.get("path_params", {}),
            **{k: convert[k].convert(v) for k, v in params.items()},
        }
        scope["endpoint"] = route.endpoint
        scope["route"] = route
        scope.setdefault("router", scope["app"].router)
        scope["starlette.exception_handlers"] = self.handlers
        request = Request(scope, receive, send)
        await wrap_app_handling_exceptions(route.app, request)(scope, receive, send)
