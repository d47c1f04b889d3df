"""The gateway's Starlette app: routes, error handlers, and the services' lifespan.

Each route names what it needs from its caller (``PUBLIC``, ``BOOTSTRAP``, ``CALLER`` or
``MANAGE``; see ``auth.py``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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
        sampler = fleet.FleetSampler(broker)
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
            Middleware(run.RunRoutes, routes=ROUTES, handlers=HANDLERS),
        ],
    )
