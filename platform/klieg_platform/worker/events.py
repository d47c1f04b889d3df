"""Live events of a running request -> Redis and the blob store, in arrival order.

The runner sends ``log``, ``media`` and ``chunk`` frames while it serves a request; the worker
must not await I/O inside the frame loop, and must not reorder them. An ``EventForwarder``
queues the events and one task handles them: log lines are batched into one append; media bytes
are stored as blobs and their ``klieg-media://`` placeholders become signed URLs, in the chunks
that follow and (``rewrite``) in the result. ``close()`` flushes everything, so the request is
completed only after its last file and chunk are stored.

Log lines linger ``LOG_LINGER_S`` before they are appended (a media or chunk frame behind them
sends them at once, in order): the lines a request prints in its last moments, all of a short
request's, are not appended but left in ``leftover`` at ``close()``, and ride the completion
(``Outcome.logs``, written by the same script) instead of costing an append of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from klieg._runtime import protocol
from klieg.media import PENDING_SCHEME
from klieg_platform.broker import Broker

log = logging.getLogger("klieg.worker")

LOG_LINGER_S = 0.1
"""How long a log line waits for company before it is appended (live logs are that much late)."""


StoreMedia = Callable[[str, protocol.Media, bytes], Awaitable[str]]
"""(request id, media frame header, bytes) -> the URL the stored file is served at."""


class EventForwarder:
    def __init__(
        self, broker: Broker, request_id: str, *, stream: bool, store_media: StoreMedia
    ) -> None:
        self.broker = broker
        self.request_id = request_id
        self.stream = stream
        self.store_media = store_media
        self.urls: dict[bytes, bytes] = {}
        self._pending: list[tuple[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        """Started by the first event: a request that sends none costs no task."""
        self._timer: asyncio.TimerHandle | None = None
        self.leftover: list[dict[str, Any]] = []
        """The log lines still waiting at ``close()``: the completion carries them."""

    def __call__(self, msg: protocol.Event, body: bytes) -> None:
        """``RunnerProcess.call``'s ``on_event``: queue one frame."""
        if isinstance(msg, protocol.Log):
            self._pending.append(("log", msg.line))
            if self._timer is None and not self._wake.is_set():
                self._timer = asyncio.get_running_loop().call_later(LOG_LINGER_S, self._send)
        elif isinstance(msg, protocol.Media):
            self._pending.append(("media", (msg, body)))
            self._send()
        elif isinstance(msg, protocol.Chunk) and self.stream:
            self._pending.append(("chunk", body))
            self._send()
        else:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def _send(self) -> None:
        """Hand what waits to the task now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
                        await self.broker.streams.append_logs(self.request_id, items)
                    elif kind == "media":
                        for media, data in items:
                            url = await self.store_media(self.request_id, media, data)
                            placeholder = PENDING_SCHEME + media.token
                            self.urls[placeholder.encode()] = url.encode()
                    else:
                        for data in items:
                            await self.broker.streams.add_chunk(self.request_id, self.rewrite(data))
            except Exception:
                log.exception("request %s: could not store live events", self.request_id)
            if self._closing and not self._pending:
                return

    def rewrite(self, body: bytes) -> bytes:
        """``body`` with every stored media placeholder replaced by its URL."""
        for placeholder, url in self.urls.items():
            body = body.replace(placeholder, url)
        return body

    async def close(self) -> None:
        """Store every file and chunk still waiting; the log lines after the last of them are
        not appended but left in ``leftover``."""
        self._closing = True
        tail = len(self._pending)
        while tail and self._pending[tail - 1][0] == "log":
            tail -= 1
        self.leftover = [line for _, line in self._pending[tail:]]
        del self._pending[tail:]
        if self._task is not None:
            self._send()
            await self._task
