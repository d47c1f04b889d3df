"""The gateway's listeners: one app served on the run port and, optionally, the queue port.

fal's clients use one path for two things: ``POST /{owner}/{app}`` runs on the *run host* and
submits on the *queue host*; status, result and cancel live at
``/{owner}/{app}/requests/{id}[/status|/cancel]`` on the queue host. One uvicorn server listens on
both ports (``sockets``) with one lifespan and one ``GatewayState``; ``ListenerSplit`` tells the
listeners apart by the local port of the connection (``scope["server"]``):

- on the queue port, a path that is not ``/health`` and not already under ``/queue/`` gets the
  ``/queue`` prefix, so every route of the run port's ``/queue/...`` family answers there under
  fal's names (and ``/queue/...`` paths keep working, which is what our own ``status_url``,
  ``response_url`` and ``cancel_url`` use);
- on every port, a trailing slash is dropped (``/local/echo/`` is ``/local/echo``), since fal's
  clients add one for ``path="/"`` and the routes are written without.

Paths on the run port are otherwise untouched.
"""

from __future__ import annotations

import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from klieg_platform.config import Settings

QUEUE_PREFIX = "/queue"
UNPREFIXED = frozenset({"/health"})


class ListenerSplit:
    """ASGI middleware: rewrite HTTP paths by listener (see the module docstring)."""

    def __init__(self, app: ASGIApp, queue_port: int | None = None) -> None:
        self.app = app
        self.queue_port = queue_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = self._rewrite(scope)
        await self.app(scope, receive, send)

    def on_queue_listener(self, scope: Scope) -> bool:
        server = scope.get("server")
        return self.queue_port is not None and server is not None and server[1] == self.queue_port

    def _rewrite(self, scope: Scope) -> Scope:
        path: str = scope["path"]
        new = path.rstrip("/") or "/"
        prefix = (
            self.on_queue_listener(scope)
            and new not in UNPREFIXED
            and new != QUEUE_PREFIX
            and not new.startswith(QUEUE_PREFIX + "/")
        )
        if prefix:
            new = QUEUE_PREFIX + ("" if new == "/" else new)
        if new == path:
            return scope
        scope = dict(scope, path=new)
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            raw = raw.rstrip(b"/") or b"/"
            if prefix:
                raw = QUEUE_PREFIX.encode() + (b"" if raw == b"/" else raw)
            scope["raw_path"] = raw
        return scope


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"gateway cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


def sockets(settings: Settings) -> list[socket.socket]:
    """The run listener, then the queue listener when ``settings.queue_port`` is set."""
    ports = [settings.port]
    if settings.queue_port is not None:
        if settings.queue_port == settings.port:
            raise SystemExit(f"the queue port must differ from the run port ({settings.port})")
        ports.append(settings.queue_port)
    bound: list[socket.socket] = []
    try:
        for port in ports:
            bound.append(bind(settings.host, port))
    except SystemExit:
        for sock in bound:
            sock.close()
        raise
    return bound
