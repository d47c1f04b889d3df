"""Log and event streams beside a request record, and the pub/sub channels.

A request's log lines are a list (``keys.logs``), a streaming request's items a Redis stream
(``keys.chunks``) closed by one ``CHUNK_END`` entry; both expire with the record. Channels:
``keys.DONE_CHANNEL`` (completions, published by the scripts), ``keys.CANCEL_CHANNEL`` and
``keys.ALIAS_CHANNEL``, each named for the client's database (``keys.channel``: ``publish`` and
``listen`` take and give the plain names); ``listen`` renews a dropped subscription by itself,
and holds it on a ``Wire`` connection (hiredis-parsed) where one speaks for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker.outage import UNAVAILABLE, Outage
from klieg_platform.broker.wire import Wire

log = logging.getLogger("klieg.broker")

CHUNK_END = b"end"
"""Field name of the last entry of a chunk stream (its value: empty, or an error JSON)."""


def _s(value: bytes) -> str:
    return value.decode()


def db_of(redis: aioredis.Redis) -> int:
    """The database number ``redis`` is connected to (0 unless its URL names another)."""
    return int(redis.connection_pool.connection_kwargs.get("db") or 0)


class Streams:
    def __init__(self, redis: aioredis.Redis, ttl_s: int, wire: Wire | None = None) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.db = db_of(redis)
        self.wire = wire
        """The request path's connection (``Broker.wire``): log appends go over it."""

    def channel(self, name: str) -> str:
        """``name``'s channel on this client's database (``keys.channel``)."""
        return keys.channel(name, self.db)

    async def append_logs(self, request_id: str, lines: Sequence[dict[str, Any]]) -> None:
        """Append ``lines`` to the request's log, which expires with its record. Over the
        ``wire`` (where there is one) the two commands leave in one write, pipelined, not in a
        transaction: a log left without its expiry gets it when the request completes."""
        key, encoded = keys.logs(request_id), [json.dumps(line) for line in lines]
        if self.wire is not None:
            pushed = self.wire.call("RPUSH", key, *encoded)
            await asyncio.gather(pushed, self.wire.call("EXPIRE", key, self.ttl_s))
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *encoded)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def logs(self, request_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Log lines from index ``start`` on."""
        raw: list[Any] = await self.redis.lrange(keys.logs(request_id), start, -1)
        return [json.loads(line) for line in raw]

    async def add_chunk(self, request_id: str, data: bytes) -> None:
        """Append one item of a streaming endpoint's output."""
        await self._xadd(request_id, {b"data": data})

    async def end_chunks(self, request_id: str, error: dict[str, Any] | None = None) -> None:
        """Close a chunk stream (with the error that ended it, if any)."""
        await self._xadd(request_id, {CHUNK_END: json.dumps(error).encode() if error else b""})

    async def _xadd(self, request_id: str, entry: dict[Any, Any]) -> None:
        key = keys.chunks(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, entry)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def read_chunks(
        self, request_id: str, after: str, block_ms: int | None
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Chunk entries after entry id ``after`` ("0" for all), waiting up to ``block_ms``
        (None: return at once)."""
        reply: Any = await self.redis.xread({keys.chunks(request_id): after}, block=block_ms)
        if not reply:
            return []
        return [(_s(entry_id), entry) for entry_id, entry in reply[0][1]]

    async def publish(self, channel: str, message: str) -> None:
        await self.redis.publish(self.channel(channel), message)

    async def listen(
        self,
        channels: Sequence[str],
        on_message: Callable[[str, bytes], None],
        ready: asyncio.Event | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Call ``on_message(channel, data)`` for every message on ``channels`` until cancelled;
        a dropped subscription is renewed. ``ready`` is set once subscribed; ``on_subscribed``
        is called each time it is (again: messages sent meanwhile were missed)."""
        outage = Outage(f"subscription to {', '.join(channels)}")
        wire = Wire.of(self.redis)
        named = {self.channel(c): c for c in channels}
        plain = {n.encode(): c for n, c in named.items()}

        def subscribed() -> None:
            outage.back()
            if on_subscribed is not None:
                on_subscribed()
            if ready is not None:
                ready.set()

        def deliver(channel: bytes, data: bytes) -> None:
            on_message(plain.get(channel) or channel.decode(), data)

        while True:
            try:
                if wire is not None:
                    await wire.listen(list(named), deliver, subscribed)
                else:
                    await self._listen(list(named), deliver, subscribed)
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                outage.lost(exc)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("subscription to %s failed; subscribing again", list(channels))
                await asyncio.sleep(0.5)

    async def _listen(
        self,
        channels: Sequence[str],
        deliver: Callable[[bytes, bytes], None],
        subscribed: Callable[[], None],
    ) -> None:
        """``listen`` through redis-py's pub/sub (where no ``Wire`` speaks for the client)."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(*channels)
            subscribed()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    deliver(message["channel"], message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
