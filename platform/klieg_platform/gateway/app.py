"""The gateway's Starlette app: routes, error handlers, and the services' lifespan.

Each route names what it needs from its caller (``PUBLIC``, ``BOOTSTRAP``, ``CALLER`` or
``MANAGE``; see ``auth.py``). ``RouteIndex`` spares each request the router's scan of every
route: it tries only the routes that can match the request's first path segment.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette._exception_handler import wrap_app_handling_exceptions
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from klieg_platform.broker import UNAVAILABLE
from klieg_platform.collector import Collector
from klieg_platform.config import Settings
from klieg_platform.gateway import (
    admin,
    auth,
    bodies,
    console,
    dev,
    files,
    fleet,
    history,
    lifecycle,
    metrics,
    openapi,
    queue,
    run,
    workflow_admin,
    workflow_run,
)
from klieg_platform.gateway.auth import ADMIN, BOOTSTRAP, CALLER, MANAGE, PUBLIC, route
from klieg_platform.gateway.contract import answers
from klieg_platform.gateway.errors import HANDLERS
from klieg_platform.gateway.listeners import ListenerSplit
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.gateway.waiter import Waiter
from klieg_platform.packager import Packager
from klieg_platform.services import open_broker, open_registry, open_store
from klieg_platform.sweeper import BlobSweeper
from klieg_platform.webhooks import WebhookSender


@answers(bodies.Health)
async def health(request: Request) -> Response:
    """200 while Redis answers (else 503, as every route); ``instance`` tells the process that
    started this gateway (``klieg up``) that the answer is its own gateway's."""
    gw = gateway(request)
    await gw.broker.ping()
    return JSONResponse({"status": "ok", "instance": gw.settings.instance})


@answers(bodies.Document)
async def openapi_doc(request: Request) -> Response:
    """This API, as OpenAPI 3.1."""
    return JSONResponse(_openapi())


@answers(bodies.Document)
async def app_openapi_doc(request: Request) -> Response:
    """One app's endpoints (the revision its alias, ``latest`` by default, names), as OpenAPI
    3.1: 404 where the caller may not call it."""
    owner, app_ref = request.path_params["owner"], request.path_params["app"]
    resolved = await gateway(request).resolve(auth.caller(request), owner, app_ref)
    doc = openapi.app_openapi(owner, app_ref, resolved.spec, resolved.revision.id)
    return JSONResponse(doc)


@functools.cache
def _openapi() -> dict[str, object]:
    return openapi.platform_openapi(ROUTES, version="1")


_REQUEST = "/queue/{owner}/{app}/requests/{request_id}"
_WF_REQUEST = "/queue/workflows/{owner}/{name}/requests/{request_id}"

ROUTES = [
    route("GET", "/health", health, PUBLIC),
    route("GET", "/openapi.json", openapi_doc, PUBLIC),
    route("GET", "/console", console.page, PUBLIC),
    route("GET", "/console/assets/{name}", console.asset, PUBLIC),
    route("GET", "/fleet/stream", console.fleet_stream, MANAGE),
    route("POST", "/keys", admin.create_key, BOOTSTRAP),
    route("GET", "/keys", admin.list_keys, ADMIN),
    route("DELETE", "/keys/{key_id}", admin.revoke_key, ADMIN),
    route("POST", "/files/upload", files.upload, CALLER),
    route("POST", "/storage/auth/token", files.upload_token, CALLER),
    route("GET", "/files/{key:path}", files.download, PUBLIC),
    route("GET", "/apps", admin.list_apps, MANAGE),
    route("GET", "/apps/{name}/revisions", admin.list_revisions, MANAGE),
    route("POST", "/apps/{name}/deploy", admin.deploy_app, MANAGE),
    route("PUT", "/apps/{name}/aliases/{alias}", admin.set_alias, MANAGE),
    route("POST", "/apps/{name}/rollback", admin.rollback, MANAGE),
    route("PUT", "/apps/{name}/visibility", admin.set_visibility, MANAGE),
    route("PUT", "/apps/{name}/limits", admin.set_app_limits, MANAGE),
    route("DELETE", "/apps/{name}", lifecycle.delete_app, MANAGE),
    route("POST", "/apps/{name}/dev", dev.start, MANAGE),
    route("PUT", "/apps/{name}/dev/{session}", dev.renew, MANAGE),
    route("DELETE", "/apps/{name}/dev/{session}", dev.end, MANAGE),
    route("POST", "/apps/{name}/prune", lifecycle.prune_revisions, MANAGE),
    route("GET", "/apps/{name}/scale", lifecycle.get_scale, MANAGE),
    route("PUT", "/apps/{name}/scale", lifecycle.set_scale, MANAGE),
    route("PUT", "/tenants/{name}", admin.set_tenant, ADMIN),
    route("GET", "/secrets", admin.list_secrets, MANAGE),
    route("GET", "/metrics", metrics.scrape, MANAGE),
    route("GET", "/workers", fleet.list_workers, ADMIN),
    route("GET", "/pools", fleet.list_pools, ADMIN),
    route("GET", "/runners", fleet.list_runners, MANAGE),
    route("PUT", "/secrets/{name}", admin.set_secret, MANAGE),
    route("DELETE", "/secrets/{name}", admin.delete_secret, MANAGE),
    route("GET", "/workflows", workflow_admin.list_workflows, MANAGE),
    route("GET", "/workflows/{name}", workflow_admin.get_workflow, MANAGE),
    route("PUT", "/workflows/{name}", workflow_admin.put_workflow, MANAGE),
    route("PUT", "/workflows/{name}/aliases/{alias}", workflow_admin.set_workflow_alias, MANAGE),
    route("POST", "/workflows/{name}/rollback", workflow_admin.rollback_workflow, MANAGE),
    route("PUT", "/workflows/{name}/visibility", workflow_admin.set_workflow_visibility, MANAGE),
    route("POST", "/workflows/{owner}/{name}", workflow_run.run_workflow, CALLER),
    route("POST", "/workflows/{owner}/{name}/stream", workflow_run.run_workflow, CALLER),
    route("POST", "/queue/workflows/{owner}/{name}", workflow_run.submit_workflow, CALLER),
    route("GET", f"{_WF_REQUEST}/status", workflow_run.status, CALLER),
    route("GET", f"{_WF_REQUEST}/status/stream", workflow_run.status_stream, CALLER),
    route("PUT", f"{_WF_REQUEST}/cancel", workflow_run.cancel, CALLER),
    route("GET", _WF_REQUEST, workflow_run.result, CALLER),
    route("GET", "/requests", history.list_requests, CALLER),
    route("GET", "/requests/{request_id}", history.one_request, CALLER),
    route("GET", "/requests/{request_id}/status", queue.status, CALLER),
    route("GET", f"{_REQUEST}/status", queue.status, CALLER),
    route("GET", f"{_REQUEST}/status/stream", queue.status_stream, CALLER),
    route("PUT", f"{_REQUEST}/cancel", queue.cancel, CALLER),
    route("GET", _REQUEST, queue.result, CALLER),
    route("POST", "/queue/{owner}/{app}", queue.submit, CALLER),
    route("POST", "/queue/{owner}/{app}/{path:path}", queue.submit, CALLER),
    route("GET", "/{owner}/{app}/openapi.json", app_openapi_doc, CALLER),  # after /files/...
    route("POST", "/{owner}/{app}", run.run_sync, CALLER),
    route("POST", "/{owner}/{app}/{path:path}", run.run_sync, CALLER),
]


class RouteIndex:
    """ASGI middleware in front of the router (inside ``ListenerSplit``, whose path it sees).

    The router tries every route in turn: dozens of patterns for a sync run, whose routes come
    last. A route whose path starts with a literal segment matches only paths starting with
    it, so for each first segment this keeps the routes that can match (that segment's and
    those starting with a parameter), in the routes' order; the first of them to match fully
    is the router's pick, and the request goes to it as the router and the exception
    middleware would send it (the same scope keys, the app's exception handlers). A request
    none of them matches fully (404, 405, a redirect) takes the router, as does every request
    when a route is no plain ``Route``."""

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], handlers: Mapping[Any, Any]
    ) -> None:
        self.app = app
        plain = [r for r in routes if type(r) is Route]
        led = [r for r in plain if r.path.startswith("/{")]
        first = {r.path.split("/")[1] for r in plain if r not in led}
        self.by_segment: dict[str, list[Route]] = {
            seg: [r for r in plain if r in led or r.path.split("/")[1] == seg] for seg in first
        }
        self.led: list[Route] = led
        """The routes a path whose first segment no route spells out can match."""
        self.indexed = len(plain) == len(routes)
        by_class = {k: v for k, v in handlers.items() if k not in (500, Exception)}
        self.handlers: tuple[dict[Any, Any], dict[int, Any]] = (by_class, {})
        """As the exception middleware has them (``Exception`` stays with the outer error
        middleware, as Starlette arranges it)."""

    def candidates(self, scope: Scope) -> list[Route] | None:
        """The routes a request can match, in order; None: it takes the router."""
        if not self.indexed or scope["type"] != "http":
            return None
        segment = get_route_path(scope)[1:].partition("/")[0]
        return self.by_segment.get(segment, self.led)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for candidate in self.candidates(scope) or ():
            match, child = candidate.matches(scope)
            if match is Match.FULL:
                scope["route"] = candidate
                scope.update(child)
                scope.setdefault("router", scope["app"].router)
                scope["starlette.exception_handlers"] = self.handlers
                request = Request(scope, receive, send)
                await wrap_app_handling_exceptions(candidate.handle, request)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        broker = open_broker(settings)
        registry = open_registry(settings)
        gw = GatewayState(settings, broker, registry, open_store(settings), Packager(settings))
        with contextlib.suppress(*UNAVAILABLE):  # Redis not up yet: the next start tells it
            await broker.stats.publish_slos(broker.queue.tiers.values())
        waiter = Waiter(broker, gw.forget_app, gw.forget_key, gw.forget_keys)
        await waiter.start()
        webhooks = WebhookSender(broker, gw.store, settings, full_view=gw.full_view)
        await webhooks.start()
        sweeper = BlobSweeper(broker, gw.store, settings)
        await sweeper.start()
        collector = Collector(broker, registry, gw.store, gw.packager)
        await collector.start()
        sampler = fleet.FleetSampler(broker, settings.fleet_sample_s)
        await sampler.start()
        app.state.gateway = gw
        app.state.waiter = waiter
        try:
            yield
        finally:
            await sampler.stop()
            await collector.stop()
            await sweeper.stop()
            await webhooks.stop()
            await waiter.stop()
            await broker.close()
            registry.close()

    return Starlette(
        routes=ROUTES,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
        middleware=[
            Middleware(ListenerSplit, queue_port=settings.queue_port),
            Middleware(RouteIndex, routes=ROUTES, handlers=HANDLERS),
        ],
    )
