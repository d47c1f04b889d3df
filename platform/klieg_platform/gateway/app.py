"""The gateway's Starlette app: routes, error handlers, and the services' lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klieg_platform.config import Settings
from klieg_platform.gateway import admin, files, queue, run, workflow_admin, workflow_run
from klieg_platform.gateway.errors import HANDLERS
from klieg_platform.gateway.listeners import ListenerSplit
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.gateway.waiter import Waiter
from klieg_platform.packager import Packager
from klieg_platform.services import open_broker, open_registry, open_store
from klieg_platform.sweeper import BlobSweeper
from klieg_platform.webhooks import WebhookSender


async def health(request: Request) -> Response:
    gw = gateway(request)
    await gw.broker.ping()
    return JSONResponse({"status": "ok"})


_WF_REQUEST = "/queue/workflows/{owner}/{name}/requests/{request_id}"

ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/keys", admin.create_key, methods=["POST"]),
    Route("/files/upload", files.upload, methods=["POST"]),
    Route("/files/{key:path}", files.download, methods=["GET"]),
    Route("/apps", admin.list_apps, methods=["GET"]),
    Route("/apps/{name}/revisions", admin.list_revisions, methods=["GET"]),
    Route("/apps/{name}/deploy", admin.deploy_app, methods=["POST"]),
    Route("/apps/{name}/aliases/{alias}", admin.set_alias, methods=["PUT"]),
    Route("/apps/{name}/rollback", admin.rollback, methods=["POST"]),
    Route("/apps/{name}/visibility", admin.set_visibility, methods=["PUT"]),
    Route("/apps/{name}/limits", admin.set_app_limits, methods=["PUT"]),
    Route("/tenants/{name}", admin.set_tenant, methods=["PUT"]),
    Route("/workflows", workflow_admin.list_workflows, methods=["GET"]),
    Route("/workflows/{name}", workflow_admin.get_workflow, methods=["GET"]),
    Route("/workflows/{name}", workflow_admin.put_workflow, methods=["PUT"]),
    Route("/workflows/{name}/aliases/{alias}", workflow_admin.set_workflow_alias, methods=["PUT"]),
    Route("/workflows/{name}/rollback", workflow_admin.rollback_workflow, methods=["POST"]),
    Route("/workflows/{name}/visibility", workflow_admin.set_workflow_visibility, methods=["PUT"]),
    Route("/workflows/{owner}/{name}", workflow_run.run_workflow, methods=["POST"]),
    Route("/workflows/{owner}/{name}/stream", workflow_run.run_workflow, methods=["POST"]),
    Route("/queue/workflows/{owner}/{name}", workflow_run.submit_workflow, methods=["POST"]),
    Route(f"{_WF_REQUEST}/status", workflow_run.status, methods=["GET"]),
    Route(f"{_WF_REQUEST}/status/stream", workflow_run.status_stream, methods=["GET"]),
    Route(f"{_WF_REQUEST}/cancel", workflow_run.cancel, methods=["PUT"]),
    Route(_WF_REQUEST, workflow_run.result, methods=["GET"]),
    Route("/requests/{request_id}/status", queue.status, methods=["GET"]),
    Route("/queue/{owner}/{app}/requests/{request_id}/status", queue.status, methods=["GET"]),
    Route(
        "/queue/{owner}/{app}/requests/{request_id}/status/stream",
        queue.status_stream,
        methods=["GET"],
    ),
    Route("/queue/{owner}/{app}/requests/{request_id}/cancel", queue.cancel, methods=["PUT"]),
    Route("/queue/{owner}/{app}/requests/{request_id}", queue.result, methods=["GET"]),
    Route("/queue/{owner}/{app}", queue.submit, methods=["POST"]),
    Route("/queue/{owner}/{app}/{path:path}", queue.submit, methods=["POST"]),
    Route("/{owner}/{app}", run.run_sync, methods=["POST"]),
    Route("/{owner}/{app}/{path:path}", run.run_sync, methods=["POST"]),
]


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        broker = open_broker(settings)
        registry = open_registry(settings)
        gw = GatewayState(settings, broker, registry, open_store(settings), Packager(settings))
        waiter = Waiter(broker, gw.forget_app)
        await waiter.start()
        webhooks = WebhookSender(broker, gw.store, settings)
        await webhooks.start()
        sweeper = BlobSweeper(broker, gw.store, settings)
        await sweeper.start()
        app.state.gateway = gw
        app.state.waiter = waiter
        try:
            yield
        finally:
            await sweeper.stop()
            await webhooks.stop()
            await waiter.stop()
            await broker.close()
            registry.close()

    return Starlette(
        routes=ROUTES,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
        middleware=[Middleware(ListenerSplit, queue_port=settings.queue_port)],
    )
