"""Listener split: paths rewritten by local port; one TLS uvicorn server on two sockets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from klieg_platform import tls
from klieg_platform.config import Settings
from klieg_platform.gateway.listeners import ListenerSplit, sockets
from tests.e2e.platform import free_ports

pytestmark = pytest.mark.timeout(30)

RUN, QUEUE = 8000, 8001


def rewritten(path: str, port: int, raw: bytes | None = None) -> tuple[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    scope: dict[str, Any] = {"type": "http", "path": path, "server": ("127.0.0.1", port)}
    if raw is not None:
        scope["raw_path"] = raw
    asyncio.run(ListenerSplit(app, queue_port=QUEUE)(scope, None, None))  # type: ignore[arg-type]
    return seen["path"], seen.get("raw_path")


@pytest.mark.parametrize(
    ("path", "port", "expected"),
    [
        ("/local/echo", RUN, "/local/echo"),
        ("/local/echo/", RUN, "/local/echo"),
        ("/queue/local/echo", RUN, "/queue/local/echo"),
        ("/health", RUN, "/health"),
        ("/", RUN, "/"),
        ("/local/echo", QUEUE, "/queue/local/echo"),
        ("/local/echo/upper/", QUEUE, "/queue/local/echo/upper"),
        ("/local/echo/requests/abc/status", QUEUE, "/queue/local/echo/requests/abc/status"),
        ("/queue/local/echo/requests/abc", QUEUE, "/queue/local/echo/requests/abc"),
        ("/queue", QUEUE, "/queue"),
        ("/health", QUEUE, "/health"),
        ("/health/", QUEUE, "/health"),
        ("/", QUEUE, "/queue"),
    ],
)
def test_paths_by_listener(path: str, port: int, expected: str) -> None:
    assert rewritten(path, port)[0] == expected


def test_raw_path_follows_and_keeps_escapes() -> None:
    path, raw = rewritten("/local/a b/", QUEUE, raw=b"/local/a%20b/")
    assert (path, raw) == ("/queue/local/a b", b"/queue/local/a%20b")


def test_without_queue_port_nothing_is_prefixed() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    scope = {"type": "http", "path": "/local/echo", "server": ("127.0.0.1", QUEUE)}
    asyncio.run(ListenerSplit(app)(scope, None, None))  # type: ignore[arg-type]
    assert seen["path"] == "/local/echo"


def test_queue_port_must_differ() -> None:
    with pytest.raises(SystemExit):
        sockets(Settings(port=RUN, queue_port=RUN))


async def _which(request: Request) -> JSONResponse:
    return JSONResponse({"route": request.scope["route"].name, "path": request.url.path})


def _demo_app(queue_port: int, started: list[int]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(1)
        yield

    return Starlette(
        routes=[
            Route("/health", _which, methods=["GET"], name="health"),
            Route("/queue/{owner}/{app}", _which, methods=["POST"], name="submit"),
            Route("/queue/{owner}/{app}/requests/{id}/status", _which, name="status"),
            Route("/{owner}/{app}", _which, methods=["POST"], name="run"),
        ],
        middleware=[Middleware(ListenerSplit, queue_port=queue_port)],
        lifespan=lifespan,
    )


@pytest.fixture()
def two_listeners(tmp_path: Path) -> Iterator[tuple[str, str, tls.TlsFiles, list[int]]]:
    made = tls.ensure(tmp_path)
    port, queue_port = free_ports(2)
    settings = Settings(home=tmp_path, port=port, queue_port=queue_port)
    assert settings.queue_port is not None
    started: list[int] = []
    config = uvicorn.Config(
        _demo_app(settings.queue_port, started),
        loop="asyncio",
        log_level="warning",
        ssl_certfile=str(made.cert),
        ssl_keyfile=str(made.key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets(settings)})
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.02)
        assert server.started
        yield (
            f"https://127.0.0.1:{settings.port}",
            f"https://localhost:{settings.queue_port}",
            made,
            started,
        )
    finally:
        server.should_exit = True
        thread.join(10)


def test_one_tls_server_serves_both_listeners(
    two_listeners: tuple[str, str, tls.TlsFiles, list[int]],
) -> None:
    run_url, queue_url, made, started = two_listeners
    with httpx.Client(verify=ssl.create_default_context(cafile=made.bundle)) as http:
        assert http.post(f"{run_url}/local/echo").json() == {"route": "run", "path": "/local/echo"}
        assert http.post(f"{queue_url}/local/echo/").json()["route"] == "submit"
        status = http.get(f"{queue_url}/local/echo/requests/r1/status")
        assert status.json() == {"route": "status", "path": "/queue/local/echo/requests/r1/status"}
        assert http.post(f"{run_url}/queue/local/echo").json()["route"] == "submit"
        assert http.get(f"{run_url}/health").json()["route"] == "health"
        assert http.get(f"{queue_url}/health").json()["route"] == "health"
    assert started == [1]
    with httpx.Client(verify=tls.trust_context(made.cert)) as http:
        assert http.get(f"{queue_url}/health").status_code == 200
    public_roots_only = ssl.create_default_context(cafile=certifi.where())
    with httpx.Client(verify=public_roots_only) as http, pytest.raises(httpx.ConnectError):
        http.get(f"{run_url}/health")
