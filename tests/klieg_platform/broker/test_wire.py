"""The request path's lean Redis connection, against real servers (embedded and the machine's)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from klieg_platform.broker import UNAVAILABLE
from klieg_platform.broker.wire import HotScript, Script, Wire

pytestmark = pytest.mark.timeout(30)


def run(url: str, body: object, *, on_uvloop: bool = False) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        wire = Wire.of(client)
        assert wire is not None
        try:
            await body(client, wire)  # type: ignore[operator]
        finally:
            wire.close()
            await client.aclose()

    if on_uvloop:
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_concurrent_calls_are_pipelined_and_answered_in_order(redis_url: str) -> None:
    async def body(client: aioredis.Redis, wire: Wire) -> None:
        await client.delete("n")
        replies = await asyncio.gather(*(wire.call("INCR", "n") for _ in range(300)))
        assert replies == list(range(1, 301))
        assert await client.get("n") == b"300"  # the same database as the client's
        await wire.call("SET", "k", b"\x00bytes\r\n")
        assert await wire.call("GET", "k") == b"\x00bytes\r\n"
        assert await wire.call("GET", "missing") is None

    run(redis_url, body)
    run(redis_url, body, on_uvloop=True)  # as the gateway and the worker run it


def test_error_replies_raise_and_leave_the_connection_usable(redis_url: str) -> None:
    async def body(client: aioredis.Redis, wire: Wire) -> None:
        await wire.call("SET", "s", "text")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await wire.call("LPUSH", "s", "x")
        assert await wire.call("PING") == b"PONG"
        with pytest.raises(TypeError):
            await wire.call("SET", "b", True)

    run(redis_url, body)


def test_a_script_unknown_to_redis_is_loaded_and_run(redis_url: str) -> None:
    async def body(client: aioredis.Redis, wire: Wire) -> None:
        script = Script("return {ARGV[1], tonumber(ARGV[2]) + 1}")
        await client.script_flush()
        assert await wire.run(script, ["a", 41]) == [b"a", 42]
        assert await wire.run(script, ["b", 1]) == [b"b", 2]  # now by SHA alone
        hot = HotScript(client, wire, script.source)
        fallback = HotScript(client, None, script.source)
        assert await hot(args=["c", 2]) == await fallback(args=["c", 2]) == [b"c", 3]
        with pytest.raises(ResponseError):
            await wire.run(Script("return redis.call('NOSUCHCOMMAND')"), [])

    run(redis_url, body)


def test_a_dropped_connection_fails_its_calls_and_the_next_call_reconnects(redis_url: str) -> None:
    async def body(client: aioredis.Redis, wire: Wire) -> None:
        wire_id = await wire.call("CLIENT", "ID")
        waiting = asyncio.create_task(wire.call("BLPOP", "never", 10))  # in flight
        await asyncio.sleep(0.2)
        assert await client.client_kill_filter(_id=wire_id) == 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(waiting, 5)
        assert await wire.call("PING") == b"PONG"
        assert await wire.call("CLIENT", "ID") != wire_id

    run(redis_url, body)
    run(redis_url, body, on_uvloop=True)


def test_no_wire_where_the_client_speaks_tls() -> None:
    assert Wire.of(aioredis.Redis.from_url("rediss://127.0.0.1:1/0")) is None
    assert Wire.of(aioredis.Redis.from_url("redis://127.0.0.1:1/0")) is not None


def test_a_loading_reply_is_unavailable_not_an_error_of_the_call(redis_url: str) -> None:
    """A restarted Redis answers LOADING while it replays its append-only file: callers treat it
    as Redis out of reach (and retry), as redis-py's ``BusyLoadingError``."""

    async def body(client: aioredis.Redis, wire: Wire) -> None:
        loading = Script("return redis.error_reply('LOADING Redis is loading the dataset')")
        with pytest.raises(UNAVAILABLE) as caught:
            await wire.run(loading, [])
        assert isinstance(caught.value, BusyLoadingError)
        assert await wire.call("PING") == b"PONG"

    run(redis_url, body)


def test_a_subscription_delivers_each_message_and_ends_when_its_connection_drops(
    redis_server_url: str,
) -> None:
    async def body(client: aioredis.Redis, wire: Wire) -> None:
        got: list[tuple[bytes, bytes]] = []
        subscribed = asyncio.Event()

        def on_message(channel: bytes, data: bytes) -> None:
            if data == b"boom":
                raise ValueError("a handler that fails loses only its message")
            got.append((channel, data))

        listening = asyncio.create_task(wire.listen(["a", "b"], on_message, subscribed.set))
        await asyncio.wait_for(subscribed.wait(), 5)
        for channel, data in (("a", b"1"), ("c", b"ignored"), ("b", b"boom"), ("b", b"\r\n2")):
            await client.publish(channel, data)
        await client.set("k", "v")
        assert await wire.call("GET", "k") == b"v", "the wire's own connection is apart"
        while len(got) < 2:
            await asyncio.sleep(0.01)
        assert got == [(b"a", b"1"), (b"b", b"\r\n2")]
        # the embedded server holds this test's connections alone
        assert await client.client_kill_filter(_type="pubsub") == 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(listening, 5)

    run(redis_server_url, body)
    run(redis_server_url, body, on_uvloop=True)
