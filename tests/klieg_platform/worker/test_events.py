"""A request's live events on their way to Redis and the blob store (``EventForwarder``), on a
real Redis: log lines linger so that a short request's ride its completion, and nothing is
reordered or lost."""

from __future__ import annotations

import asyncio
from typing import Any

from klieg._runtime import protocol
from klieg_platform import keys
from klieg_platform.broker import Broker
from klieg_platform.worker.events import LOG_LINGER_S, EventForwarder


def _line(text: str) -> dict[str, Any]:
    return {"message": text, "level": "INFO", "source": "stdout", "timestamp": "t"}


def _messages(lines: list[dict[str, Any]]) -> list[str]:
    return [line["message"] for line in lines]


async def _run(redis_url: str, body: Any) -> Any:
    broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
    stored: list[str] = []

    async def store_media(request_id: str, media: protocol.Media, data: bytes) -> str:
        stored.append(media.token)
        return f"https://files/{media.token}"

    try:
        events = EventForwarder(broker, "r1", stream=False, store_media=store_media)
        return await body(broker, events, stored)
    finally:
        await broker.close()


def test_a_short_requests_lines_are_left_for_its_completion(redis_url: str) -> None:
    async def body(broker: Broker, events: EventForwarder, stored: list[str]) -> None:
        events(protocol.Log("r1", _line("one")), b"")
        events(protocol.Log("r1", _line("two")), b"")
        await events.close()
        assert _messages(events.leftover) == ["one", "two"]
        assert await broker.streams.logs("r1") == []
        await asyncio.sleep(LOG_LINGER_S * 2)  # the lingering timer was stopped, not left
        assert await broker.streams.logs("r1") == []

    asyncio.run(_run(redis_url, body))


def test_lines_reach_the_log_within_the_linger_while_the_request_runs(redis_url: str) -> None:
    async def body(broker: Broker, events: EventForwarder, stored: list[str]) -> None:
        events(protocol.Log("r1", _line("early")), b"")
        await asyncio.sleep(LOG_LINGER_S * 3)
        assert _messages(await broker.streams.logs("r1")) == ["early"]
        assert 0 < await broker.redis.ttl(keys.logs("r1")) <= 60  # it expires with the record
        events(protocol.Log("r1", _line("late")), b"")
        await events.close()
        assert _messages(events.leftover) == ["late"]
        assert _messages(await broker.streams.logs("r1")) == ["early"]

    asyncio.run(_run(redis_url, body))


def test_a_file_sends_the_lines_before_it_at_once_and_keeps_their_order(redis_url: str) -> None:
    async def body(broker: Broker, events: EventForwarder, stored: list[str]) -> None:
        events(protocol.Log("r1", _line("before")), b"")
        media = protocol.Media("r1", "tok1", "image/png", "a.png")
        events(media, b"\x89PNG")
        events(protocol.Log("r1", _line("after")), b"")
        await events.close()
        assert stored == ["tok1"]
        assert _messages(await broker.streams.logs("r1")) == ["before"]
        assert _messages(events.leftover) == ["after"]
        assert events.rewrite(b"klieg-media://tok1") == b"https://files/tok1"

    asyncio.run(_run(redis_url, body))
