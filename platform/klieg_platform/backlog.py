"""The indexed form of the policy: queued jobs held as the live broker holds them in Redis.

``scheduler`` states the rules once, literally, over plain FIFO queues (the reference). A
``Backlog`` answers the same picks over an index, in time bounded by the number of tiers and of
the functions a worker skips, not by the queue (``scheduler``'s module docstring, "Two forms"):
per tier, the *lanes* (jobs of one function and size) ordered by their oldest eligible job; per
lane, the tenants ordered by their oldest job; per tenant and lane, a FIFO (a *flow*, its normal
jobs before its low-priority ones). A tenant at its cap leaves its lanes' tenant orders, an app
at its cap leaves the tier orders, and both come back when they fall under cap. The simulator
replays traces through it, and property tests hold it equal to the reference and to the Lua of
the live broker.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence

from klieg_platform.scheduler import (
    _NO_COUNTS,
    _NO_TIMES,
    ANY_UNITS,
    DEFAULT_TIERS,
    Blocked,
    Elsewhere,
    Hinted,
    Job,
    Tier,
    _best,
    _for_worker,
    _held,
    _hinted_away,
)

Lane = tuple[str, int]
"""Jobs of one function key that take the same units."""
_Key = int
"""A queued job's place in FIFO order: its arrival sequence in the backlog."""


class _LaneIndex:
    """One lane of one tier: its tenants by their oldest job, how many jobs it holds, and the
    key of its one live entry in the tier's order (None: it has none)."""

    __slots__ = ("jobs", "pushed", "tenants")

    def __init__(self) -> None:
        self.tenants: list[tuple[_Key, str]] = []
        self.jobs = 0
        self.pushed: _Key | None = None


class _Flow:
    """The jobs of one tenant in one lane of one tier: its normal jobs FIFO (``jobs``), its low
    ones FIFO (``low``, made when the first low job comes: most flows never hold one), and the
    key of its one live entry in the lane's tenant order (None: it has none). Its head, the job
    it offers, is ``jobs[0]``, else ``low[0]``."""

    __slots__ = ("_low", "jobs", "pushed")

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        self._low: deque[Job] | None = None
        self.pushed: _Key | None = None

    @property
    def low(self) -> deque[Job]:
        if self._low is None:
            self._low = deque()
        return self._low

    def queue(self, low: bool) -> deque[Job]:
        """Its normal jobs, or (``low``) its low ones."""
        return self.low if low else self.jobs

    def empty(self) -> bool:
        return not self.jobs and not self._low

    def head(self) -> Job:
        """The first normal job, else the first low one (the flow holds a job)."""
        return self.jobs[0] if self.jobs else self.low[0]


class Backlog:
    """Queued jobs indexed by tier, lane and tenant, with the in-flight counts and the
    reservations: the state the live broker keeps in Redis (module docstring, "Two forms").

    ``add`` queues a job; ``start`` takes a picked job (a candidate or a reservation) out of the
    queue and counts it in flight; ``finish`` ends it. The picks answer what the reference
    functions of the same name answer for the same queues, counts and reservations, and
    ``pick_for_worker`` keeps the reservations itself (W0, W3).
    """

    def __init__(
        self,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        *,
        tenant_caps: Mapping[str, int] = _NO_COUNTS,
        app_caps: Mapping[str, int] = _NO_COUNTS,
    ) -> None:
        self.tiers = tuple(sorted(tiers, key=lambda t: t.rank))
        self._ranked = len({t.rank for t in self.tiers}) == len(self.tiers)
        """Every tier has a rank of its own: one candidate per tier, in tier order, is sorted."""
        self._tier = {t.name: t for t in self.tiers}
        self.tenant_caps = dict(tenant_caps)
        self.app_caps = dict(app_caps)
        self.inflight_by_tenant: dict[str, int] = {}
        self.inflight_by_app: dict[str, int] = {}
        self.reserved: dict[str, Job] = {}
        """Worker -> the job it drains for (still queued, not a candidate)."""
        self._reserved_units: dict[int, dict[str, Job]] = {}
        """Units -> worker -> its reserved job, of those that take that many units."""
        self._holders: dict[str, str] = {}
        """Reserved job id -> the worker that holds it."""
        self._queued = dict.fromkeys(self._tier, 0)
        self._total = 0
        self._seq = 0
        self._key: dict[str, _Key] = {}
        self._flows: dict[tuple[str, Lane, str], _Flow] = {}
        self._lanes: dict[tuple[str, Lane], _LaneIndex] = {}
        self._heads: dict[str, dict[int, list[tuple[_Key, Lane]]]] = {n: {} for n in self._tier}
        """Tier -> units -> its lanes of that many units, by their oldest eligible job."""
        self._heads_of: dict[tuple[str, Lane], Job | None] = {}
        """(tier, lane) -> ``_lane_head``, while it holds (dropped by ``_stale``)."""
        self._tops: dict[tuple[str, int], Job | None] = {}
        """(tier, units) -> ``_top`` of that order with nothing full, while it holds: dropped
        (``_stale``) when a job of that tier and size enters or leaves the index, or a tenant or
        app with jobs there reaches its cap or falls under it."""
        self._firsts: dict[str, dict[int, Job | None]] = {n: {} for n in self._tier}
        """Tier -> max units -> ``_first`` with nothing full, while every ``_tops`` entry of
        the tier holds."""
        self._smallest: dict[str, int] = {}
        """Tier -> the fewest units of its candidates (0: none), while its ``_tops`` hold."""
        self._fn_heads: dict[tuple[str, str], list[tuple[int, Job]]] = {}
        """(tier, function key) -> (units, head) of its lanes whose app is under cap and that
        have a head, while they hold (dropped by ``_stale``)."""
        self._fn_lanes: dict[tuple[str, str], set[Lane]] = {}
        self._tenant_lanes: dict[str, set[tuple[str, Lane]]] = {}
        self._app_lanes: dict[str, set[tuple[str, Lane]]] = {}
        self._lane_app: dict[Lane, str] = {}

    # -- counts ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Jobs queued, reserved ones included."""
        return self._total

    def queued_in(self, tier: str) -> int:
        """Jobs queued in ``tier`` (for ``admit``)."""
        return self._queued[tier]

    def _tenant_open(self, tenant: str) -> bool:
        cap = self.tenant_caps.get(tenant)
        return cap is None or self.inflight_by_tenant.get(tenant, 0) < cap

    def _app_open(self, app: str) -> bool:
        cap = self.app_caps.get(app)
        return cap is None or self.inflight_by_app.get(app, 0) < cap

    def under_cap(self, job: Job) -> bool:
        """Whether ``job``'s tenant and app are both under their in-flight caps."""
        return self._tenant_open(job.tenant) and self._app_open(job.app)

    # -- changes ---------------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Queue ``job``, FIFO: after every job added before it (as ``queues`` lists them)."""
        tier = self._tier.get(job.tier)
        if tier is None:
            raise ValueError(f"jobs queued in unknown tier {job.tier!r}")
        self._seq += 1
        key = self._seq
        self._key[job.id] = key
        self._queued[job.tier] += 1
        self._total += 1
        self._index(job, key)

    def _stale(self, tier: str, lane: Lane) -> None:
        """The head of ``lane`` in ``tier`` may have changed, and so the tier's candidate among
        jobs of that size."""
        self._heads_of.pop((tier, lane), None)
        self._fn_heads.pop((tier, lane[0]), None)
        self._tops.pop((tier, lane[1]), None)
        self._firsts[tier].clear()
        self._smallest.pop(tier, None)

    def _stale_lanes(self, lanes: Iterable[tuple[str, Lane]]) -> None:
        """A tenant or app with jobs in ``lanes`` reached its cap or fell under it."""
        for tier, lane in lanes:
            self._stale(tier, lane)

    def _index(self, job: Job, key: _Key) -> None:
        lane: Lane = (job.function_key, job.units)
        self._stale(job.tier, lane)
        flow_key = (job.tier, lane, job.tenant)
        flow = self._flows.get(flow_key)
        if flow is None:
            self._flows[flow_key] = flow = _Flow()
        jobs = flow.queue(job.low)
        if jobs and self._key[jobs[-1].id] > key:  # a reservation coming back: keep FIFO
            items = sorted([*jobs, job], key=lambda j: self._key[j.id])
            jobs.clear()
            jobs.extend(items)
        else:
            jobs.append(job)
        at = (job.tier, lane)
        index = self._lanes.get(at)
        if index is None:
            self._lanes[at] = index = _LaneIndex()
            self._fn_lanes.setdefault((job.tier, job.function_key), set()).add(lane)
            self._app_lanes.setdefault(job.app, set()).add(at)
            self._lane_app[lane] = job.app
        index.jobs += 1
        # ``job`` heads its flow: a new flow, a reservation coming back, or a normal job ahead
        # of low ones (the low head's older entries are refreshed when next looked at)
        if flow.head() is job:
            self._tenant_lanes.setdefault(job.tenant, set()).add(at)
            self._push_flow(index, flow, job.tenant, key)
            self._push_lane(job.tier, lane, index, key)

    def _push_flow(self, index: _LaneIndex, flow: _Flow, tenant: str, key: _Key) -> None:
        """Make sure the lane's tenant order holds the flow at ``key`` or older."""
        if flow.pushed is None or key < flow.pushed:
            heapq.heappush(index.tenants, (key, tenant))
            flow.pushed = key

    def _push_lane(self, tier: str, lane: Lane, index: _LaneIndex, key: _Key) -> None:
        """Make sure the tier's order holds the lane at ``key`` or older."""
        if index.pushed is None or key < index.pushed:
            heapq.heappush(self._heads[tier].setdefault(lane[1], []), (key, lane))
            index.pushed = key

    def _unindex(self, job: Job) -> None:
        """Take ``job``, the head of its flow, out of the index (the heap entries it leaves
        behind are dropped or refreshed when next looked at; a new head older than them, a low
        job behind the normal one taken, gets entries of its own)."""
        lane: Lane = (job.function_key, job.units)
        self._stale(job.tier, lane)
        flow_key = (job.tier, lane, job.tenant)
        flow = self._flows[flow_key]
        jobs = flow.queue(job.low)
        if jobs[0] is job:
            jobs.popleft()
        else:
            jobs.remove(job)
        at = (job.tier, lane)
        index = self._lanes[at]
        if flow.empty():
            del self._flows[flow_key]
            lanes = self._tenant_lanes[job.tenant]
            lanes.discard(at)
            if not lanes:
                del self._tenant_lanes[job.tenant]
        elif flow.pushed is not None and not job.low:
            key = self._key[flow.head().id]
            if key < flow.pushed:
                self._push_flow(index, flow, job.tenant, key)
                self._push_lane(job.tier, lane, index, key)
        index.jobs -= 1
        if not index.jobs:
            del self._lanes[at]
            fns = self._fn_lanes[(job.tier, job.function_key)]
            fns.discard(lane)
            if not fns:
                del self._fn_lanes[(job.tier, job.function_key)]
            apps = self._app_lanes[job.app]
            apps.discard(at)
            if not apps:
                del self._app_lanes[job.app]

    def start(self, job: Job) -> str | None:
        """``job`` (returned by a pick) leaves the queue and runs: it counts in flight. Returns
        the worker that held it reserved, if one did."""
        holder = self._holders.get(job.id)
        if holder is None:
            self._unindex(job)
        else:
            del self.reserved[holder]
            self._count_reserved(holder, job, False)
        del self._key[job.id]
        self._queued[job.tier] -= 1
        self._total -= 1
        self.inflight_by_tenant[job.tenant] = self.inflight_by_tenant.get(job.tenant, 0) + 1
        self.inflight_by_app[job.app] = self.inflight_by_app.get(job.app, 0) + 1
        if not self._tenant_open(job.tenant):
            self._stale_lanes(self._tenant_lanes.get(job.tenant, ()))
        if not self._app_open(job.app):
            self._stale_lanes(self._app_lanes.get(job.app, ()))
        return holder

    def finish(self, job: Job) -> None:
        """``job`` stopped running: its tenant and app may fall under cap again."""
        tenant_was = self._tenant_open(job.tenant)
        app_was = self._app_open(job.app)
        self.inflight_by_tenant[job.tenant] -= 1
        self.inflight_by_app[job.app] -= 1
        if not tenant_was and self._tenant_open(job.tenant):
            self._stale_lanes(self._tenant_lanes.get(job.tenant, ()))
            for tier, lane in self._tenant_lanes.get(job.tenant, ()):
                flow = self._flows[(tier, lane, job.tenant)]
                key = self._key[flow.head().id]
                index = self._lanes[(tier, lane)]
                self._push_flow(index, flow, job.tenant, key)
                self._push_lane(tier, lane, index, key)
        if not app_was and self._app_open(job.app):
            self._stale_lanes(self._app_lanes.get(job.app, ()))
            for tier, lane in self._app_lanes.get(job.app, ()):
                head = self._lane_head(tier, lane)
                if head is not None:
                    self._push_lane(tier, lane, self._lanes[(tier, lane)], self._key[head.id])

    def holds(self, job_id: str) -> bool:
        """Whether the job of ``job_id`` is queued here (reserved or not)."""
        return job_id in self._key

    def lane_depths(self) -> list[tuple[str, str, int, int]]:
        """(tier, function key, units, jobs) of every lane of the index (reserved jobs have
        left it), as the live lane index counts them."""
        return [(tier, fn, units, index.jobs) for (tier, (fn, units)), index in self._lanes.items()]

    def release(self, worker: str) -> None:
        """``worker`` no longer drains (it stops, say): the job it held reserved, if any, goes
        back to its queue at its place."""
        self._release(worker)

    def smallest_reserved(self) -> int:
        """The fewest units a reserved job takes (0: nothing is reserved)."""
        return min(self._reserved_units) if self._reserved_units else 0

    def unreserved(self) -> int:
        """Jobs queued and not reserved: those a pick can find as candidates."""
        return self._total - len(self.reserved)

    def _count_reserved(self, worker: str, job: Job, add: bool) -> None:
        by_units = self._reserved_units
        if add:
            by_units.setdefault(job.units, {})[worker] = job
            self._holders[job.id] = worker
        else:
            del self._holders[job.id]
            del by_units[job.units][worker]
            if not by_units[job.units]:
                del by_units[job.units]

    def _reserve(self, worker: str, job: Job) -> None:
        self._release(worker)
        self._unindex(job)
        self.reserved[worker] = job
        self._count_reserved(worker, job, True)

    def _release(self, worker: str) -> None:
        held = self.reserved.pop(worker, None)
        if held is not None:
            self._count_reserved(worker, held, False)
            self._index(held, self._key[held.id])

    # -- lookups ---------------------------------------------------------------------------------

    def _lane_head(self, tier: str, lane: Lane) -> Job | None:
        """The oldest job of the lane whose tenant is under cap (cached until ``_stale``)."""
        cached = self._heads_of
        if (tier, lane) in cached:
            return cached[(tier, lane)]
        head = cached[(tier, lane)] = self._find_lane_head(tier, lane)
        return head

    def _find_lane_head(self, tier: str, lane: Lane) -> Job | None:
        """``_lane_head``, worked out: a capped tenant's entry is dropped (``finish`` pushes it
        back), a stale one refreshed, a dead duplicate dropped."""
        index = self._lanes.get((tier, lane))
        if index is None:
            return None
        heap, flows, keys = index.tenants, self._flows, self._key
        while heap:
            key, tenant = heap[0]
            flow = flows.get((tier, lane, tenant))
            if flow is None or flow.pushed != key:
                heapq.heappop(heap)
                continue
            jobs = flow.jobs
            head = jobs[0] if jobs else flow.low[0]
            head_key = keys[head.id]
            if head_key != key:
                heapq.heapreplace(heap, (head_key, tenant))
                flow.pushed = head_key
            elif not self._tenant_open(tenant):
                heapq.heappop(heap)
                flow.pushed = None
            else:
                return head
        return None

    def _first(self, tier: str, max_units: int, full: Collection[str]) -> Job | None:
        """The oldest lane head of ``tier`` under cap that fits ``max_units`` and whose function
        is not in ``full``: the oldest of the heads of each lane size that fits."""
        if not full:
            firsts = self._firsts[tier]
            if max_units in firsts:
                return firsts[max_units]
        found: Job | None = None
        found_key = 0
        for units, heap in self._heads[tier].items():
            if units > max_units or not heap:
                continue
            head = self._top(tier, heap, full) if full else self._top_of(tier, units, heap)
            if head is not None and (found is None or self._key[head.id] < found_key):
                found, found_key = head, self._key[head.id]
        if not full:
            firsts[max_units] = found
        return found

    def _top_of(self, tier: str, units: int, heap: list[tuple[_Key, Lane]]) -> Job | None:
        """``_top`` of ``tier``'s order of ``units``-unit lanes (``heap``), with nothing full;
        cached in ``_tops``."""
        tops = self._tops
        if (tier, units) in tops:
            return tops[(tier, units)]
        head = tops[(tier, units)] = self._top(tier, heap, ())
        return head

    def _top(self, tier: str, heap: list[tuple[_Key, Lane]], full: Collection[str]) -> Job | None:
        """The oldest lane head under cap in ``heap`` whose function is not in ``full``. Lanes
        skipped for ``full`` go back into the order afterwards."""
        lanes, keys = self._lanes, self._key
        skipped: list[tuple[_Key, Lane]] = []
        found: Job | None = None
        while heap:
            key, lane = heap[0]
            index = lanes.get((tier, lane))
            if index is None or index.pushed != key:
                heapq.heappop(heap)
                continue
            if not self._app_open(self._lane_app[lane]):
                heapq.heappop(heap)
                index.pushed = None
                continue
            head = self._lane_head(tier, lane)
            if head is None:
                heapq.heappop(heap)
                index.pushed = None
                continue
            head_key = keys[head.id]
            if head_key != key:
                heapq.heapreplace(heap, (head_key, lane))
                index.pushed = head_key
                continue
            if full and lane[0] in full:
                skipped.append(heapq.heappop(heap))
                continue
            found = head
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    def smallest_candidate(self) -> int:
        """The fewest units a candidate (rule 2: queued, not reserved, under caps) takes; 0:
        there is none. Cached until the index or the caps change."""
        smallest = 0
        cached = self._smallest
        for tier in self._tier:
            if tier in cached:
                least = cached[tier]
            else:
                least = 0
                for units, heap in self._heads[tier].items():
                    if (
                        (not least or units < least)
                        and heap
                        and self._top_of(tier, units, heap) is not None
                    ):
                        least = units
                cached[tier] = least
            if least and (not smallest or least < smallest):
                smallest = least
        return smallest

    def candidates(
        self, max_units: int = ANY_UNITS, full: Collection[str] = ()
    ) -> list[tuple[Tier, Job]]:
        """Rule 2: per tier its candidate, sorted by (rank, enqueued_at)."""
        found = []
        for tier in self.tiers:
            job = self._first(tier.name, max_units, full)
            if job is not None:
                found.append((tier, job))
        if not self._ranked:  # else ``found`` is in rank order already
            found.sort(key=lambda c: (c[0].rank, c[1].enqueued_at))
        return found

    def warm_candidates(
        self, here: Collection[str], max_units: int = ANY_UNITS, full: Collection[str] = ()
    ) -> list[tuple[Tier, Job]]:
        """W4's candidates: per tier the oldest job under cap whose function is in ``here``."""
        found = []
        keys, cached = self._key, self._fn_heads
        for tier in self.tiers:
            if not self._queued[tier.name]:
                continue
            best: Job | None = None
            best_key = 0
            for fn in here:
                heads = cached.get((tier.name, fn))
                if heads is None:
                    heads = cached[(tier.name, fn)] = self._heads_of_fn(tier.name, fn)
                if not heads or fn in full:
                    continue
                for units, head in heads:
                    if units <= max_units and (best is None or keys[head.id] < best_key):
                        best, best_key = head, keys[head.id]
            if best is not None:
                found.append((tier, best))
        if not self._ranked:  # else ``found`` is in rank order already
            found.sort(key=lambda c: (c[0].rank, c[1].enqueued_at))
        return found

    def _heads_of_fn(self, tier: str, fn: str) -> list[tuple[int, Job]]:
        """(units, head) of the lanes of ``fn`` in ``tier`` that have a head under cap."""
        heads = []
        for lane in self._fn_lanes.get((tier, fn), ()):
            if self._app_open(self._lane_app[lane]):
                head = self._lane_head(tier, lane)
                if head is not None:
                    heads.append((lane[1], head))
        return heads

    def pick(self, now: float) -> Job | None:
        """``pick`` over this backlog."""
        found = self.candidates()
        return _best(found, now)[0] if found else None

    def pick_strict(self, now: float) -> Job | None:
        """``pick_strict`` over this backlog."""
        for tier in self.tiers:
            job = self._first(tier.name, ANY_UNITS, ())
            if job is not None:
                return job
        return None

    def pick_for_worker(
        self,
        now: float,
        *,
        worker: str,
        free_units: int,
        total_units: int,
        here: Collection[str] = (),
        elsewhere: Collection[str] = (),
        cold_start_s: Mapping[str, float] = _NO_TIMES,
        full: Collection[str] = (),
        max_reserved: int | None = None,
        hinted_here: Hinted = (),
        hinted_elsewhere: Hinted = (),
    ) -> Job | Blocked | Elsewhere | None:
        """``pick_for_worker`` over this backlog, keeping the reservations: a ``Blocked`` answer
        reserves its job for ``worker``, any other answer ends ``worker``'s reservation."""
        held = None
        mine = self.reserved.get(worker)
        if mine is not None or (self.reserved and self.smallest_reserved() <= free_units):
            room = min(free_units, total_units)
            others = (
                j
                for units, holders in self._reserved_units.items()
                if units <= room
                for w, j in holders.items()
                if w != worker
            )
            held = _held(mine, others, self._tier, now, free_units, total_units, self.under_cap)
        if isinstance(held, Blocked):
            return held
        if isinstance(held, Job):
            return held  # start() ends its reservation
        self._release(worker)
        got = _for_worker(
            lambda units: self.candidates(units, full),
            lambda units: self.warm_candidates(here, units, full),
            now,
            free_units,
            total_units,
            here,
            elsewhere,
            cold_start_s,
            max_reserved is None or len(self.reserved) < max_reserved,
            (lambda job: _hinted_away(job, now, hinted_here, hinted_elsewhere))
            if hinted_elsewhere
            else None,
        )
        if isinstance(got, Blocked) and got.job is not None:
            self._reserve(worker, got.job)
        return got
