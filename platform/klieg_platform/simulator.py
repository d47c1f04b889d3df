"""Replay a request trace through a scheduling pick in virtual time (discrete events, no sleeps).

The trace and its format: ``traces``.

Cluster model, the same whatever the pick: each worker has ``gpus_per_worker`` GPUs; a runner of
an app holds ``num_gpus`` GPUs on one worker and stays warm (idle, still holding them) after a
request until it is evicted. A new runner pays its app's ``cold_start_s`` before the service
time. Queued jobs live in a ``backlog.Backlog`` (the indexed queues the live broker keeps in
Redis; tenant caps per tier, app caps per app). Whenever jobs arrive or finish, dispatch runs,
in one of two ways:

- ``simulate`` (one pick for the whole cluster, ``Backlog.pick``, or ``Backlog.pick_strict``
  with ``strict``): the loop picks a job and places it on an idle warm runner of its app if there
  is one (the most recently used; no cold start); else on the worker with the fewest free GPUs
  that still fit it; else on the worker of the least recently used idle runner whose worker can
  make room, after evicting that worker's idle runners, least recently used first. If the
  picked job fits nowhere, dispatch stops until something finishes (so a big job is not starved
  by small ones).
- ``simulate_per_worker`` (what the live workers do, ``Backlog.pick_for_worker``): every worker
  with available GPUs (free or held by idle runners, as a live worker counts its idle runners'
  slots free) asks, the fewest available first, and keeps asking while it gets jobs. It states
  its available GPUs as free units, ``gpus_per_worker`` as total units, the apps it holds idle
  as ``here``, the apps idle on other workers that are not draining as ``elsewhere`` and each
  app's ``cold_start_s`` as the measured cold start (the app is the function key). A job runs on
  the asker: on its most recently used idle runner of the app, else on a new runner, after
  evicting the asker's idle runners, least recently used first. ``Elsewhere`` makes the warm
  worker ask (the live broker wakes it), then the asker asks again; ``Blocked`` (the worker
  drains for its reservation) ends that worker's turn; a worker whose reservation another worker
  took asks again; a worker that drains asks again at the next arrival or completion, as a live
  one does when a slot frees. The backlog is told which apps have idle runners and each app's
  cold start and mean service time so far (W2b), as the live broker reads them from Redis.

Wait = dispatch time - arrival; ``gpu_utilisation`` = service GPU-seconds / (GPUs x makespan);
cold starts are not busy time, ``cold_start_gpu_share`` is their GPU-seconds over the same
denominator; ``window_utilisation`` counts only the service GPU-seconds between the first and the
last arrival, over GPUs x that span (a backlog that a capped app drains long after the last
arrival does not dilute it).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from klieg_platform.backlog import Backlog
from klieg_platform.scheduler import (
    Blocked,
    Elsewhere,
    Job,
    Tier,
    admit,
    max_reserved,
)
from klieg_platform.traces import AppSpec, Trace


@dataclass(frozen=True, slots=True)
class FleetView:
    """What an autoscaler reads of a replay at one of its ticks: the signals ``klieg
    autoscaler`` reads from Redis, and the workers there are now."""

    now: float
    workers: int
    """Workers up or booting (not those retiring)."""
    queued: Mapping[str, int]
    """Tier -> requests waiting (reserved ones included)."""
    oldest_wait_s: Mapping[str, float]
    """Tier -> the wait of its oldest request that can start (a candidate or a reservation;
    not one held back by a cap), as the live lane orders' heads give it."""
    lanes: tuple[tuple[str, str, int, int], ...]
    """(tier, app, GPUs per request, requests waiting) per lane of the index."""
    busy_gpus: int
    """GPUs running (or cold-starting for) requests."""
    idle: Mapping[str, int]
    """App -> its idle warm runners."""
    service_s: Mapping[str, float]
    """App -> the mean service time of its requests started so far."""
    cold_start_s: Mapping[str, float]
    room: Mapping[str, int] = field(default_factory=dict)
    """Capped app -> how many more of its requests its cap lets start now."""


@dataclass(frozen=True, slots=True)
class Scaling:
    """An autoscaler in the loop of ``simulate_per_worker``: every ``interval_s`` (from the
    first arrival) ``size`` reads the ``FleetView`` and answers how many workers there should be
    (at most the cluster's ``workers``, at least one while anything waits). A worker asked for
    serves ``boot_s`` later; one let go (a booting one first, then the newest up) stops taking
    work and leaves once its running requests end. ``initial``: workers up at the start."""

    size: Callable[[FleetView], int]
    interval_s: float = 15.0
    boot_s: float = 90.0
    initial: int = 0


class _Worker:
    """One worker of the replay and what it holds."""

    __slots__ = ("draining", "free", "id", "idle", "idle_apps", "idle_gpus", "name", "up")

    def __init__(self, id: int, free: int, name: str, up: bool = True) -> None:
        self.id = id
        self.free = free
        """GPUs that no runner holds."""
        self.name = name
        """``id`` as the backlog names the worker (its reservations)."""
        self.draining = False
        """It holds a reservation it cannot start yet: it asks only when its own GPUs free
        up."""
        self.up = up
        """It serves: booted and not retiring (``Scaling``); a worker that is not up takes
        nothing and keeps no idle runners."""
        self.idle: dict[int, _Runner] = {}
        """Idle runners, least recently used first."""
        self.idle_gpus = 0
        self.idle_apps: dict[str, int] = {}
        """App -> idle runners of it here (no zero counts), the ``here`` of
        ``pick_for_worker``."""


class _Runner:
    __slots__ = ("app", "gpus", "id", "worker")

    def __init__(self, id: int, app: str, gpus: int, worker: _Worker) -> None:
        self.id, self.app, self.gpus, self.worker = id, app, gpus, worker


class _Bucket:
    """A set of worker ids that keeps them in a list, so the first few are a slice away (a
    set that changes all the time grows sparse, and walking it to its first members is not
    cheap). Adding and removing are O(1): a removed id's place takes the last one."""

    __slots__ = ("at", "ids")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.at: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __contains__(self, wid: object) -> bool:
        return wid in self.at

    def add(self, wid: int) -> None:
        if wid not in self.at:
            self.at[wid] = len(self.ids)
            self.ids.append(wid)

    def discard(self, wid: int) -> None:
        i = self.at.pop(wid, -1)
        if i >= 0:
            last = self.ids.pop()
            if last != wid:
                self.ids[i] = last
                self.at[last] = i


class _Nodes:
    """Workers, their runners and the placement rules. Buckets index workers by free GPUs and by
    free-plus-idle GPUs, so a placement costs O(gpus_per_worker), not O(workers)."""

    def __init__(self, workers: int, gpus_per_worker: int, up: int | None = None) -> None:
        """``workers`` in all, the first ``up`` of them (default: all) serving."""
        self.size = gpus_per_worker
        up = workers if up is None else up
        self.workers = [_Worker(i, gpus_per_worker, str(i), up=i < up) for i in range(workers)]
        self.by_free: list[set[int]] = [set() for _ in range(gpus_per_worker + 1)]
        self.by_avail = [_Bucket() for _ in range(gpus_per_worker + 1)]
        """Workers that are up and do not drain, by free plus idle GPUs."""
        self.by_free[gpus_per_worker].update(range(up))
        for wid in range(up):
            self.by_avail[gpus_per_worker].add(wid)
        self.idle: dict[int, _Runner] = {}
        self.idle_by_app: dict[str, dict[int, _Runner]] = {}
        self.idle_count: dict[str, int] = {}
        """App -> idle runners of it on all workers (no zero counts)."""
        self.runners = 0
        self.on_idle: Callable[[str, bool], None] | None = None
        """Told when an app gets its first idle runner (True) or loses its last (False)."""

    def _rebucket(self, w: _Worker, old_free: int, old_avail: int) -> None:
        if not w.up:
            return
        if w.free != old_free:
            self.by_free[old_free].discard(w.id)
            self.by_free[w.free].add(w.id)
        avail = w.free + w.idle_gpus
        if avail != old_avail and not w.draining:
            self.by_avail[old_avail].discard(w.id)
            self.by_avail[avail].add(w.id)

    def drain(self, w: _Worker, draining: bool) -> None:
        """``w`` starts or stops draining for a reservation: it leaves or rejoins ``by_avail``."""
        if w.draining != draining:
            w.draining = draining
            avail = w.free + w.idle_gpus
            if not w.up:
                return
            if draining:
                self.by_avail[avail].discard(w.id)
            else:
                self.by_avail[avail].add(w.id)

    def bring_up(self, w: _Worker) -> None:
        """``w`` (booted, or retiring and kept after all) serves."""
        w.up = True
        self.by_free[w.free].add(w.id)
        if not w.draining:
            self.by_avail[w.free + w.idle_gpus].add(w.id)

    def retire(self, w: _Worker) -> bool:
        """``w`` stops serving: it leaves the buckets, its idle runners stop, its busy ones
        finish their requests (``release`` stops them then). Whether it is empty already."""
        self.by_free[w.free].discard(w.id)
        self.by_avail[w.free + w.idle_gpus].discard(w.id)
        w.up = False
        for runner in list(w.idle.values()):
            self._unidle(runner)
            w.free += runner.gpus
        return w.free == self.size

    def _fit(self, buckets: Sequence[Collection[int]], gpus: int) -> _Worker | None:
        for k in range(gpus, self.size + 1):
            if buckets[k]:
                return self.workers[min(buckets[k])]
        return None

    def _unidle(self, runner: _Runner) -> None:
        """Take ``runner`` out of the idle indexes (to run a job, or to be evicted)."""
        w = runner.worker
        del w.idle[runner.id]
        del self.idle[runner.id]
        del self.idle_by_app[runner.app][runner.id]
        w.idle_gpus -= runner.gpus
        for counts in (w.idle_apps, self.idle_count):
            if counts[runner.app] == 1:
                del counts[runner.app]
            else:
                counts[runner.app] -= 1
        if self.on_idle is not None and runner.app not in self.idle_count:
            self.on_idle(runner.app, False)

    def _new_runner(self, w: _Worker, app: AppSpec) -> _Runner:
        """Start a runner of ``app`` on ``w``, evicting its idle runners (least recently used
        first) until the GPUs are free. The caller checked that free + idle GPUs suffice."""
        while w.free < app.num_gpus:
            victim = next(iter(w.idle.values()))
            self._unidle(victim)
            w.free += victim.gpus
        w.free -= app.num_gpus
        self.runners += 1
        return _Runner(self.runners, app.name, app.num_gpus, w)

    def place(self, app: AppSpec) -> tuple[_Runner, bool] | None:
        """A runner for one job of ``app`` anywhere and whether it is a cold start; None: fits
        nowhere. The global placement of ``simulate`` (module docstring)."""
        warm = self.idle_by_app.get(app.name)
        if warm:
            runner = next(reversed(warm.values()))
            w = runner.worker
            old_free, old_avail = w.free, w.free + w.idle_gpus
            self._unidle(runner)
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
        runner = self._new_runner(w, app)
        self._rebucket(w, old_free, old_avail)
        return runner, True

    def place_on(self, w: _Worker, app: AppSpec) -> tuple[_Runner, bool]:
        """A runner for one job of ``app`` on ``w`` and whether it is a cold start: its most
        recently used idle runner of ``app``, else a new one (``simulate_per_worker``). The
        caller checked that ``w`` has an idle runner of ``app`` or enough free + idle GPUs."""
        old_free, old_avail = w.free, w.free + w.idle_gpus
        if app.name in w.idle_apps:
            runner = next(r for r in reversed(w.idle.values()) if r.app == app.name)
            self._unidle(runner)
            cold = False
        else:
            runner, cold = self._new_runner(w, app), True
        self._rebucket(w, old_free, old_avail)
        return runner, cold

    def release(self, runner: _Runner) -> None:
        """The runner finished its job: it stays on its worker, idle and warm (it stops if the
        worker retires)."""
        w = runner.worker
        if not w.up:
            w.free += runner.gpus
            return
        old_free, old_avail = w.free, w.free + w.idle_gpus
        w.idle[runner.id] = runner
        self.idle[runner.id] = runner
        w.idle_gpus += runner.gpus
        w.idle_apps[runner.app] = w.idle_apps.get(runner.app, 0) + 1
        count = self.idle_count[runner.app] = self.idle_count.get(runner.app, 0) + 1
        if count == 1 and self.on_idle is not None:
            self.on_idle(runner.app, True)
        of_app = self.idle_by_app.get(runner.app)
        if of_app is None:  # (not setdefault: its default would be made on every call)
            of_app = self.idle_by_app[runner.app] = {}
        of_app[runner.id] = runner
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
    window_utilisation: float = 0.0
    """Service GPU-seconds between the first and the last arrival over GPUs x that span."""
    gpu_hours: float = 0.0
    """GPU-hours of the workers there were (up, booting or retiring) over the makespan."""
    workers_mean: float = 0.0
    workers_peak: int = 0
    cold_start_gpu_s: Mapping[str, float] = field(default_factory=dict)
    """App -> the GPU-seconds its cold starts took (they sum to ``cold_start_gpu_share``'s
    numerator): which apps the cold starts went to."""

    def as_dict(self) -> dict[str, Any]:
        tiers = {
            name: {k: round(v, 4) for k, v in asdict(s).items()} for name, s in self.tiers.items()
        }
        return {
            "tiers": tiers,
            "cold_starts": self.cold_starts,
            "gpu_utilisation": round(self.gpu_utilisation, 4),
            "cold_start_gpu_share": round(self.cold_start_gpu_share, 4),
            "makespan_s": round(self.makespan_s, 1),
            "window_utilisation": round(self.window_utilisation, 4),
            "gpu_hours": round(self.gpu_hours, 1),
            "workers_mean": round(self.workers_mean, 1),
            "workers_peak": self.workers_peak,
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


class _IdleElsewhere:
    """``elsewhere`` of one asking worker, computed on demand: the functions with an idle runner
    on another worker that can take work (not one draining for a reservation)."""

    __slots__ = ("asker", "replay")

    def __init__(self, replay: _Replay, asker: _Worker) -> None:
        self.replay, self.asker = replay, asker

    def __contains__(self, fn: object) -> bool:
        return self.replay.idle_elsewhere(self.asker, str(fn)) is not None

    def __iter__(self) -> Iterator[str]:
        return iter([fn for fn in self.replay.nodes.idle_count if fn in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Fleet:
    """The workers a ``Scaling`` replay has: up (``_Nodes``), booting, retiring, spare; and the
    worker-seconds they add up to."""

    def __init__(self, nodes: _Nodes, scaling: Scaling | None, start: float) -> None:
        self.nodes, self.scaling = nodes, scaling
        total = len(nodes.workers)
        up = total if scaling is None else min(scaling.initial, total)
        self.up: list[int] = list(range(up))
        """Ids of the workers up, in the order they came up (the newest goes first)."""
        self.spare: list[int] = list(range(total - 1, up - 1, -1))
        self.booting: list[tuple[float, int]] = []
        self.cancelled: set[int] = set()
        self.retiring: set[int] = set()
        self.count = self.peak = up
        """Workers there are: up, booting (not cancelled) or retiring."""
        self.worker_s = 0.0
        self.at = start

    def account(self, now: float) -> None:
        self.worker_s += self.count * (now - self.at)
        self.at = now

    def _counted(self, change: int, now: float) -> None:
        self.account(now)
        self.count += change
        self.peak = max(self.peak, self.count)

    def next_boot(self) -> float:
        return self.booting[0][0] if self.booting else math.inf

    def boot(self, now: float) -> None:
        """The workers whose boot ends by ``now`` come up."""
        while self.booting and self.booting[0][0] <= now:
            _, wid = heapq.heappop(self.booting)
            if wid in self.cancelled:
                self.cancelled.discard(wid)
                continue
            self.nodes.bring_up(self.nodes.workers[wid])
            self.up.append(wid)

    def released(self, w: _Worker, now: float) -> None:
        """A runner of ``w`` ended its request: a retiring worker left empty is gone."""
        if not w.up and w.id in self.retiring and w.free == self.nodes.size:
            self.retiring.discard(w.id)
            self.spare.append(w.id)
            self._counted(-1, now)

    def resize(self, want: int, now: float, backlog: Backlog) -> None:
        """Up or down to ``want`` workers (up or booting): a retiring worker is kept first, then
        a spare one boots; going down, a booting one is cancelled first, then the newest up
        retires (its reservation ends)."""
        assert self.scaling is not None
        have = len(self.up) + len(self.booting) - len(self.cancelled)
        nodes = self.nodes
        while have < want and (self.retiring or self.spare):
            if self.retiring:
                wid = max(self.retiring)
                self.retiring.discard(wid)
                nodes.bring_up(nodes.workers[wid])
                self.up.append(wid)
            else:
                wid = self.spare.pop()
                heapq.heappush(self.booting, (now + self.scaling.boot_s, wid))
                self._counted(1, now)
            have += 1
        while have > want:
            live = [b for b in self.booting if b[1] not in self.cancelled]
            if live:
                wid = max(live)[1]
                self.cancelled.add(wid)
                self.spare.append(wid)
                self._counted(-1, now)
            else:
                w = nodes.workers[self.up.pop()]
                backlog.release(w.name)
                nodes.drain(w, False)
                if nodes.retire(w):
                    self.spare.append(w.id)
                    self._counted(-1, now)
                else:
                    self.retiring.add(w.id)
            have -= 1


class _Replay:
    """The state of one replay: the backlog, runners, waits. ``run`` drives the events; the
    dispatch step is ``dispatch_global`` (``simulate``) or ``dispatch_workers``
    (``simulate_per_worker``)."""

    def __init__(self, trace: Trace, scaling: Scaling | None = None) -> None:
        cluster = trace.cluster
        self.trace = trace
        self.tiers = cluster.tiers
        self.apps = cluster.apps
        up = None if scaling is None else min(scaling.initial, cluster.workers)
        self.nodes = _Nodes(cluster.workers, cluster.gpus_per_worker, up)
        caps = cluster.tenant_caps
        self.backlog = Backlog(
            self.tiers,
            tenant_caps={r.tenant: caps[r.tier] for r in trace.requests if r.tier in caps},
            app_caps={
                a.name: a.max_inflight for a in self.apps.values() if a.max_inflight is not None
            },
        )
        self.waits: dict[str, list[float]] = {t.name: [] for t in self.tiers}
        self.shed = {t.name: 0 for t in self.tiers}
        self.cold_start_s = {a.name: a.cold_start_s for a in self.apps.values()}
        self.ends: list[float] = []
        """When running jobs end, a heap (of plain floats: cheaper to order than tuples)."""
        self.ending: dict[float, list[tuple[_Runner, Job]]] = {}
        """End time -> the runners and jobs that end then, in the order they started."""
        self.service = [r.service_s for r in trace.requests]
        self.cold_starts = 0
        self.busy_gpu_s = self.window_busy_gpu_s = 0.0
        self.cold_gpu_s: dict[str, float] = {}
        """App -> the GPU-seconds its cold starts took."""
        reqs = trace.requests
        self.window = (reqs[0].t, reqs[-1].t) if reqs else (0.0, 0.0)
        self.fleet = _Fleet(self.nodes, scaling, self.window[0])
        self.max_reserved = max_reserved(len(self.fleet.up) or 1)
        self.busy_gpus = 0
        self.timed = False
        """The backlog is told each app's idle runners and timings (W2b): per-worker replays."""
        self.service_sum: dict[str, list[float]] = {}
        """App -> [requests started, their service seconds] (the autoscaler's measured means)."""
        self.touched: set[int] = set()
        """The ids of the workers whose runners finished since the last dispatch."""
        self.floor = 1
        """In one dispatch: the fewest available GPUs with which a worker can take anything."""
        self.due: list[_Worker] = []
        """Workers whose reservation another worker took: they ask again in this dispatch."""

    def run(
        self,
        dispatch: Callable[[float], None],
        progress: Callable[[float], None] | None,
        check: Callable[[_Replay, float], None] | None = None,
    ) -> RunStats:
        """Replay every arrival and completion, calling ``dispatch(now)`` after each instant
        (and ``check(self, now)`` after it, when given). The cyclic garbage collector is off
        meanwhile: a replay makes millions of objects that reference counting frees (no cycles
        are left to collect), and the collector's passes over them took a seventh of the time."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(dispatch, progress, check)
        finally:
            if collecting:
                gc.enable()

    def _run(
        self,
        dispatch: Callable[[float], None],
        progress: Callable[[float], None] | None,
        check: Callable[[_Replay, float], None] | None,
    ) -> RunStats:
        reqs = self.trace.requests
        apps, backlog, ends, tiers = self.apps, self.backlog, self.ends, self.tiers
        fleet, scaling = self.fleet, self.fleet.scaling
        i = 0
        start = reqs[0].t if reqs else 0.0
        now = report_at = start
        tick = start if scaling is not None else math.inf
        while i < len(reqs) or ends or (scaling is not None and len(backlog)):
            now = min(
                reqs[i].t if i < len(reqs) else math.inf,
                ends[0] if ends else math.inf,
                tick,
                fleet.next_boot(),
            )
            while ends and ends[0] <= now:
                for runner, done in self.ending.pop(heapq.heappop(ends)):
                    self.nodes.release(runner)
                    self.touched.add(runner.worker.id)
                    self.busy_gpus -= runner.gpus
                    backlog.finish(done)
                    fleet.released(runner.worker, now)
            fleet.boot(now)
            while i < len(reqs) and reqs[i].t <= now:
                r = reqs[i]
                if admit(r.tier, backlog.queued_in(r.tier), tiers):
                    job = Job(str(i), r.tier, r.tenant, r.app, r.t, apps[r.app].num_gpus)
                    backlog.add(job)
                else:
                    self.shed[r.tier] += 1
                i += 1
            if scaling is not None and now >= tick:
                want = min(scaling.size(self.view(now)), len(self.nodes.workers))
                fleet.resize(max(want, 1 if len(backlog) else 0), now, backlog)
                self.max_reserved = max_reserved(len(fleet.up) or 1)
                tick += scaling.interval_s
            dispatch(now)
            if check is not None:
                check(self, now)
            if progress is not None and now >= report_at + 1800.0:
                report_at = now
                progress(now)
        cluster = self.trace.cluster
        makespan = max(now - start, 1e-9)
        gpus = cluster.workers * cluster.gpus_per_worker
        fleet.account(now)
        gpu_s = max(fleet.worker_s * cluster.gpus_per_worker, 1e-9)
        waits, shed = self.waits, self.shed
        span = self.window[1] - self.window[0]
        return RunStats(
            tiers={t.name: _tier_stats(t, waits[t.name], shed[t.name]) for t in self.tiers},
            cold_starts=self.cold_starts,
            gpu_utilisation=self.busy_gpu_s / gpu_s,
            cold_start_gpu_share=sum(self.cold_gpu_s.values()) / gpu_s,
            makespan_s=makespan,
            window_utilisation=self.window_busy_gpu_s / (gpus * span) if span > 0 else 0.0,
            gpu_hours=gpu_s / 3600.0,
            workers_mean=fleet.worker_s / makespan,
            workers_peak=fleet.peak,
            cold_start_gpu_s=dict(self.cold_gpu_s),
        )

    def view(self, now: float) -> FleetView:
        """The ``FleetView`` of this replay at ``now``."""
        backlog = self.backlog
        oldest = {}
        for tier in self.tiers:
            head = backlog.oldest_startable(tier.name)
            if head is not None:
                oldest[tier.name] = now - head.enqueued_at
        fleet = self.fleet
        return FleetView(
            now=now,
            workers=len(fleet.up) + len(fleet.booting) - len(fleet.cancelled),
            queued={t.name: backlog.queued_in(t.name) for t in self.tiers},
            oldest_wait_s=oldest,
            lanes=tuple(backlog.lane_depths()),
            busy_gpus=self.busy_gpus,
            idle=dict(self.nodes.idle_count),
            service_s={app: total / n for app, (n, total) in self.service_sum.items()},
            cold_start_s=self.cold_start_s,
            room=backlog.room(),
        )

    def start(self, job: Job, runner: _Runner, cold: bool, now: float) -> None:
        """``job`` leaves the backlog and runs on ``runner`` (after a cold start if ``cold``).
        A worker that held it reserved and no longer drains is due to ask again."""
        holder = self.backlog.start(job)
        if holder is not None and holder != runner.worker.name:
            w = self.nodes.workers[int(holder)]
            self.nodes.drain(w, False)
            self.due.append(w)
        self.waits[job.tier].append(now - job.enqueued_at)
        app = self.apps[job.app]
        run_s = self.service[int(job.id)]
        self.busy_gpu_s += run_s * app.num_gpus
        self.busy_gpus += runner.gpus
        measured = self.service_sum.get(job.app)
        if measured is None:
            measured = self.service_sum[job.app] = [0.0, 0.0]
        measured[0] += 1
        measured[1] += run_s
        if self.timed:  # W2b weighs the app's cold start against its measured service time
            self.backlog.set_timing(job.app, app.cold_start_s, measured[1] / measured[0])
        cold_s = 0.0
        if cold:
            cold_s = app.cold_start_s
            self.cold_starts += 1
            by_app = self.cold_gpu_s
            by_app[job.app] = by_app.get(job.app, 0.0) + cold_s * app.num_gpus
        begin, end = now + cold_s, now + cold_s + run_s
        lo, hi = self.window
        overlap = min(end, hi) - max(begin, lo)
        if overlap > 0:
            self.window_busy_gpu_s += overlap * app.num_gpus
        at = self.ending.get(end)
        if at is None:
            self.ending[end] = at = []
            heapq.heappush(self.ends, end)
        at.append((runner, job))

    def dispatch_global(self, strict: bool, now: float) -> None:
        """Pick (``Backlog.pick`` or ``pick_strict``) and place anywhere (``_Nodes.place``) until
        nothing is picked or the pick fits nowhere."""
        backlog = self.backlog
        choose = backlog.pick_strict if strict else backlog.pick
        while len(backlog):
            job = choose(now)
            if job is None:
                return
            placed = self.nodes.place(self.apps[job.app])
            if placed is None:
                return
            self.start(job, *placed, now)

    def idle_elsewhere(self, asker: _Worker, fn: str) -> _Worker | None:
        """A worker other than ``asker``, not draining, with an idle runner of ``fn`` (the one
        of the most recently used such runner); None if there is none."""
        nodes = self.nodes
        if nodes.idle_count.get(fn, 0) <= asker.idle_apps.get(fn, 0):
            return None
        for runner in reversed(nodes.idle_by_app[fn].values()):
            w = runner.worker
            if w is not asker and not w.draining:
                return w
        return None

    def ask(self, w: _Worker, now: float) -> Job | Blocked | Elsewhere | None:
        """``w`` asks ``Backlog.pick_for_worker`` once and runs what it gets."""
        got = self.backlog.pick_for_worker(
            now,
            worker=w.name,
            free_units=w.free + w.idle_gpus,
            total_units=self.nodes.size,
            here=w.idle_apps,
            elsewhere=_IdleElsewhere(self, w),
            cold_start_s=self.cold_start_s,
            max_reserved=self.max_reserved,
        )
        if isinstance(got, Job):
            self.start(got, *self.nodes.place_on(w, self.apps[got.app]), now)
        self.nodes.drain(w, w.name in self.backlog.reserved)
        return got

    def dispatch_workers(self, now: float) -> None:
        """Workers with available GPUs ask, the fewest available first, each until it takes
        nothing; a worker told ``Elsewhere`` lets the warm worker ask, then asks again; a worker
        whose reservation another took asks again. Stops when nothing is a candidate for anyone
        (workers without room for a reservation are not asked once only reservations wait), or
        when all have asked."""
        nodes, backlog = self.nodes, self.backlog
        touched, self.touched = self.touched, set()
        backlog.advance(now)
        if not self._start_floor():
            return
        for wid in touched:  # a slot freed: the reservation may fit now
            w = nodes.workers[wid]
            if w.draining and len(backlog):
                self.serve(w, now)
        for k in range(1, nodes.size + 1):
            if not len(backlog):
                break
            if k < self.floor or not nodes.by_avail[k]:
                continue
            if not self._serve_bucket(k, now):
                break
        while self.due:
            w = self.due.pop()
            if len(backlog):
                self.serve(w, now)

    def _serve_bucket(self, k: int, now: float) -> bool:
        """The workers with ``k`` available GPUs that do not drain ask in turn (a few first: a
        dispatch seldom goes further; the rest only if it does); False when no worker could take
        anything now."""
        bucket, workers = self.nodes.by_avail[k].ids, self.nodes.workers
        first = bucket[:8]
        for batch in (first, None):
            if batch is None:
                seen = set(first)
                batch = [wid for wid in bucket if wid not in seen]
            for wid in batch:
                if workers[wid].draining:
                    continue
                if not self.serve(workers[wid], now):
                    return False
                if k < self.floor or not len(self.backlog):
                    return True
        return True

    def _start_floor(self) -> bool:
        """At the start of a dispatch: whether any worker could take anything, and ``floor``,
        the fewest available GPUs with which one can. While workers may still reserve, 1 (an
        ask finds out what there is); once no more may drain, the smallest candidate or
        reservation (a worker then only backfills or takes a reservation that fits)."""
        backlog = self.backlog
        self.floor = 1
        if not len(backlog):
            return False
        if len(backlog.reserved) < self.max_reserved:
            return True
        smallest, reserved = backlog.smallest_candidate(), backlog.smallest_reserved()
        self.floor = min(smallest or reserved, reserved or smallest)
        return self.floor > 0

    def serve(self, w: _Worker, now: float) -> bool:
        """``w`` asks until it takes nothing; False when no worker could take anything now."""
        backlog = self.backlog
        held = backlog.reserved.get(w.name)
        if held is not None and held.units > w.free + w.idle_gpus and backlog.under_cap(held):
            return True  # it drains: it would be told Blocked again
        while len(backlog) and w.free + w.idle_gpus >= self.floor:
            got = self.ask(w, now)
            if got is None:
                if not backlog.reserved:
                    return False  # nothing is a candidate, for any worker
                # Nothing fits this worker: only one with more room can take anything now
                # (a reservation, or a backfill among bigger candidates); while workers may
                # still reserve, nothing is a candidate at all: only a reservation is left.
                self.floor = max(self.floor, w.free + w.idle_gpus + 1)
                if len(backlog.reserved) < self.max_reserved:
                    self.floor = max(self.floor, backlog.smallest_reserved())
                return True
            if isinstance(got, Blocked):
                return True
            if isinstance(got, Elsewhere):
                fn = got.job.function_key if got.job is not None else ""
                warm = self.idle_elsewhere(w, fn)
                if warm is None or not isinstance(self.ask(warm, now), Job):
                    return True
        return True


def simulate(
    trace: Trace,
    strict: bool = False,
    progress: Callable[[float], None] | None = None,
    check: Callable[[_Replay, float], None] | None = None,
) -> RunStats:
    """Replay ``trace`` with one pick for the whole cluster (``Backlog.pick``, or
    ``Backlog.pick_strict`` when ``strict``) and the global placement; every request runs to the
    end. ``progress`` (if given) is called with the virtual time after each virtual half hour;
    ``check`` (if given) after every dispatch step, with the replay's state.
    """
    replay = _Replay(trace)
    return replay.run(lambda now: replay.dispatch_global(strict, now), progress, check)


def simulate_per_worker(
    trace: Trace,
    progress: Callable[[float], None] | None = None,
    check: Callable[[_Replay, float], None] | None = None,
    scaling: Scaling | None = None,
) -> RunStats:
    """Replay ``trace`` the way the live workers dispatch: each worker asks
    ``Backlog.pick_for_worker`` (warm affinity, reservations and draining) and runs what it gets
    itself. Every request runs to the end; ``progress`` and ``check`` as for ``simulate``.
    With ``scaling``, an autoscaler sizes the fleet as the replay goes (``Scaling``), up to the
    cluster's ``workers``; without, all of them serve throughout.
    """
    replay = _Replay(trace, scaling)
    replay.timed = True
    replay.nodes.on_idle = replay.backlog.set_idle
    return replay.run(lambda now: replay.dispatch_workers(now), progress, check)
