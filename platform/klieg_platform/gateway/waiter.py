"""Completion waiters: one Redis subscription per gateway process, a future per waiting request.

Each gateway has its own reply channel (``keys.reply``); a sync request names it in its record
(``reply_to``), and its completion is published there with the outcome, so the waiter answers
without reading the record again and a gateway hears only of its own requests. Register before
enqueueing, so a completion can never be missed; ``wait`` also re-reads the record every few
seconds, so a dropped pub/sub message only delays, never hangs, a caller (the outcome is then
read from the record). ``watch`` serves the long-poll status route: it hears of any request's
completion on ``keys.DONE_CHANNEL``. The same subscription carries alias changes, which drop the
gateway's revision cache, and revoked keys, which drop them from its key cache (every key is
dropped when the subscription is made again: revocations may have been missed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

from klieg_platform import keys
from klieg_platform.broker import Broker, Outcome


class Waiter:
    def __init__(
        self,
        broker: Broker,
        on_alias_change: Callable[[str], None],
        on_key_revoked: Callable[[str], None] = lambda key_id: None,
        on_subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        self.broker = broker
        self.on_alias_change = on_alias_change
        self.on_key_revoked = on_key_revoked
        self.on_subscribed = on_subscribed
        self.channel = keys.reply(uuid.uuid4().hex)
        """This gateway's reply channel: the ``reply_to`` of the requests it waits for."""
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._watchers: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(
            self.broker.streams.listen(
                [self.channel, keys.DONE_CHANNEL, keys.ALIAS_CHANNEL, keys.KEYS_CHANNEL],
                self._on_message,
                self._ready,
                self.on_subscribed,
            )
        )
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            # bounded: redis-py can swallow a cancel that lands inside a command
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 2)

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == keys.ALIAS_CHANNEL:
            self.on_alias_change(data.decode())
            return
        if channel == keys.KEYS_CHANNEL:
            self.on_key_revoked(data.decode())
            return
        if channel == keys.DONE_CHANNEL:
            for watcher in self._watchers.get(data.decode(), ()):
                if not watcher.done():
                    watcher.set_result(None)
            return
        request_id, outcome = Outcome.from_reply(data)
        fut = self._futures.get(request_id)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    def expect(self, request_id: str) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return fut

    @contextlib.asynccontextmanager
    async def watch(self, request_id: str) -> AsyncIterator[asyncio.Future[None]]:
        """A future set when ``request_id`` (submitted through any gateway) completes; enter
        before reading its state, so a completion in between is not missed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watchers = self._watchers.setdefault(request_id, set())
        watchers.add(fut)
        try:
            yield fut
        finally:
            watchers.discard(fut)
            if not watchers:
                self._watchers.pop(request_id, None)

    def forget(self, request_id: str) -> None:
        """Stop waiting for a request that was not queued after all."""
        self._futures.pop(request_id, None)

    async def wait(
        self, request_id: str, fut: asyncio.Future[Outcome], poll_s: float = 5.0
    ) -> Outcome | None:
        """The outcome once the request is COMPLETED; None when it was seen completed (or gone)
        by a re-read rather than on the reply channel (``Broker.queue.completed``)."""
        try:
            return await self.broker.queue.completed(request_id, fut, poll_s)
        finally:
            self.forget(request_id)
