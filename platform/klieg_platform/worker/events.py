"""Live events of a running request -> Redis and the blob store, in arrival order.

The runner sends ``log``, ``media`` and ``chunk`` frames while it serves a request; the worker
must not await I/O inside the frame loop, and must not reorder them. An ``EventForwarder``
queues the events and one task handles them: log lines are batched into one append; media bytes
are stored as blobs and their ``klieg-media://`` placeholders become signed URLs, in the chunks
that follow and (``rewrite``) in the result. ``close()`` flushes everything, so the request is
completed only after its last line, file and chunk are stored.
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

    def __call__(self, msg: protocol.Event, body: bytes) -> None:
        """``RunnerProcess.call``'s ``on_event``: queue one frame."""
        if isinstance(msg, protocol.Log):
            self._pending.append(("log", msg.line))
        elif isinstance(msg, protocol.Media):
            self._pending.append(("media", (msg, body)))
        elif isinstance(msg, protocol.Chunk) and self.stream:
            self._pending.append(("chunk", body))
        else:
            return
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

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
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
