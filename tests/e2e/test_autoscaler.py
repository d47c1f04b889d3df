"""The autoscaler with its local adapter, on a platform whose only worker serves another pool:
a burst of queued requests for the CPU pool, which has no worker, brings real ``klieg worker``
processes up; every request completes, correctly and within its tier's SLO; once the queue is
empty and the cool-down has passed, the workers drain and exit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from klieg_platform.autoscaler import Autoscaler, LocalAdapter, parse_plans
from klieg_platform.config import Settings
from klieg_platform.local import ensure_signing_key, settings_env
from klieg_platform.services import open_broker, open_registry
from tests.e2e.platform import APPS, running_platform

pytestmark = pytest.mark.timeout(240)
COOLDOWN_S = 4.0


def needed(http: httpx.Client) -> float:
    """``klieg_pool_slots_needed{pool="CPU"}`` from the gateway's ``/metrics``."""
    text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "klieg_pool_slots_needed" and s.labels == {"pool": "CPU"}:
                return s.value
    raise AssertionError("no klieg_pool_slots_needed for CPU")


async def touched_lately(path: Path, within_s: float) -> None:
    """``path`` exists and was touched in the last ``within_s`` seconds, within a few seconds
    (a worker touches its probe files once per housekeeping round)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            age = None
        if age is not None and age < within_s:
            return
        assert time.monotonic() < deadline, (path.name, age)
        await asyncio.sleep(0.2)


def test_a_pool_with_no_workers_scales_up_drains_and_scales_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"KLIEG_WORKER_POOLS": "GPU-H100"}  # the platform's own worker never takes CPU work
    with running_platform(home, extra_env=env, log_name="autoscaled.log") as platform:
        platform.bootstrap()
        platform.deploy(APPS / "echo" / "app.py")
        with platform.http() as http:
            ids = {
                http.post("/queue/local/echo", json={"text": f"n{i}"}).json()["request_id"]: i
                for i in range(12)
            }
            time.sleep(1.0)
            waiting = http.get(f"/queue/local/echo/requests/{next(iter(ids))}/status").json()
            assert waiting["status"] == "IN_QUEUE", waiting
            # KEDA's signal: 12 waiting requests of (unmeasured, 10 s) service to start within
            # the 60 s SLO less the ~1 s the oldest has waited: 120 / 59, rounded up
            assert needed(http) == 3

        settings = ensure_signing_key(Settings.from_env({"KLIEG_HOME": str(home)}))
        from klieg_platform import vault

        settings = settings.with_(secrets_key=vault.ensure_key(home))
        plans = parse_plans(
            {"pools": {"CPU": {"max_workers": 2, "slots": 2, "cooldown_s": COOLDOWN_S}}}
        )
        probes = tmp_path / "probes"  # both workers share it here; a pod has its own
        adapter = LocalAdapter(
            settings_env(settings) | {"KLIEG_LEASE_S": "5", "KLIEG_PROBE_DIR": str(probes)}
        )

        async def scale() -> tuple[list[dict[str, int]], float, float]:
            broker = open_broker(settings)
            registry = open_registry(settings)
            scaler = Autoscaler(broker, registry, plans, adapter, interval_s=0.5)
            sizes: list[dict[str, int]] = []
            try:
                started = time.monotonic()
                drained = None
                while time.monotonic() - started < 150:
                    step = await scaler.step()
                    assert not step.errors, step.errors
                    sizes.append(step.decided)
                    states = [await broker.queue.get(rid) for rid in ids]
                    if drained is None and all(s and s.status == "COMPLETED" for s in states):
                        drained = time.monotonic() - started
                        for name in ("alive", "ready"):  # what the k8s exec probes read
                            await touched_lately(probes / name, within_s=5)
                    if drained is not None and adapter.current(plans["CPU"]) == 0:
                        return sizes, drained, time.monotonic() - started
                    await asyncio.sleep(0.5)
                raise AssertionError(f"never drained and scaled back: {sizes[-5:]}")
            finally:
                await broker.close()
                registry.close()

        try:
            sizes, drained_s, down_s = asyncio.run(scale())
            for proc in adapter.started:  # scaled down by the autoscaler, not by close()
                proc.wait(timeout=30)
        finally:
            adapter.close()
        assert sizes[0] == {"CPU": 2}, sizes[:3]  # up at once, to the pool's maximum
        assert drained_s < 60, f"the queue took {drained_s:.1f} s (enterprise SLO: 60 s)"
        assert down_s >= drained_s + COOLDOWN_S - 1  # down only after the cool-down
        assert sizes[-1] == {"CPU": 0}
        with platform.http() as http:
            for rid, i in ids.items():
                out = http.get(f"/queue/local/echo/requests/{rid}").json()
                assert out == {"text": f"n{i}", "length": len(f"n{i}")}, (rid, out)
        with platform.http() as http:
            assert needed(http) == 0
        codes = [p.returncode for p in adapter.started]
        assert codes == [0, 0], f"the two workers should have drained and exited: {codes}"
