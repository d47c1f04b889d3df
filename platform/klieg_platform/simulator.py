"""Replay a request trace through a scheduling pick in virtual time (discrete events, no sleeps).

Trace format (JSON lines). The first line is the cluster::

    {"workers": 32, "gpus_per_worker": 8,
     "tiers": {"enterprise": {"slo_s": 60}, ..., "free": {"slo_s": 1800}},
     "apps": {"video": {"cold_start_s": 90, "num_gpus": 8}, ...}}

and every further line one request, in arrival order::

    {"t": 12.5, "tier": "free", "tenant": "free-7", "app": "video", "service_s": 118.0}

Optional cluster keys (absent = no limit): per tier ``rank`` (0 = most important; without a rank
on every tier, tiers rank by ``slo_s``, tighter first), ``max_queued`` (arrivals beyond it are
shed, through ``scheduler.admit``) and ``tenant_cap`` (in-flight cap of each tenant of the tier);
per app ``max_inflight`` (in-flight cap of the app).

Cluster model, the same whatever the pick: each worker has ``gpus_per_worker`` GPUs; a runner of
an app holds ``num_gpus`` GPUs on one worker and stays warm (idle, still holding them) after a
request until it is evicted. Whenever a job arrives or a job finishes, the dispatch loop picks a
job (``pick_fn``) and places it: on an idle warm runner of its app if there is one (the most
recently used; no cold start); else on the worker with the fewest free GPUs that still fit it;
else on the worker of the least recently used idle runner whose worker can make room, after
evicting that worker's idle runners, least recently used first. A new runner pays its app's
``cold_start_s`` before the service time. If the picked job fits nowhere, dispatch stops until
something finishes (so a big job is not starved by small ones). Wait = dispatch time - arrival;
``gpu_utilisation`` = service GPU-seconds / (GPUs x makespan); cold starts are not busy time,
``cold_start_gpu_share`` is their GPU-seconds over the same denominator.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TextIO

from klieg_platform.scheduler import SCAN, Job, PickFn, Tier, admit

UNBOUNDED = 2**62
"""``max_queued`` of a tier whose trace entry sets none."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    name: str
    cold_start_s: float
    num_gpus: int
    max_inflight: int | None = None


@dataclass(frozen=True, slots=True)
class Cluster:
    """The first trace line. ``tenant_caps``: tier name -> in-flight cap of each of its tenants."""

    workers: int
    gpus_per_worker: int
    tiers: tuple[Tier, ...]
    apps: Mapping[str, AppSpec]
    tenant_caps: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The first trace line; optional keys only where a limit is set."""
        tiers = {
            t.name: {"slo_s": t.slo_s, "rank": t.rank}
            | ({"max_queued": t.max_queued} if t.max_queued < UNBOUNDED else {})
            | ({"tenant_cap": self.tenant_caps[t.name]} if t.name in self.tenant_caps else {})
            for t in self.tiers
        }
        apps = {
            a.name: {"cold_start_s": a.cold_start_s, "num_gpus": a.num_gpus}
            | ({} if a.max_inflight is None else {"max_inflight": a.max_inflight})
            for a in self.apps.values()
        }
        return {"workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "tiers": tiers, "apps": apps}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    t: float
    tier: str
    tenant: str
    app: str
    service_s: float


@dataclass(frozen=True, slots=True)
class Trace:
    cluster: Cluster
    requests: tuple[Request, ...]


def _cluster_from_json(doc: Mapping[str, Any]) -> Cluster:
    raw_tiers: Mapping[str, Mapping[str, Any]] = doc["tiers"]
    names = list(raw_tiers)
    if all("rank" in raw_tiers[n] for n in names):
        names.sort(key=lambda n: int(raw_tiers[n]["rank"]))
    else:
        names.sort(key=lambda n: float(raw_tiers[n]["slo_s"]))
    tiers = tuple(
        Tier(n, float(raw_tiers[n]["slo_s"]), int(raw_tiers[n].get("max_queued", UNBOUNDED)), r)
        for r, n in enumerate(names)
    )
    caps = {n: int(raw_tiers[n]["tenant_cap"]) for n in names if "tenant_cap" in raw_tiers[n]}
    apps = {
        name: AppSpec(
            name,
            float(spec["cold_start_s"]),
            int(spec["num_gpus"]),
            int(spec["max_inflight"]) if "max_inflight" in spec else None,
        )
        for name, spec in doc["apps"].items()
    }
    cluster = Cluster(int(doc["workers"]), int(doc["gpus_per_worker"]), tiers, apps, caps)
    for app in apps.values():
        if not 1 <= app.num_gpus <= cluster.gpus_per_worker:
            raise ValueError(
                f"app {app.name!r} needs {app.num_gpus} GPUs; a worker has "
                f"{cluster.gpus_per_worker}"
            )
        if app.max_inflight is not None and app.max_inflight < 1:
            raise ValueError(f"app {app.name!r}: max_inflight must be >= 1")
    if any(cap < 1 for cap in caps.values()) or cluster.workers < 1:
        raise ValueError("tenant caps and the worker count must be >= 1")
    return cluster


def read_trace(lines: Iterable[str]) -> Trace:
    """Parse a trace (see the module docstring). Requests are stably sorted by ``t``.

    Raises ValueError for an unknown tier or app, or an app larger than a worker.
    """
    it = (line for line in lines if line.strip())
    try:
        cluster = _cluster_from_json(json.loads(next(it)))
    except StopIteration:
        raise ValueError("empty trace") from None
    tier_names = {t.name for t in cluster.tiers}
    requests: list[Request] = []
    for line in it:
        d = json.loads(line)
        r = Request(float(d["t"]), d["tier"], d["tenant"], d["app"], float(d["service_s"]))
        if r.tier not in tier_names or r.app not in cluster.apps:
            raise ValueError(f"request names an unknown tier or app: {line.strip()}")
        requests.append(r)
    requests.sort(key=lambda r: r.t)
    return Trace(cluster, tuple(requests))


def write_trace(trace: Trace, out: TextIO) -> None:
    """Write ``trace`` in the format ``read_trace`` reads."""
    out.write(json.dumps(trace.cluster.to_json()) + "\n")
    for r in trace.requests:
        line = {"t": round(r.t, 3), "tier": r.tier, "tenant": r.tenant, "app": r.app,
                "service_s": round(r.service_s, 3)}  # fmt: skip
        out.write(json.dumps(line) + "\n")


@dataclass(slots=True)
class _Worker:
    id: int
    free: int
    idle: dict[int, _Runner] = field(default_factory=dict)
    idle_gpus: int = 0


@dataclass(slots=True)
class _Runner:
    id: int
    app: str
    gpus: int
    worker: _Worker


class _Nodes:
    """Workers, their runners and the placement rule. Buckets index workers by free GPUs and by
    free-plus-idle GPUs, so a placement costs O(gpus_per_worker), not O(workers)."""

    def __init__(self, workers: int, gpus_per_worker: int) -> None:
        self.size = gpus_per_worker
        self.workers = [_Worker(i, gpus_per_worker) for i in range(workers)]
        self.by_free: list[set[int]] = [set() for _ in range(gpus_per_worker + 1)]
        self.by_avail: list[set[int]] = [set() for _ in range(gpus_per_worker + 1)]
        self.by_free[gpus_per_worker].update(range(workers))
        self.by_avail[gpus_per_worker].update(range(workers))
        self.idle: dict[int, _Runner] = {}
        self.idle_by_app: dict[str, dict[int, _Runner]] = {}
        self.runners = 0

    def _rebucket(self, w: _Worker, old_free: int, old_avail: int) -> None:
        if w.free != old_free:
            self.by_free[old_free].discard(w.id)
            self.by_free[w.free].add(w.id)
        avail = w.free + w.idle_gpus
        if avail != old_avail:
            self.by_avail[old_avail].discard(w.id)
            self.by_avail[avail].add(w.id)

    def _fit(self, buckets: list[set[int]], gpus: int) -> _Worker | None:
        for k in range(gpus, self.size + 1):
            if buckets[k]:
                return self.workers[min(buckets[k])]
        return None

    def place(self, app: AppSpec) -> tuple[_Runner, bool] | None:
        """A runner for one job of ``app`` and whether it is a cold start; None: fits nowhere."""
        warm = self.idle_by_app.get(app.name)
        if warm:
            _, runner = warm.popitem()
            w = runner.worker
            old_free, old_avail = w.free, w.free + w.idle_gpus
            del w.idle[runner.id]
            del self.idle[runner.id]
            w.idle_gpus -= runner.gpus
            self._rebucket(w, old_free, old_avail)
            return runner, False
        w_or_none = self._fit(self.by_free, app.num_gpus)
        if w_or_none is None:
            if self._fit(self.by_avail, app.num_gpus) is None:
                return None
            # The worker of the least recently used idle runner that can make room.
            w_or_none = next(
                r.worker
                for r in self.idle.values()
                if r.worker.free + r.worker.idle_gpus >= app.num_gpus
            )
        w = w_or_none
        old_free, old_avail = w.free, w.free + w.idle_gpus
        while w.free < app.num_gpus:
            rid, victim = next(iter(w.idle.items()))
            del w.idle[rid]
            del self.idle[rid]
            del self.idle_by_app[victim.app][rid]
            w.idle_gpus -= victim.gpus
            w.free += victim.gpus
        w.free -= app.num_gpus
        self.runners += 1
        self._rebucket(w, old_free, old_avail)
        return _Runner(self.runners, app.name, app.num_gpus, w), True

    def release(self, runner: _Runner) -> None:
        """The runner finished its job: it stays on its worker, idle and warm."""
        w = runner.worker
        old_free, old_avail = w.free, w.free + w.idle_gpus
        w.idle[runner.id] = runner
        self.idle[runner.id] = runner
        w.idle_gpus += runner.gpus
        self.idle_by_app.setdefault(runner.app, {})[runner.id] = runner
        self._rebucket(w, old_free, old_avail)


@dataclass(frozen=True, slots=True)
class TierStats:
    slo_s: float
    requests: int
    shed: int
    p50_wait_s: float
    p99_wait_s: float
    slo_attainment: float
    max_wait_over_slo: float


@dataclass(frozen=True, slots=True)
class RunStats:
    tiers: Mapping[str, TierStats]
    cold_starts: int
    gpu_utilisation: float
    cold_start_gpu_share: float
    makespan_s: float

    def as_dict(self) -> dict[str, Any]:
        tiers = {
            name: {k: round(getattr(s, k), 4) for k in TierStats.__slots__}
            for name, s in self.tiers.items()
        }
        return {
            "tiers": tiers,
            "cold_starts": self.cold_starts,
            "gpu_utilisation": round(self.gpu_utilisation, 4),
            "cold_start_gpu_share": round(self.cold_start_gpu_share, 4),
            "makespan_s": round(self.makespan_s, 1),
        }


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _tier_stats(tier: Tier, waits: list[float], shed: int) -> TierStats:
    waits.sort()
    met = sum(1 for w in waits if w <= tier.slo_s)
    return TierStats(
        slo_s=tier.slo_s,
        requests=len(waits),
        shed=shed,
        p50_wait_s=_quantile(waits, 0.5),
        p99_wait_s=_quantile(waits, 0.99),
        slo_attainment=met / len(waits) if waits else 1.0,
        max_wait_over_slo=(waits[-1] / tier.slo_s) if waits else 0.0,
    )


def simulate(
    trace: Trace, pick_fn: PickFn, progress: Callable[[float], None] | None = None
) -> RunStats:
    """Replay ``trace`` with ``pick_fn`` choosing every dispatch; every request runs to the end.

    ``progress`` (if given) is called with the virtual time after each virtual half hour.
    """
    cluster = trace.cluster
    tiers = cluster.tiers
    apps = cluster.apps
    nodes = _Nodes(cluster.workers, cluster.gpus_per_worker)
    queues: dict[str, deque[Job]] = {t.name: deque() for t in tiers}
    waits: dict[str, list[float]] = {t.name: [] for t in tiers}
    shed = dict.fromkeys(queues, 0)
    caps = cluster.tenant_caps
    tenant_caps = {r.tenant: caps[r.tier] for r in trace.requests if r.tier in caps}
    app_caps = {a.name: a.max_inflight for a in apps.values() if a.max_inflight is not None}
    by_tenant: dict[str, int] = {}
    by_app: dict[str, int] = {}
    running: list[tuple[float, int, _Runner, Job]] = []
    reqs = trace.requests
    service = [r.service_s for r in reqs]
    queued = cold_starts = seq = i = 0
    busy_gpu_s = cold_gpu_s = 0.0
    start = reqs[0].t if reqs else 0.0
    now = report_at = start
    while i < len(reqs) or running:
        now = min(reqs[i].t if i < len(reqs) else math.inf, running[0][0] if running else math.inf)
        while running and running[0][0] <= now:
            _, _, runner, done = heapq.heappop(running)
            nodes.release(runner)
            by_tenant[done.tenant] -= 1
            by_app[done.app] -= 1
        while i < len(reqs) and reqs[i].t <= now:
            r = reqs[i]
            if admit(r.tier, len(queues[r.tier]), tiers):
                queues[r.tier].append(
                    Job(str(i), r.tier, r.tenant, r.app, r.t, apps[r.app].num_gpus)
                )
                queued += 1
            else:
                shed[r.tier] += 1
            i += 1
        while queued:
            job = pick_fn(
                queues,
                now,
                tiers=tiers,
                inflight_by_tenant=by_tenant,
                inflight_by_app=by_app,
                tenant_caps=tenant_caps,
                app_caps=app_caps,
            )
            if job is None:
                break
            app = apps[job.app]
            placed = nodes.place(app)
            if placed is None:
                break
            runner, cold = placed
            queue = queues[job.tier]
            if queue[0] is job:
                queue.popleft()
            else:
                del queue[next(k for k, j in enumerate(islice(queue, SCAN)) if j is job)]
            queued -= 1
            waits[job.tier].append(now - job.enqueued_at)
            by_tenant[job.tenant] = by_tenant.get(job.tenant, 0) + 1
            by_app[job.app] = by_app.get(job.app, 0) + 1
            run_s = service[int(job.id)]
            busy_gpu_s += run_s * app.num_gpus
            cold_s = app.cold_start_s if cold else 0.0
            cold_starts += cold
            cold_gpu_s += cold_s * app.num_gpus
            seq += 1
            heapq.heappush(running, (now + cold_s + run_s, seq, runner, job))
        if progress is not None and now >= report_at + 1800.0:
            report_at = now
            progress(now)
    makespan = max(now - start, 1e-9)
    gpus = cluster.workers * cluster.gpus_per_worker
    return RunStats(
        tiers={t.name: _tier_stats(t, waits[t.name], shed[t.name]) for t in tiers},
        cold_starts=cold_starts,
        gpu_utilisation=busy_gpu_s / (gpus * makespan),
        cold_start_gpu_share=cold_gpu_s / (gpus * makespan),
        makespan_s=makespan,
    )
