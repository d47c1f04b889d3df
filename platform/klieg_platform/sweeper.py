"""Blob retention: files outlive neither their URLs nor their requests by much.

Every ``sweep_interval_s`` one gateway of the cluster (the one that takes ``keys.SWEEP_CLAIM``
for the period) deletes from the blob store:

- ``media/`` (files endpoints returned) and ``uploads/`` older than ``blob_retention_s`` (by
  default ``result_ttl_s`` plus an hour: their URLs are signed, or presigned, for
  ``result_ttl_s``, so nobody can fetch them any more);
- ``payloads/`` and ``results/`` (bodies too large for Redis, keyed by request id) older than
  that whose request record is gone: a request still queued keeps its payload however long it
  waits, and a result stays while its record does.

``code/`` (revision archives) is never swept here: ``collector.py`` deletes the archives of
revisions it drops. A round deletes at most ``batch`` objects per
prefix; the rest goes in the next rounds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from klieg_platform import keys
from klieg_platform.broker import Broker
from klieg_platform.broker.claims import EachPeriod
from klieg_platform.config import Settings
from klieg_platform.storage import MEDIA, PAYLOADS, RESULTS, UPLOADS, BlobStore, request_of

log = logging.getLogger("klieg.sweeper")

BY_AGE = (MEDIA, UPLOADS)
BY_REQUEST = (PAYLOADS, RESULTS)


class BlobSweeper(EachPeriod):
    name = "blob sweep"

    def __init__(
        self, broker: Broker, store: BlobStore, settings: Settings, *, batch: int = 1000
    ) -> None:
        super().__init__(broker.claims, keys.SWEEP_CLAIM, settings.sweep_interval_s)
        self.broker = broker
        self.store = store
        self.retention_s = settings.effective_blob_retention_s
        self.interval_s = settings.sweep_interval_s
        self.batch = batch

    async def step(self) -> None:
        swept = await self.sweep()
        if any(swept.values()):
            log.info("swept the blob store: %s", swept)

    async def sweep(self, now: float | None = None) -> dict[str, int]:
        """One round: the number of objects deleted per prefix."""
        before = (time.time() if now is None else now) - self.retention_s
        out: dict[str, int] = {}
        for prefix in (*BY_AGE, *BY_REQUEST):
            old = await asyncio.to_thread(self.store.written_before, prefix, before, self.batch)
            if prefix in BY_REQUEST and old:
                alive = await self.broker.queue.existing([request_of(key) for key in old])
                old = [key for key, live in zip(old, alive, strict=True) if not live]
            if old:
                await asyncio.to_thread(self.store.delete_many, old)
            out[prefix.rstrip("/")] = len(old)
        return out
