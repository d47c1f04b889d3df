"""A lean Redis connection for the request path: pipelined RESP over one socket, hiredis parsing.

The queue's hot scripts (enqueue, dispatch, complete, renew) run on every request, several times;
through redis-py's client each call costs about 100-150 µs of CPU in the caller (retry wrapper,
pool checkout, argument encoding), through this connection about 25-40 µs. ``Wire`` answers
callers in order, so concurrent callers share one connection with their commands pipelined: the
commands sent in one turn of the event loop go out in one write at its end (a completion and the
dispatch its freed slot asks for leave together, as do the enqueues of concurrent callers). It
never runs a blocking command (those stay on redis-py's pool). It connects on first use with
the address, password and database of the redis-py client it is made from, and again after the
connection drops: commands in flight then fail with ``redis.exceptions.ConnectionError``, as
redis-py's would. Error replies raise ``ResponseError`` (``BusyLoadingError`` while a restarted
Redis loads its data, as redis-py's); a script Redis does not know (``NOSCRIPT``, e.g. after a
restart) is loaded and run again. ``listen`` holds a subscription on a connection of its own,
its messages parsed the same way (redis-py's pub/sub costs the gateway tens of µs a message).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("klieg.broker")


def _encode(args: tuple[Any, ...]) -> bytes:
    """One RESP command; str, bytes, int and float arguments (a bool is refused: it would
    read as 0 or 1)."""
    out = [b"*%d\r\n" % len(args)]
    push = out.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg
        elif isinstance(arg, bool):
            raise TypeError("cannot send a bool to Redis")
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = bytes(arg)
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        push(b"$%d\r\n" % len(data))
        push(data)
        push(b"\r\n")
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.loop = asyncio.get_running_loop()
        self.outgoing: list[bytes] = []
        """Frames sent in this turn of the event loop, written together at its end."""
        self.on_message: Callable[[bytes, bytes], None] | None = None
        """Subscribed (``Wire.listen``): gets each message's channel and data."""
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if self.on_message is not None and type(reply) is list and reply[0] == b"message":
                try:
                    self.on_message(reply[1], reply[2])
                except Exception:
                    log.exception("handling a message on %r failed", reply[1])
                continue
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, frame: bytes) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise self.lost or RedisConnectionError("not connected to Redis")
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.waiting.append(fut)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(frame)
        return fut

    def _flush(self) -> None:
        """Write the frames of this turn in one system call: a write that wakes Redis costs
        about as much as the script it carries, and Redis answers a pipeline in one write."""
        frames, self.outgoing = self.outgoing, []
        if self.lost is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class Script:
    """A Lua script, known to Redis by its SHA1."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class Wire:
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._path: str | None = kwargs.get("path")
        self._host: str = kwargs.get("host", "127.0.0.1")
        self._port: int = int(kwargs.get("port", 6379))
        self._setup: list[tuple[Any, ...]] = []
        if kwargs.get("password"):
            user = kwargs.get("username")
            self._setup.append(
                ("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"])
            )
        if kwargs.get("db"):
            self._setup.append(("SELECT", int(kwargs["db"])))
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._connecting_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of(cls, client: aioredis.Redis) -> Wire | None:
        """A Wire to the server ``client`` talks to; None where it cannot speak for it (TLS,
        or a client class it does not know)."""
        pool = client.connection_pool
        plain = {"Connection", "UnixDomainSocketConnection"}
        if pool.connection_class.__name__ not in plain:
            return None
        return cls(dict(pool.connection_kwargs))

    def _usable(self) -> _Protocol | None:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return None
        return protocol if protocol.loop is asyncio.get_running_loop() else None

    async def _connected(self) -> _Protocol:
        """The open connection of this event loop (a connection made on another loop, e.g. a
        finished ``asyncio.run``, is dropped)."""
        protocol = self._usable()
        if protocol is not None:
            return protocol
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._connecting_loop is not loop:
            self._connecting, self._connecting_loop = asyncio.Lock(), loop
        async with self._connecting:
            if (protocol := self._usable()) is not None:
                return protocol
            self._protocol = await self._open()
            return self._protocol

    async def _open(self) -> _Protocol:
        """A new connection, authenticated and on the client's database."""
        loop = asyncio.get_running_loop()
        protocol: _Protocol
        try:
            if self._path:
                _, protocol = await loop.create_unix_connection(_Protocol, self._path)
            else:
                _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        try:
            for command in self._setup:
                _raise(await protocol.send(_encode(command)))
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
        return protocol

    async def listen(
        self,
        channels: Sequence[str],
        on_message: Callable[[bytes, bytes], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        """Subscribe a connection of its own to ``channels``; ``on_subscribed()`` once it is,
        then ``on_message(channel, data)`` for each message (one that raises is logged). Runs
        until the connection drops (``redis.exceptions.ConnectionError``) or it is cancelled
        (the connection is closed)."""
        protocol = await self._open()
        try:
            protocol.on_message = on_message
            confirmations = [protocol.send(_encode(("SUBSCRIBE", c))) for c in channels]
            for confirmation in confirmations:
                _raise(await confirmation)
            on_subscribed()
            await protocol.closed
            raise protocol.lost or RedisConnectionError("connection to Redis lost")
        finally:
            if protocol.transport is not None:
                protocol.transport.close()

    async def call(self, *args: Any) -> Any:
        """Send one command; its reply (an error reply raises ``ResponseError``)."""
        protocol = await self._connected()
        return _raise(await protocol.send(_encode(args)))

    async def run(self, script: Script, args: list[Any]) -> Any:
        """EVALSHA ``script`` with no keys and ``args``; loads it first if Redis lacks it."""
        protocol = await self._connected()
        reply = await protocol.send(_encode(("EVALSHA", script.sha, 0, *args)))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self.call("SCRIPT", "LOAD", script.source)
            reply = await protocol.send(_encode(("EVALSHA", script.sha, 0, *args)))
        return _raise(reply)

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def _raise(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        message = str(reply)
        if message.startswith("LOADING"):  # a restarted Redis replaying its append-only file
            raise BusyLoadingError(message)
        raise ResponseError(message)
    return reply


class HotScript:
    """A script of the request path: run over ``wire`` where there is one, else through
    redis-py (same replies either way: bytes, integers, lists)."""

    def __init__(self, client: aioredis.Redis, wire: Wire | None, source: str) -> None:
        self.script = Script(source)
        self.wire = wire
        self._fallback = client.register_script(source)

    async def __call__(self, *, args: list[Any]) -> Any:
        if self.wire is not None:
            return await self.wire.run(self.script, args)
        return await self._fallback(args=args)
