"""The route index sends a request to the route the router would pick, trying fewer routes."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Match, Mount, Route

from klieg_platform.gateway.app import ROUTES, RouteIndex
from klieg_platform.gateway.errors import HANDLERS

pytestmark = pytest.mark.timeout(30)

PATHS = [
    "/local/echo", "/local/echo/say", "/local/echo/a/b/stream", "/local/echo@v2",
    "/local/echo@rev-1/x", "/local", "/", "/local//echo", "/files/upload", "/files/a/b",
    "/keys", "/keys/k1", "/apps", "/apps/echo/deploy", "/apps/echo/rollback",
    "/apps/echo/aliases/prod", "/apps/echo/scale", "/queue/local/echo", "/queue/local/echo/x",
    "/queue/local/echo/requests/r1", "/queue/local/echo/requests/r1/status",
    "/queue/local/echo/requests/r1/status/stream", "/queue/local/echo/requests/r1/cancel",
    "/queue/workflows/local/flow/requests/r1/status", "/workflows/local/flow",
    "/workflows/local/flow/stream", "/workflows/flow", "/requests", "/requests/r1",
    "/requests/r1/status", "/storage/auth/token", "/health", "/metrics", "/console",
    "/console/assets/app.js", "/local/echo/openapi.json", "/openapi.json", "/tenants/t",
    "/secrets/s", "/workers", "/fleet/stream", "/queue", "/health/x",
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD"]


def router_pick(scope: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The route the router sends a request to on a full match, and its path parameters."""
    for route in ROUTES:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child["path_params"]
    return None


def index_pick(index: RouteIndex, scope: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The route ``RouteIndex`` sends it to (None: it leaves it to the router)."""
    for route in index.candidates(scope) or ():
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child["path_params"]
    return None


def test_every_request_goes_to_the_route_the_router_picks() -> None:
    index = RouteIndex(lambda *a: None, routes=ROUTES, handlers=HANDLERS)
    tried = []
    for method in METHODS:
        for path in PATHS:
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            assert index_pick(index, scope) == router_pick(scope), (method, path)
            tried.append(len(index.candidates(scope) or ROUTES))
    assert max(tried) < len(ROUTES) / 3, "each request tries a few routes, not all"
    run = {"type": "http", "method": "POST", "path": "/local/echo", "root_path": ""}
    assert len(index.candidates(run) or ROUTES) <= 3


def test_routes_of_another_kind_send_every_request_to_the_router() -> None:
    routes = [Mount("/static", app=lambda *a: None), *ROUTES]
    index = RouteIndex(lambda *a: None, routes=routes, handlers=HANDLERS)
    scope = {"type": "http", "method": "POST", "path": "/local/echo", "root_path": ""}
    assert index.candidates(scope) is None
    assert isinstance(ROUTES[0], Route)
