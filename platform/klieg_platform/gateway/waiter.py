"""Completion waiters: one Redis subscription per gateway process, a future per waiting request.

Register before enqueueing, so a completion can never be missed; ``wait`` also re-reads the
record every few seconds, so a dropped pub/sub message only delays, never hangs, a caller.
The same subscription carries alias changes, which drop the gateway's revision cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from klieg_platform import keys
from klieg_platform.broker import Broker


class Waiter:
    def __init__(self, broker: Broker, on_alias_change: Callable[[str], None]) -> None:
        self.broker = broker
        self.on_alias_change = on_alias_change
        self._futures: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(
            self.broker.streams.listen(
                [keys.DONE_CHANNEL, keys.ALIAS_CHANNEL], self._on_message, self._ready
            )
        )
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            # bounded: redis-py can swallow a cancel that lands inside a command
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 2)

    def _on_message(self, channel: str, data: str) -> None:
        if channel == keys.ALIAS_CHANNEL:
            self.on_alias_change(data)
            return
        fut = self._futures.get(data)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def expect(self, request_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return fut

    async def wait(self, request_id: str, fut: asyncio.Future[None], poll_s: float = 5.0) -> None:
        """Return once the request is COMPLETED (``Broker.completed``)."""
        try:
            await self.broker.queue.completed(request_id, fut, poll_s)
        finally:
            self._futures.pop(request_id, None)
