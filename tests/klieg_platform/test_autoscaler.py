"""The autoscaler's decisions (slots from the queue and the SLOs, workers per pool, cool-downs,
burst pools), its configuration's checks, and the Kubernetes adapter over real HTTP against
recorded API-server answers for the Deployment scale subresource."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klieg.exceptions import InvalidRequestError
from klieg_platform.autoscaler import (
    AdapterError,
    Autoscaler,
    Demand,
    KubernetesAdapter,
    PoolPlan,
    Scaler,
    Waiting,
    buffer_slots,
    parse_plans,
    pool_demand,
    read_demands,
    slots_needed,
)
from klieg_platform.broker import LaneDepth
from klieg_platform.scheduler import DEFAULT_TIERS

TIERS = {t.name: t for t in DEFAULT_TIERS}  # enterprise: 60 s SLO ... free: 1800 s
REPO_POOLS = Path(__file__).resolve().parents[2] / "infra" / "autoscaler" / "pools.yaml"


def plans(**pools: dict[str, Any]) -> dict[str, PoolPlan]:
    return parse_plans({"pools": pools})


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pools", "field"),
    [
        ({"GPU": {"max_workers": 0}}, "pools.GPU.max_workers"),
        ({"GPU": {"slots": 8}}, "pools.GPU.max_workers"),
        ({"GPU": {"max_workers": 2, "min_workers": 3}}, "pools.GPU.min_workers"),
        ({"GPU": {"max_workers": 2, "slots": 0}}, "pools.GPU.slots"),
        ({"GPU": {"max_workers": 2, "cooldown_s": -1}}, "pools.GPU.cooldown_s"),
        ({"GPU": {"max_workers": 2, "gpus": 8}}, "pools.GPU.gpus"),
        ({"B": {"max_workers": 2, "burst_for": "GPU"}}, "pools.B.burst_for"),
        ({"GPU": {"max_workers": "many"}}, "pools.GPU.max_workers"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_its_field(
    pools: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_plans({"pools": pools})
    assert str(refused.value).startswith(f"{field}:")


def test_no_pools_at_all_is_refused() -> None:
    for doc in (None, {}, {"pools": {}}, {"pools": ["CPU"]}):
        with pytest.raises(InvalidRequestError, match=r"^pools:"):
            parse_plans(doc)


def test_a_burst_pool_serves_its_main_pools_queue() -> None:
    p = plans(GPU={"max_workers": 4, "slots": 8}, borrowed={"max_workers": 2, "burst_for": "GPU"})
    assert p["borrowed"].serves == "GPU" and p["GPU"].serves == "GPU"
    assert p["GPU"].deployment == "klieg-worker-gpu" and p["GPU"].namespace == "klieg"


# ---- slots and workers ------------------------------------------------------------------------


def test_slots_cover_running_work_and_start_waiting_work_within_the_slo() -> None:
    assert slots_needed(Demand(), TIERS) == 0
    assert slots_needed(Demand(busy_slots=3), TIERS) == 3
    # 60 requests of 10 s with 60 s to start them all: 10 slots
    assert slots_needed(Demand(queued={"enterprise": 60}, service_s=10.0), TIERS) == 10
    # the oldest has waited 30 s and a cold start takes 10 s: 20 s left, so 30 slots
    waited = Demand(queued={"enterprise": 60}, oldest_wait_s={"enterprise": 30.0},
                    service_s=10.0, cold_s=10.0)  # fmt: skip
    assert slots_needed(waited, TIERS) == 30
    # the same queue in the free tier (1800 s) needs one slot
    assert slots_needed(Demand(queued={"free": 60}, service_s=10.0), TIERS) == 1
    # past the SLO already: at least one slot per request's worth of service
    late = Demand(queued={"enterprise": 5}, oldest_wait_s={"enterprise": 500.0}, service_s=2.0)
    assert slots_needed(late, TIERS) == 5
    assert slots_needed(Demand(warm_slots=4, busy_slots=1), TIERS) == 4
    # concurrency_buffer: spare slots beyond the busy ones, whatever min_concurrency keeps
    assert slots_needed(Demand(warm_slots=4, busy_slots=3, buffer_slots=2), TIERS) == 5


def test_requests_an_apps_cap_holds_back_are_no_demand() -> None:
    """A capped app's queue past its room under the cap needs no worker: more would not start
    it. Its room goes to its most important tier first."""
    lanes = [
        LaneDepth("GPU", "enterprise", "rev-video/f", "o/video", 10),
        LaneDepth("GPU", "enterprise", "rev-image/f", "o/image", 4),
        LaneDepth("GPU", "free", "rev-video/f", "o/video", 30),
    ]
    signals: dict[str, Any] = {
        "queued": {"enterprise": 14, "free": 30}, "oldest_wait_s": {}, "busy_slots": 6,
        "lanes": lanes, "idle": {}, "service": {"o/video": 60.0, "o/image": 6.0}, "cold": {},
    }  # fmt: skip
    free = pool_demand(**signals)
    held = pool_demand(**signals, room={"o/video": 2})  # at its cap but for 2 more
    assert held.queued == {"enterprise": 6, "free": 0}
    assert {(w.tier, w.service_s): w.queued for w in held.waiting} == {
        ("enterprise", 60.0): 2, ("enterprise", 6.0): 4,
    }  # fmt: skip
    # 6 busy + 2 video (60 s in 60 s) + 4 image (6 s in 60 s): 9 slots, not 6 + 10 + 1 + 1
    assert slots_needed(held, TIERS) == 9
    assert slots_needed(free, TIERS) == 18
    assert pool_demand(**signals, room={"o/video": 0}).queued == {"enterprise": 4, "free": 0}


def test_buffer_slots_count_each_pools_concurrency_buffer_in_gpus() -> None:
    gpu = {"name": "g", "kind": "function", "module": "a", "qualname": "g", "gpu": "H100",
           "num_gpus": 2, "concurrency_buffer": 1}  # fmt: skip
    cpu = {"name": "c", "kind": "function", "module": "a", "qualname": "c",
           "concurrency_buffer": 3}  # fmt: skip
    rev = type("Rev", (), {"spec": {"name": "a", "functions": [gpu, cpu]}})
    assert buffer_slots([rev, rev]) == {"GPU-H100": 4, "CPU": 6}


def test_a_request_an_idle_warm_runner_takes_is_not_charged_a_cold_start() -> None:
    # 6 requests of 10 s; the oldest has waited 30 s of 60; a cold start takes 20 s
    def six(warm: int) -> Demand:
        return Demand(queued={"enterprise": 6}, oldest_wait_s={"enterprise": 30.0},
                      waiting=(Waiting("enterprise", 6, service_s=10.0, cold_s=20.0,
                                       warm=warm),))  # fmt: skip

    assert slots_needed(six(0), TIERS) == 6  # 10 s left after the cold start: a slot each
    assert slots_needed(six(6), TIERS) == 2  # 30 s left: 60 s of work in 30 s
    assert slots_needed(six(3), TIERS) == 4  # 3 warm (1 slot) and 3 cold (3 slots)
    assert slots_needed(six(60), TIERS) == 2  # runners beyond the requests change nothing


def test_each_apps_own_times_count_not_the_pools_average() -> None:
    # 60 requests of a 1 s app and 2 of a 30 s app, 60 s to start them: 1 + 1 slots
    mixed = Demand(queued={"enterprise": 62},
                   waiting=(Waiting("enterprise", 60, service_s=1.0),
                            Waiting("enterprise", 2, service_s=30.0)))  # fmt: skip
    assert slots_needed(mixed, TIERS) == 2
    averaged = Demand(queued={"enterprise": 62}, service_s=15.5)  # the mean of the two apps
    assert slots_needed(averaged, TIERS) == 17
    # requests the breakdown does not cover (reserved ones) count with the pool's times
    reserved = Demand(queued={"enterprise": 64}, service_s=30.0, waiting=mixed.waiting)
    assert slots_needed(reserved, TIERS) == 3


def test_a_request_takes_as_many_slots_as_its_function_has_gpus() -> None:
    # 2 requests of an 8-GPU function, past their SLO: 16 slots, as 16 one-GPU requests would
    big = Demand(queued={"enterprise": 2}, oldest_wait_s={"enterprise": 500.0},
                 waiting=(Waiting("enterprise", 2, service_s=100.0, units=8),))  # fmt: skip
    assert slots_needed(big, TIERS) == 16
    small = Demand(queued={"enterprise": 16}, oldest_wait_s={"enterprise": 500.0},
                   waiting=(Waiting("enterprise", 16, service_s=100.0),))  # fmt: skip
    assert slots_needed(small, TIERS) == 16


def test_up_at_once_down_only_after_the_cooldown() -> None:
    s = Scaler(plans(CPU={"max_workers": 10, "slots": 2, "cooldown_s": 60}), TIERS)
    busy = {"CPU": Demand(queued={"enterprise": 36}, service_s=10.0)}  # 6 slots: 3 workers
    assert s.decide(busy, now=0) == {"CPU": 3}
    quiet = {"CPU": Demand()}
    assert s.decide(quiet, now=30) == {"CPU": 3}
    assert s.decide(busy, now=50) == {"CPU": 3}  # wanted again: the cool-down starts over
    assert s.decide(quiet, now=100) == {"CPU": 3}
    assert s.decide(quiet, now=111) == {"CPU": 0}
    huge = {"CPU": Demand(queued={"enterprise": 10_000}, service_s=10.0)}
    assert s.decide(huge, now=112) == {"CPU": 10}


def test_down_only_to_the_most_wanted_over_the_cooldown() -> None:
    s = Scaler(plans(CPU={"max_workers": 10, "slots": 1, "cooldown_s": 10}), TIERS)
    assert s.decide({"CPU": Demand(busy_slots=3)}, now=0) == {"CPU": 3}
    tail = {"CPU": Demand(busy_slots=1)}  # the last request still running
    assert s.decide(tail, now=1) == {"CPU": 3}
    assert s.decide(tail, now=8) == {"CPU": 3}
    assert s.decide({"CPU": Demand()}, now=10.5) == {"CPU": 1}  # not 0: it wanted 1 at 8
    assert s.decide({"CPU": Demand()}, now=17) == {"CPU": 1}
    assert s.decide({"CPU": Demand()}, now=18.5) == {"CPU": 0}


def test_min_workers_and_min_concurrency_hold_a_floor() -> None:
    s = Scaler(plans(GPU={"max_workers": 8, "slots": 4, "min_workers": 1, "cooldown_s": 0}), TIERS)
    assert s.decide({}, now=0) == {"GPU": 1}
    assert s.decide({"GPU": Demand(warm_slots=9)}, now=1) == {"GPU": 3}
    assert s.decide({"GPU": Demand()}, now=2) == {"GPU": 1}


def test_a_burst_pool_takes_only_the_overflow_and_goes_back_first() -> None:
    p = plans(
        GPU={"max_workers": 2, "slots": 8, "cooldown_s": 100},
        borrowed={"max_workers": 3, "slots": 4, "burst_for": "GPU", "cooldown_s": 10},
    )
    s = Scaler(p, TIERS)
    fits = {"GPU": Demand(queued={"enterprise": 60}, service_s=10.0)}  # 10 slots <= 16
    assert s.decide(fits, now=0) == {"GPU": 2, "borrowed": 0}
    over = {"GPU": Demand(queued={"enterprise": 150}, service_s=10.0)}  # 25: 9 over
    assert s.decide(over, now=1) == {"GPU": 2, "borrowed": 3}
    quiet = {"GPU": Demand()}
    assert s.decide(quiet, now=5) == {"GPU": 2, "borrowed": 3}
    assert s.decide(quiet, now=12) == {"GPU": 2, "borrowed": 0}  # borrowed capacity first
    assert s.decide(quiet, now=100) == {"GPU": 2, "borrowed": 0}
    assert s.decide(quiet, now=102) == {"GPU": 0, "borrowed": 0}


def test_the_main_pool_waits_for_its_burst_pool_to_empty() -> None:
    p = plans(
        GPU={"max_workers": 1, "slots": 1, "cooldown_s": 0},
        borrowed={"max_workers": 1, "slots": 1, "burst_for": "GPU", "cooldown_s": 50},
    )
    s = Scaler(p, TIERS)
    assert s.decide({"GPU": Demand(busy_slots=2)}, now=0) == {"GPU": 1, "borrowed": 1}
    assert s.decide({"GPU": Demand()}, now=10) == {"GPU": 1, "borrowed": 1}
    assert s.decide({"GPU": Demand()}, now=60) == {"GPU": 0, "borrowed": 0}


demands = st.builds(
    Demand,
    queued=st.dictionaries(st.sampled_from(sorted(TIERS)), st.integers(0, 5000), max_size=5),
    oldest_wait_s=st.dictionaries(st.sampled_from(sorted(TIERS)), st.floats(0, 4000)),
    busy_slots=st.integers(0, 500),
    service_s=st.floats(0.01, 600),
    cold_s=st.floats(0, 600),
    warm_slots=st.integers(0, 100),
)


@settings(max_examples=200, deadline=None)
@given(rounds=st.lists(st.tuples(demands, st.floats(0, 100)), min_size=1, max_size=20))
def test_sizes_stay_within_each_pools_bounds(rounds: list[tuple[Demand, float]]) -> None:
    p = plans(
        GPU={"max_workers": 7, "slots": 8, "min_workers": 1, "cooldown_s": 30},
        borrowed={"max_workers": 3, "slots": 8, "burst_for": "GPU", "cooldown_s": 5},
    )
    s = Scaler(p, TIERS)
    now, before = 0.0, {"GPU": 0, "borrowed": 0}
    for demand, dt in rounds:
        now += dt
        out = s.decide({"GPU": demand}, now)
        assert 1 <= out["GPU"] <= 7 and 0 <= out["borrowed"] <= 3
        wanted = s.wanted({"GPU": demand})
        assert out["GPU"] >= wanted["GPU"] and out["borrowed"] >= wanted["borrowed"]
        if out["borrowed"] > 0:  # borrowed capacity in use: the main pool does not shrink
            assert out["GPU"] >= before["GPU"]
        if out["borrowed"]:  # and it is used only with the main pool at its maximum
            assert out["GPU"] == 7 or before["borrowed"] > 0
        before = out


# ---- the Kubernetes adapter, over HTTP ---------------------------------------------------------

SCALE = {
    "kind": "Scale",
    "apiVersion": "autoscaling/v1",
    "metadata": {"name": "klieg-worker-gpu", "namespace": "klieg", "resourceVersion": "4711"},
    "spec": {"replicas": 3},
    "status": {"replicas": 3, "selector": "app=klieg-worker,pool=gpu"},
}
NOT_FOUND = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
    "message": 'deployments.apps "klieg-worker-gone" not found',
    "details": {"name": "klieg-worker-gone", "group": "apps", "kind": "deployments"},
}  # fmt: skip


@pytest.fixture
def api_server() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """An HTTP server answering as the API server does for the scale subresource."""
    api = ApiServer({"klieg-worker-gpu": 3})
    try:
        yield api.up(), api.seen
    finally:
        api.down()


class ApiServer:
    """An API server's scale subresource over HTTP that can be taken down and brought back on
    the same port (its Deployments' replicas survive). ``seen``: (method, path, body) of every
    request; ``patches``: (deployment, replicas) of every scale change."""

    def __init__(self, replicas: dict[str, int]) -> None:
        self.replicas = replicas
        self.seen: list[tuple[str, str, Any]] = []
        self.patches: list[tuple[str, int]] = []
        self.port = 0
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> str:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _route(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                state.seen.append((method, self.path, body))
                parts = self.path.split("?")[0].split("/")
                name = parts[-2] if parts[-1] == "scale" else ""
                ours = self.path.startswith("/apis/apps/v1/namespaces/klieg/deployments/")
                if not ours or name not in state.replicas:
                    code, doc = 404, NOT_FOUND
                else:
                    if method == "PATCH":
                        state.replicas[name] = body["spec"]["replicas"]
                        state.patches.append((name, state.replicas[name]))
                    code, doc = 200, json.loads(json.dumps(SCALE))
                    doc["spec"]["replicas"] = state.replicas[name]
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._route("GET")

            def do_PATCH(self) -> None:
                self._route("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _adapter(url: str) -> KubernetesAdapter:
    from kubernetes import client

    config = client.Configuration(host=url)
    return KubernetesAdapter(client.AppsV1Api(client.ApiClient(config)))


def test_the_kubernetes_adapter_reads_and_sets_the_scale_subresource(
    api_server: tuple[str, list[tuple[str, str, Any]]],
) -> None:
    url, seen = api_server
    k8s = _adapter(url)
    gpu = plans(GPU={"max_workers": 9})["GPU"]
    assert k8s.current(gpu) == 3
    k8s.scale(gpu, 7)
    assert k8s.current(gpu) == 7
    patch = [s for s in seen if s[0] == "PATCH"]
    assert patch == [
        ("PATCH", "/apis/apps/v1/namespaces/klieg/deployments/klieg-worker-gpu/scale",
         {"spec": {"replicas": 7}})
    ]  # fmt: skip


def test_a_deployment_it_cannot_reach_is_an_adapter_error_naming_it(
    api_server: tuple[str, list[tuple[str, str, Any]]],
) -> None:
    url, _ = api_server
    gone = plans(GPU={"max_workers": 9, "deployment": "klieg-worker-gone"})["GPU"]
    with pytest.raises(AdapterError, match=r"deployment klieg/klieg-worker-gone: HTTP 404"):
        _adapter(url).current(gone)
    with pytest.raises(AdapterError, match=r"cannot scale deployment klieg/klieg-worker-gone"):
        _adapter(url).scale(gone, 2)
    nobody = plans(GPU={"max_workers": 9})["GPU"]
    with pytest.raises(AdapterError, match="cannot read deployment klieg/klieg-worker-gpu"):
        _adapter("http://127.0.0.1:9").current(nobody)


def test_the_shipped_pools_file_is_valid() -> None:
    from klieg_platform.autoscaler import load_plans
    from tests.e2e.platform import REPO

    shipped = load_plans(REPO / "infra" / "autoscaler" / "pools.yaml")
    assert shipped["GPU-H100-burst"].serves == "GPU-H100"
    assert all(p.max_workers >= 1 for p in shipped.values())


def test_the_command_says_one_line_on_a_bad_config_or_no_redis(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  GPU: {max_workers: 0}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    env["KLIEG_HOME"] = str(tmp_path / "home")  # no Redis runs there
    klieg = [sys.executable, "-m", "klieg.cli", "autoscaler", "--once", "--config"]
    for config, said in ((bad, "pools.GPU.max_workers"), (tmp_path / "none.yaml", "cannot read"),
                         (REPO_POOLS, "UnavailableError: Redis at unix://")):  # fmt: skip
        out = subprocess.run([*klieg, str(config)], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode != 0 and out.stderr.count("\n") == 1, out.stderr
        assert said in out.stderr, out.stderr


# ---- reading the demand and a round, against a real Redis --------------------------------------


def _request(rid: str, app: str, tier: str = "enterprise", pool: str = "CPU", gpus: int = 0) -> Any:
    from klieg_platform.broker import NewRequest

    return NewRequest(id=rid, owner="o", tenant="t", app=app, revision=f"rev-{app}",
                      function="f", endpoint="/", pool=pool, payload=b"{}", timeout_s=30,
                      tier=tier, gpus=gpus)  # fmt: skip


def test_the_demand_is_read_per_app_with_the_warm_runners_of_the_heartbeats(
    redis_url: str,
) -> None:
    from klieg_platform.broker import Broker

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        try:
            for i in range(6):
                await broker.queue.enqueue(_request(f"q{i}", "quick"))
            await broker.queue.enqueue(_request("s0", "slow"))
            await broker.queue.enqueue(_request("s1", "slow", tier="free"))
            await broker.queue.enqueue(_request("g0", "quick", pool="GPU"))
            await broker.queue.enqueue(_request("g1", "big", pool="GPU", gpus=4))
            await broker.stats.record_time("service", "o/quick", 2.0)
            await broker.stats.record_time("service", "o/slow", 40.0)
            await broker.stats.record_time("cold", "o/slow", 25.0)
            # two idle runners of the quick app: one on a CPU worker, one on a worker of all
            # pools; a busy runner of the slow app (2 slots)
            await broker.workers.heartbeat("w1", ["CPU"], 4, ["o/quick"], ["rev-quick/f"],
                                           detail=[{"state": "busy", "slots": 2}])  # fmt: skip
            await broker.workers.heartbeat("w2", ["*"], 4, ["o/quick"], ["rev-quick/f"])
            demands = await read_demands(broker, {"CPU": 1}, ["CPU", "GPU"])
        finally:
            await broker.close()
        cpu = demands["CPU"]
        assert cpu.queued == {"enterprise": 7, "api": 0, "plus": 0, "light": 0, "free": 1}
        assert (cpu.busy_slots, cpu.warm_slots) == (2, 1)
        assert sorted(cpu.waiting, key=lambda w: (w.tier, w.service_s)) == [
            Waiting("enterprise", 6, service_s=2.0, cold_s=25.0, warm=2),
            Waiting("enterprise", 1, service_s=40.0, cold_s=25.0, warm=0),
            Waiting("free", 1, service_s=40.0, cold_s=25.0, warm=0),
        ]  # unmeasured cold starts: the mean over the measured apps
        assert cpu.service_s == pytest.approx((6 * 2.0 + 2 * 40.0) / 8)
        # busy 2 + quick: 2 warm (2 s in 60 s) and 4 cold (2 s in 35 s) + slow: 40 s in 40 s
        # + free: 40 s in 1775 s
        assert slots_needed(cpu, TIERS) == 4
        gpu = demands["GPU"]
        assert sorted(gpu.waiting, key=lambda w: w.units) == [
            Waiting("enterprise", 1, service_s=2.0, cold_s=25.0, warm=1),
            Waiting("enterprise", 1, service_s=21.0, cold_s=25.0, units=4),
        ]  # the big app unmeasured: the means over the measured apps; 4 GPUs, 4 slots

    import asyncio

    asyncio.run(main())


def test_the_demand_leaves_out_what_an_apps_cap_holds_back(redis_url: str) -> None:
    """An app at its in-flight cap: its queued requests are no demand, and the urgency is the
    oldest wait of a request that can start (the lane orders' heads), not of a capped one."""
    from dataclasses import replace

    from klieg_platform.broker import Broker, now_ms

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        try:
            at = now_ms()
            for i in range(5):  # the capped app's, queued 10 minutes ago
                req = replace(_request(f"c{i}", "capped"), app_cap=1)
                await broker.queue.enqueue(req, at_ms=at - 600_000 + i)
            await broker.queue.enqueue(_request("q0", "quick"), at_ms=at - 5_000)
            taken = await broker.queue.dispatch(["CPU"], "w1", 60)  # c0: the app at its cap
            assert taken is not None and taken.id == "c0"
            assert await broker.queue.app_room() == {"o/capped": 0}
            heads = await broker.queue.heads_waited(["CPU"])
            demands = await read_demands(broker, {}, ["CPU"])
        finally:
            await broker.close()
        assert 4.5 <= heads[("CPU", "enterprise")] < 60  # q0's wait, not the capped ones' 600 s
        cpu = demands["CPU"]
        assert cpu.queued["enterprise"] == 1  # q0; the 4 capped requests wait for c0, not slots
        assert [w.queued for w in cpu.waiting] == [1]

    import asyncio

    asyncio.run(main())


def test_a_round_leaves_a_pool_it_cannot_reach_at_its_last_good_size(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    from klieg_platform.config import Settings
    from klieg_platform.services import open_broker, open_registry

    api = ApiServer({"klieg-worker-cpu": 0, "klieg-worker-gpu": 0})
    url = api.up()
    p = plans(CPU={"max_workers": 4, "min_workers": 1, "cooldown_s": 0},
              GPU={"max_workers": 4, "min_workers": 2, "cooldown_s": 0})  # fmt: skip
    settings = Settings(home=tmp_path, redis_url=redis_url)

    async def main() -> None:
        broker, registry = open_broker(settings), open_registry(settings)
        scaler = Autoscaler(broker, registry, p, _adapter(url))
        try:
            first = await scaler.step()
            assert (first.decided, first.applied, first.errors) == (
                {"CPU": 1, "GPU": 2}, {"CPU": 1, "GPU": 2}, {})  # fmt: skip
            api.down()
            for i in range(11):  # the CPU pool now wants 2 workers (11 x 10 s in 60 s)
                await broker.queue.enqueue(_request(f"r{i}", "a"))
            caplog.clear()
            with caplog.at_level(logging.WARNING):  # no HTTP library's retry story either
                cut_off = await scaler.step()
                again = await scaler.step()
            assert cut_off.decided == {"CPU": 2, "GPU": 2} and cut_off.applied == {}
            for pool, deployment in (("CPU", "klieg-worker-cpu"), ("GPU", "klieg-worker-gpu")):
                assert cut_off.errors[pool] == (
                    f"cannot read deployment klieg/{deployment}: no answer from the Kubernetes "
                    f"API server at {url} (connection refused)"
                )
            assert again.errors == cut_off.errors
            said = [r.getMessage() for r in caplog.records]
            assert said == [f"pools CPU, GPU keep their sizes: no answer from the Kubernetes API "
                            f"server at {url} (connection refused)"], said  # fmt: skip
            assert api.replicas == {"klieg-worker-cpu": 1, "klieg-worker-gpu": 2}
            api.up()  # back on the same port: the sizes it had, then the new decision
            back = await scaler.step()
            assert back.applied == {"CPU": 2, "GPU": 2} and not back.errors
            assert api.patches == [("klieg-worker-cpu", 1), ("klieg-worker-gpu", 2),
                                   ("klieg-worker-cpu", 2)]  # fmt: skip
        finally:
            api.down()
            await broker.close()
            registry.close()

    asyncio.run(main())


def test_once_with_the_local_adapter_decides_and_starts_no_worker(
    redis_url: str, tmp_path: Path
) -> None:
    """Workers a single round started would outlive it (orphans): with the local adapter,
    ``--once`` only decides."""
    import os
    import signal
    import subprocess
    import sys

    from tests.e2e.platform import platform_pids

    config = tmp_path / "pools.yaml"
    config.write_text("pools:\n  CPU: {max_workers: 2, min_workers: 1}\n")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    env.update(KLIEG_HOME=str(home), KLIEG_REDIS_URL=redis_url)
    klieg = [sys.executable, "-m", "klieg.cli", "autoscaler", "--once", "--config", str(config)]
    try:
        out = subprocess.run(klieg, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"decided": {"CPU": 1}, "applied": {"CPU": 0},
                                          "errors": {}, "dry_run": True}  # fmt: skip
        assert platform_pids(home, "klieg_platform.worker") == []
    finally:
        for pid in platform_pids(home, "klieg_platform.worker"):
            os.kill(pid, signal.SIGKILL)
