"""The run routes' way past the router takes exactly the requests the router gives them."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Match, Route

from klieg_platform.gateway import run
from klieg_platform.gateway.app import ROUTES
from klieg_platform.gateway.errors import HANDLERS

pytestmark = pytest.mark.timeout(30)

PATHS = [
    "/local/echo", "/local/echo/say", "/local/echo/a/b/stream", "/local/echo@v2",
    "/local/echo@rev-1/x", "/local", "/", "/local//echo", "/files/upload", "/files/a/b",
    "/keys", "/keys/k1", "/apps/echo/deploy", "/apps/echo/rollback", "/queue/local/echo",
    "/queue/local/echo/x", "/workflows/local/flow", "/workflows/local/flow/stream",
    "/requests/r1", "/storage/auth/token", "/health", "/metrics", "/console/x",
    "/local/echo/openapi.json", "/tenants/t", "/secrets/s",
]  # fmt: skip


def router_pick(method: str, path: str) -> tuple[Any, dict[str, Any]] | None:
    """The route the router sends a request to on a full match, and its path parameters."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in ROUTES:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child["path_params"]
    return None


@pytest.mark.parametrize("method", ["POST", "GET", "PUT"])
def test_a_request_goes_past_the_router_only_to_the_run_route_it_would_take(method: str) -> None:
    fast = run.RunRoutes(lambda *a: None, routes=ROUTES, handlers=HANDLERS)
    assert fast.runs, "the run routes take their requests directly"
    direct = 0
    for path in PATHS:
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        found = fast.route_for(scope)
        if found is None:
            continue
        direct += 1
        route, params = found
        assert isinstance(route, Route) and route.endpoint is run.run_sync
        assert router_pick(method, path) == (route, params), path
    assert direct == (6 if method == "POST" else 0)


def test_another_route_taking_posts_by_pattern_sends_every_request_to_the_router() -> None:
    async def other(request: Any) -> Any:
        raise AssertionError

    routes = [Route("/{owner}/{app}/hooks", other, methods=["POST"]), *ROUTES]
    fast = run.RunRoutes(lambda *a: None, routes=routes, handlers=HANDLERS)
    scope = {"type": "http", "method": "POST", "path": "/local/echo", "root_path": ""}
    assert fast.route_for(scope) is None
