"""The blob sweeper against a real Redis and the local blob store: what goes, what stays."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from klieg_platform.broker import Broker
from klieg_platform.config import Settings
from klieg_platform.storage.local import LocalBlobStore
from klieg_platform.sweeper import BlobSweeper
from tests.klieg_platform.broker.test_queue import new

pytestmark = pytest.mark.timeout(30)


def test_a_sweep_deletes_old_media_and_orphans_only(redis_url: str, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    settings = Settings(home=tmp_path, result_ttl_s=100)
    assert settings.effective_blob_retention_s == 3700
    kept = ["code/abc.tar.gz", "payloads/queued.json", "results/live.json"]
    doomed = ["media/r1/t/a.png", "uploads/u/1/b.bin", "payloads/gone.json", "results/gone.json"]
    for key in kept + doomed:
        store.put(key, b"x")

    async def body() -> dict[str, int]:
        broker = Broker.from_url(redis_url, result_ttl_s=100, max_attempts=3)
        try:
            await broker.queue.enqueue(new(rid="queued"))
            await broker.redis.hset("klieg:req:live", mapping={"status": "COMPLETED"})
            sweeper = BlobSweeper(broker, store, settings)
            assert await sweeper.sweep() == dict.fromkeys(
                ["media", "uploads", "payloads", "results"], 0
            )
            return await sweeper.sweep(now=time.time() + 3700 + 5)
        finally:
            await broker.close()

    assert asyncio.run(body()) == {"media": 1, "uploads": 1, "payloads": 1, "results": 1}
    assert [k for k in kept if store.exists(k)] == kept
    assert [k for k in doomed if store.exists(k)] == []


class Counting(BlobSweeper):
    rounds = 0

    async def sweep(self, now: float | None = None) -> dict[str, int]:
        self.rounds += 1
        return await super().sweep(now)


def test_only_one_of_two_sweepers_sweeps_in_a_period(redis_url: str, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    settings = Settings(home=tmp_path, blob_retention_s=0.0, sweep_interval_s=3.0)

    async def body() -> list[int]:
        broker = Broker.from_url(redis_url, result_ttl_s=100, max_attempts=3)
        sweepers = [Counting(broker, store, settings) for _ in range(2)]
        try:
            for sweeper in sweepers:
                await sweeper.start()
            await asyncio.sleep(1.0)
            for sweeper in sweepers:
                await sweeper.stop()
        finally:
            await broker.close()
        return [sweeper.rounds for sweeper in sweepers]

    assert sorted(asyncio.run(body())) == [0, 1]


def test_an_interval_of_zero_turns_sweeping_off(tmp_path: Path) -> None:
    settings = Settings.from_env({"KLIEG_HOME": str(tmp_path), "KLIEG_SWEEP_INTERVAL_S": "0"})
    assert settings.sweep_interval_s == 0
    assert settings.effective_blob_retention_s == 24 * 3600 + 3600
    told = Settings.from_env({"KLIEG_HOME": str(tmp_path), "KLIEG_BLOB_RETENTION_S": "90"})
    assert told.effective_blob_retention_s == 90 and told.sweep_interval_s == 600

    async def body() -> bool:
        nobody = SimpleNamespace(claims=None)
        sweeper = BlobSweeper(nobody, LocalBlobStore(tmp_path), settings)  # type: ignore[arg-type]
        await sweeper.start()
        started = sweeper._task is not None
        await sweeper.stop()
        return started

    assert asyncio.run(body()) is False
