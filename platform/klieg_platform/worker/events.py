"""Live events of a running request -> Redis, in arrival order.

The runner sends ``log`` and ``chunk`` frames while it serves a request; the worker must not
await Redis inside the frame loop, and must not reorder lines. An ``EventForwarder`` queues the
events and one task writes them, batching consecutive log lines into one append. ``close()``
flushes everything, so the request is completed only after its last line and chunk are stored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from klieg_platform.broker import Broker

log = logging.getLogger("klieg.worker")


class EventForwarder:
    def __init__(self, broker: Broker, request_id: str, *, stream: bool) -> None:
        self.broker = broker
        self.request_id = request_id
        self.stream = stream
        self._pending: list[tuple[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run())

    def __call__(self, header: dict[str, Any], body: bytes) -> None:
        """``RunnerProcess.call``'s ``on_event``: queue one frame."""
        kind = header.get("type")
        if kind == "log":
            self._pending.append(("log", header.get("line")))
        elif kind == "chunk" and self.stream:
            self._pending.append(("chunk", body))
        else:
            return
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                for kind, group in itertools.groupby(batch, key=lambda event: event[0]):
                    items = [item for _, item in group]
                    if kind == "log":
                        await self.broker.append_logs(self.request_id, items)
                    else:
                        for data in items:
                            await self.broker.add_chunk(self.request_id, data)
            except Exception:
                log.exception("request %s: could not store live events", self.request_id)
            if self._closing and not self._pending:
                return

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await self._task
