"""The indexed form of the policy: queued jobs held as the live broker holds them in Redis.

``scheduler`` states the rules once, literally, over plain FIFO queues (the reference). A
``Backlog`` answers the same picks over an index, in time bounded by the number of tiers and of
the functions a worker skips, not by the queue (``scheduler``'s module docstring, "Two forms"):
per tier, the *lanes* (jobs of one function and size) ordered by their oldest eligible job; per
lane, the tenants ordered by their oldest job; per tenant and lane, a FIFO (a *flow*, its normal
jobs before its low-priority ones). A tenant at its cap leaves its lanes' tenant orders, an app
at its cap leaves the tier orders, and both come back when they fall under cap. A lane left to
its app's busy runners (W2b: the app's counts, its ``set_timing`` and ``set_idle``, and its
head's age say so) leaves its tier's order when a walk meets it, and comes back when its head
is no longer young or anything it depends on changes: so ``pick_for_worker`` never looks at it,
and no pick costs more for it. W2b is a rule of ``pick_for_worker``: a backlog given timings
leaves those lanes out of ``pick`` and ``pick_strict`` too (the simulator gives them only to
per-worker replays). The simulator
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
    _warm_first,
    busy_runners_first,
)

_Key = int
"""A queued job's place in FIFO order: its arrival sequence in the backlog."""
_NO_CAP = -1
_UNKNOWN = -1
_ID_BITS = 24
"""The heaps of the index hold plain ints, ``key << _ID_BITS | id`` (a flow's tenant, or a
lane): ordered by the key as (key, id) pairs would be, and several times cheaper to compare and
to keep than tuples (the heap operations were a fifth of a replay's time)."""
_ID_MASK = (1 << _ID_BITS) - 1


class _Capped:
    """A tenant or an app: its in-flight cap (``_NO_CAP``: none), its jobs in flight, and the
    lanes it has jobs queued in (a tenant: those where it has a flow; an app: every lane of its
    functions there has been, empty or not). An app also keeps what W2b weighs: its jobs in
    the index (``queued``: reserved ones have left it), its cold start and mean service time
    (``Backlog.set_timing``; no service time: never W2b) and whether its busy runners reach
    all its queued jobs within a cold start (``waits``)."""

    __slots__ = ("cap", "cold", "id", "inflight", "lanes", "queued", "service", "waits")

    def __init__(self, cap: int, id: int = 0) -> None:
        self.cap = cap
        self.id = id
        """A tenant's number in the heaps of its lanes' tenant orders."""
        self.inflight = 0
        self.lanes: dict[_LaneIndex, None] = {}
        self.queued = 0
        self.cold = 0.0
        self.service = 0.0
        self.waits = False

    def open(self) -> bool:
        """Under its cap: it may start one more job."""
        return self.cap == _NO_CAP or self.inflight < self.cap


class _TierIndex:
    """One tier's orders and what is cached of them: per lane size, the lanes by their oldest
    eligible job (``heaps``); ``_top`` of each with nothing full (``tops``, per size);
    ``_first`` with nothing full (``firsts``, per max units); the fewest units of its
    candidates (``smallest``, ``_UNKNOWN`` until worked out). A cached value holds until
    ``_stale`` drops it: when a job of the tier enters or leaves the index, or a tenant or app
    with jobs there reaches its cap or falls under it."""

    __slots__ = ("firsts", "heaps", "position", "queued", "smallest", "tier", "tops")

    def __init__(self, tier: Tier, position: int) -> None:
        self.tier = tier
        self.position = position
        """Its place in rank order."""
        self.queued = 0
        """Jobs queued in it, reserved ones included."""
        self.heaps: dict[int, list[int]] = {}
        """Units -> the lanes of that size, as ``key << _ID_BITS | lane id`` entries."""
        self.tops: dict[int, Job | None] = {}
        self.firsts: dict[int, Job | None] = {}
        self.smallest = _UNKNOWN


class _FnIndex:
    """The lanes of one function key in one tier, and (while ``known``) ``heads``: (units,
    key, head) of those whose app is under cap and that have a head."""

    __slots__ = ("heads", "known", "lanes")

    def __init__(self) -> None:
        self.lanes: list[_LaneIndex] = []
        self.heads: list[tuple[int, _Key, Job]] = []
        self.known = False


class _LaneIndex:
    """One lane of one tier: its flows (tenant id -> ``_Flow``), its tenants by their oldest
    job (a heap of ``key << _ID_BITS | tenant id``), how many jobs it holds, the key of its one
    live entry in the tier's order (None: it has none), and (while ``known``) its ``head``,
    ``_lane_head``. A lane, once made, stays for the backlog's life: ``id``, its place in
    ``Backlog._lane_list``, names it in the tier's order."""

    __slots__ = ("app", "deferred", "flows", "fn", "fn_index", "head", "head_key", "id", "jobs",
                 "known", "pushed", "tenants", "tier", "units")  # fmt: skip

    def __init__(
        self, id: int, tier: _TierIndex, fn: str, units: int, app: _Capped, fn_index: _FnIndex
    ) -> None:
        self.id = id
        self.tier = tier
        self.fn = fn
        self.units = units
        self.app = app
        self.fn_index = fn_index
        self.flows: dict[int, _Flow] = {}
        self.tenants: list[int] = []
        self.jobs = 0
        self.pushed: _Key | None = None
        self.head: Job | None = None
        self.head_key: _Key = 0
        """The key of ``head``, while it is one."""
        self.known = False
        self.deferred = False
        """Left to its app's busy runners (W2b): out of its tier's order until that may have
        changed (``Backlog._undefer``)."""

    def behind_head(self, key: _Key) -> bool:
        """Whether a job of ``key`` comes behind the lane's known head (so it cannot change
        it)."""
        return self.known and self.head is not None and key > self.head_key


class _Flow:
    """The jobs of one tenant in one lane of one tier: its normal jobs FIFO (``jobs[first:]``:
    taking the head moves ``first`` on, and the jobs taken are dropped from the list in bulk,
    which costs less than a deque per flow), its low ones FIFO (``low``, made when the first low
    job comes: most flows never hold one), and the key of its one live entry in the lane's
    tenant order (None: it has none). Its head, the job it offers, is its first normal job, else
    its first low one."""

    __slots__ = ("first", "jobs", "low", "pushed", "tenant")

    def __init__(self, tenant: _Capped) -> None:
        self.tenant = tenant
        self.jobs: list[Job] = []
        self.first = 0
        self.low: deque[Job] | None = None
        self.pushed: _Key | None = None

    def has_normal(self) -> bool:
        return self.first < len(self.jobs)

    def empty(self) -> bool:
        return self.first == len(self.jobs) and not self.low

    def head(self) -> Job:
        """The first normal job, else the first low one (the flow holds a job)."""
        if self.first < len(self.jobs):
            return self.jobs[self.first]
        low = self.low
        assert low
        return low[0]

    def put(self, job: Job, key: _Key, keys: Mapping[str, _Key]) -> None:
        """Queue ``job``, whose key is ``key`` (``keys``: every queued job's), FIFO: last, or at
        its place (a reservation coming back)."""
        if job.low:
            low = self.low
            if low is None:
                low = self.low = deque()
            if low and keys[low[-1].id] > key:
                items = sorted([*low, job], key=lambda j: keys[j.id])
                low.clear()
                low.extend(items)
            else:
                low.append(job)
            return
        jobs = self.jobs
        if self.first < len(jobs) and keys[jobs[-1].id] > key:
            items = sorted([*jobs[self.first :], job], key=lambda j: keys[j.id])
            jobs.clear()
            jobs.extend(items)
            self.first = 0
        else:
            jobs.append(job)

    def take(self, job: Job) -> None:
        """Take ``job`` (its queue's head, as a rule) out."""
        if job.low:
            low = self.low
            assert low is not None
            if low[0] is job:
                low.popleft()
            else:
                low.remove(job)
            return
        jobs, first = self.jobs, self.first
        if jobs[first] is job:
            first += 1
            if first == len(jobs):
                jobs.clear()
                first = 0
            elif first >= 16 and first * 2 >= len(jobs):
                del jobs[:first]
                first = 0
            self.first = first
        else:
            del jobs[jobs.index(job, first)]


class Backlog:
    """Queued jobs indexed by tier, lane and tenant, with the in-flight counts and the
    reservations: the state the live broker keeps in Redis (module docstring, "Two forms").

    ``add`` queues a job; ``start`` takes a picked job (a candidate or a reservation) out of the
    queue and counts it in flight; ``finish`` ends it. The picks answer what the reference
    functions of the same name answer for the same queues, counts and reservations, and
    ``pick_for_worker`` keeps the reservations itself (W0, W3).

    The index is made of objects that refer to each other (a lane to its tier, app and flows, a
    flow to its tenant), so that a pick follows references instead of looking tuples up in
    dictionaries: compiled, that was most of a replay's time.
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
        self._ordered = [_TierIndex(t, i) for i, t in enumerate(self.tiers)]
        """Per tier in rank order, its index."""
        self._tier = {t.name: t for t in self.tiers}
        self._indexes = {t.tier.name: t for t in self._ordered}
        self.tenant_caps = dict(tenant_caps)
        self.app_caps = dict(app_caps)
        self._tenants: dict[str, _Capped] = {}
        self._apps: dict[str, _Capped] = {}
        self.reserved: dict[str, Job] = {}
        """Worker -> the job it drains for (still queued, not a candidate)."""
        self._reserved_units: dict[int, dict[str, Job]] = {}
        """Units -> worker -> its reserved job, of those that take that many units."""
        self._holders: dict[str, str] = {}
        """Reserved job id -> the worker that holds it."""
        self._total = 0
        self._seq = 0
        self._key: dict[str, _Key] = {}
        self._lanes: dict[tuple[str, str, int], _LaneIndex] = {}
        """(tier, function key, units) -> its lane."""
        self._lane_list: list[_LaneIndex] = []
        """Lane id -> its lane."""
        self._fns: dict[str, list[_FnIndex]] = {}
        """Function key -> its lanes per tier, in rank order."""
        self._idle: set[str] = set()
        """Function keys with an idle runner on some worker (``set_idle``): never W2b."""
        self._now = 0.0
        """The time of the latest pick (``advance``): W2b's clock."""
        self._expiry: list[tuple[float, int]] = []
        """(when, lane id): a lane left to busy runners whose head stops being young then."""
        self._returning: list[_LaneIndex] = []
        """Lanes no longer left to busy runners, back in their orders at the next pick."""

    # -- counts ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Jobs queued, reserved ones included."""
        return self._total

    def queued_in(self, tier: str) -> int:
        """Jobs queued in ``tier`` (for ``admit``)."""
        return self._indexes[tier].queued

    def _tenant(self, name: str) -> _Capped:
        found = self._tenants.get(name)
        if found is None:
            number = len(self._tenants)
            if number > _ID_MASK:
                raise ValueError(f"more than {_ID_MASK + 1} tenants in one backlog")
            cap = self.tenant_caps.get(name, _NO_CAP)
            found = self._tenants[name] = _Capped(cap, number)
        return found

    def _app(self, name: str) -> _Capped:
        found = self._apps.get(name)
        if found is None:
            found = self._apps[name] = _Capped(self.app_caps.get(name, _NO_CAP))
        return found

    def under_cap(self, job: Job) -> bool:
        """Whether ``job``'s tenant and app are both under their in-flight caps."""
        return self._tenant(job.tenant).open() and self._app(job.app).open()

    # -- changes ---------------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Queue ``job``, FIFO: after every job added before it (as ``queues`` lists them)."""
        tier = self._indexes.get(job.tier)
        if tier is None:
            raise ValueError(f"jobs queued in unknown tier {job.tier!r}")
        self._seq += 1
        key = self._seq
        self._key[job.id] = key
        tier.queued += 1
        self._total += 1
        self._index(job, key)

    def _stale(self, lane: _LaneIndex) -> None:
        """The head of ``lane`` may have changed, and so what is worked out of it (and whether
        it is left to busy runners: it is looked at again)."""
        lane.known = False
        self._stale_orders(lane)
        if lane.deferred:
            self._undefer(lane)

    # -- W2b: lanes left to their app's busy runners ---------------------------------------------

    def set_idle(self, fn: str, idle: bool) -> None:
        """Whether function ``fn`` has an idle runner on some worker (its lanes are never left
        to busy runners then: W1 or W2 serves them)."""
        if idle == (fn in self._idle):
            return
        if idle:
            self._idle.add(fn)
        else:
            self._idle.discard(fn)
        for fn_index in self._fns.get(fn, ()):
            if fn_index.lanes and not fn_index.lanes[0].app.waits:
                return  # none of its lanes is left, nor would a walk leave one (one app's lanes)
            self._look_again(fn_index.lanes)

    def service_of(self, app: str) -> float:
        """``app``'s mean service time as ``set_timing`` last gave it (0: none)."""
        a = self._apps.get(app)
        return a.service if a is not None else 0.0

    def set_timing(self, app: str, cold_start_s: float, service_s: float) -> None:
        """``app``'s measured cold start and mean service time (W2b; a service time of 0: the
        app's jobs are never left to busy runners)."""
        a = self._app(app)
        if a.cold == cold_start_s and a.service == service_s:
            return
        if a.cold != cold_start_s:  # its lanes' heads stop being young at other times
            for lane in a.lanes:
                if lane.deferred:
                    self._undefer(lane)
        a.cold, a.service = cold_start_s, service_s
        self._recount(a)

    def _recount(self, app: _Capped) -> None:
        """Whether ``app``'s busy runners reach all its queued jobs within a cold start, after
        its counts changed; where that changes, its lanes' place in the orders may."""
        waits = app.service > 0 and busy_runners_first(
            0.0, app.inflight, app.queued, app.cold, app.service
        )
        if waits == app.waits:
            return
        app.waits = waits
        self._look_again(app.lanes)

    def _look_again(self, lanes: Iterable[_LaneIndex]) -> None:
        """Whether ``lanes`` are left to busy runners may have changed: those left come back
        (the walk leaves them again if they still are), and the orders of those with jobs are
        worked out again (the walk may leave them now)."""
        for lane in lanes:
            if lane.deferred:
                self._undefer(lane)
            elif lane.jobs:
                self._stale_orders(lane)

    def _undefer(self, lane: _LaneIndex) -> None:
        """``lane`` is no longer left to busy runners: back into its tier's order at the next
        pick (``advance``), where the walk looks at it again."""
        lane.deferred = False
        self._stale_orders(lane)
        self._returning.append(lane)

    def advance(self, now: float) -> None:
        """The time is ``now`` (every pick calls it; a caller that reads ``smallest_candidate``
        first calls it too): lanes whose head is no longer young come back into the orders, and
        so do those ``_undefer`` let go."""
        if now > self._now:
            self._now = now
        expiry, lanes = self._expiry, self._lane_list
        while expiry and expiry[0][0] <= now:
            lane = lanes[heapq.heappop(expiry)[1]]
            if lane.deferred:
                self._undefer(lane)
        if self._returning:
            self._settle()

    def _settle(self) -> None:
        """The lanes ``_undefer`` let go, back into their orders."""
        returning = self._returning
        while returning:
            lane = returning.pop()
            if not lane.deferred and lane.jobs and self._lane_head(lane) is not None:
                self._push_lane(lane, lane.head_key)

    def _stale_orders(self, lane: _LaneIndex) -> None:
        """What is worked out of ``lane``'s head may have changed (its tier's candidate among
        jobs of that size, its function's heads): its head changed, or its app reached its cap
        or fell under it."""
        lane.fn_index.known = False
        tier = lane.tier
        tier.tops.pop(lane.units, None)
        tier.firsts.clear()
        tier.smallest = _UNKNOWN

    def _lane(self, job: Job) -> _LaneIndex:
        """The lane of ``job`` (made the first time a job of its tier, function and size
        comes)."""
        at = (job.tier, job.function_key, job.units)
        lane = self._lanes.get(at)
        if lane is None:
            tier = self._indexes[job.tier]
            fns = self._fns.get(job.function_key)
            if fns is None:
                fns = self._fns[job.function_key] = [_FnIndex() for _ in self._ordered]
            app = self._app(job.app)
            fn_index = fns[tier.position]
            number = len(self._lane_list)
            if number > _ID_MASK:
                raise ValueError(f"more than {_ID_MASK + 1} lanes in one backlog")
            lane = _LaneIndex(number, tier, job.function_key, job.units, app, fn_index)
            self._lanes[at] = lane
            self._lane_list.append(lane)
            fn_index.lanes.append(lane)
            app.lanes[lane] = None
        return lane

    def _index(self, job: Job, key: _Key) -> None:
        lane = self._lane(job)
        tenant = self._tenant(job.tenant)
        flow = lane.flows.get(tenant.id)
        if flow is None:
            lane.flows[tenant.id] = flow = _Flow(tenant)
            ahead_of_low = False
        else:  # a normal job goes ahead of its flow's low ones: the lane's head may change
            ahead_of_low = not job.low and not flow.empty() and not flow.has_normal()
        if ahead_of_low or not lane.behind_head(key):
            # Else the lane keeps its head, and all worked out of it: the newest job comes last
            # (most jobs: the key is the newest there is) behind an older head.
            self._stale(lane)
        flow.put(job, key, self._key)
        lane.jobs += 1
        lane.app.queued += 1
        self._recount(lane.app)
        # ``job`` heads its flow: a new flow, a reservation coming back, or a normal job ahead
        # of low ones (the low head's older entries are refreshed when next looked at)
        if flow.head() is job:
            tenant.lanes[lane] = None
            self._push_flow(lane, flow, key)
            self._push_lane(lane, key)

    def _push_flow(self, lane: _LaneIndex, flow: _Flow, key: _Key) -> None:
        """Make sure the lane's tenant order holds the flow at ``key`` or older."""
        if flow.pushed is None or key < flow.pushed:
            heapq.heappush(lane.tenants, key << _ID_BITS | flow.tenant.id)
            flow.pushed = key

    def _push_lane(self, lane: _LaneIndex, key: _Key) -> None:
        """Make sure the tier's order holds the lane at ``key`` or older (unless it is left to
        busy runners: ``_undefer`` puts it back)."""
        if lane.deferred:
            return
        if lane.pushed is None or key < lane.pushed:
            heaps = lane.tier.heaps
            heap = heaps.get(lane.units)
            if heap is None:
                heap = heaps[lane.units] = []
            heapq.heappush(heap, key << _ID_BITS | lane.id)
            lane.pushed = key

    def _unindex(self, job: Job, tenant: _Capped) -> None:
        """Take ``job`` (of ``tenant``), the head of its flow, out of the index (the heap
        entries it leaves behind are dropped or refreshed when next looked at; a new head older
        than them, a low job behind the normal one taken, gets entries of its own)."""
        lane = self._lanes[(job.tier, job.function_key, job.units)]
        self._stale(lane)
        flow = lane.flows[tenant.id]
        flow.take(job)
        if flow.empty():
            del lane.flows[tenant.id]
            del tenant.lanes[lane]
        elif flow.pushed is not None and not job.low:
            key = self._key[flow.head().id]
            if key < flow.pushed:
                self._push_flow(lane, flow, key)
                self._push_lane(lane, key)
        lane.jobs -= 1
        if not lane.jobs:  # empty: its entries are dead
            lane.pushed = None
            lane.tenants.clear()
        lane.app.queued -= 1
        self._recount(lane.app)

    def start(self, job: Job) -> str | None:
        """``job`` (returned by a pick) leaves the queue and runs: it counts in flight. Returns
        the worker that held it reserved, if one did."""
        tenant, app = self._tenant(job.tenant), self._app(job.app)
        holder = self._holders.get(job.id)
        if holder is None:
            self._unindex(job, tenant)
        else:
            del self.reserved[holder]
            self._count_reserved(holder, job, False)
        del self._key[job.id]
        self._indexes[job.tier].queued -= 1
        self._total -= 1
        tenant_was, app_was = tenant.open(), app.open()
        tenant.inflight += 1
        app.inflight += 1
        if tenant_was and not tenant.open():
            # Its flows leave their lanes: a lane's head changes where one of them was it. (A
            # lane whose head is not worked out: nothing worked out depends on it, and its head
            # can only get younger.)
            for lane in tenant.lanes:
                head = lane.head
                if lane.known and head is not None and head.tenant == job.tenant:
                    self._stale(lane)
        if app_was and not app.open():
            for lane in app.lanes:  # its lanes leave the orders; their heads stay
                self._stale_orders(lane)
        self._recount(app)
        return holder

    def finish(self, job: Job) -> None:
        """``job`` stopped running: its tenant and app may fall under cap again."""
        tenant, app = self._tenant(job.tenant), self._app(job.app)
        tenant_was, app_was = tenant.open(), app.open()
        tenant.inflight -= 1
        app.inflight -= 1
        if not tenant_was and tenant.open():
            # Its flows come back: a lane's head changes where one is older than it.
            for lane in tenant.lanes:
                flow = lane.flows[tenant.id]
                key = self._key[flow.head().id]
                if not lane.behind_head(key):
                    self._stale(lane)
                self._push_flow(lane, flow, key)
                self._push_lane(lane, key)
        if not app_was and app.open():
            for lane in app.lanes:  # its lanes come back into the orders, their heads as they were
                self._stale_orders(lane)
                if self._lane_head(lane) is not None:
                    self._push_lane(lane, lane.head_key)
        self._recount(app)

    def holds(self, job_id: str) -> bool:
        """Whether the job of ``job_id`` is queued here (reserved or not)."""
        return job_id in self._key

    def lane_depths(self) -> list[tuple[str, str, int, int]]:
        """(tier, function key, units, jobs) of every lane of the index that holds jobs
        (reserved jobs have left it), as the live lane index counts them, in tier order."""
        lanes = [lane for lane in self._lanes.values() if lane.jobs]
        lanes.sort(key=lambda lane: lane.tier.position)
        return [(lane.tier.tier.name, lane.fn, lane.units, lane.jobs) for lane in lanes]

    def oldest_startable(self, tier: str) -> Job | None:
        """The oldest job of ``tier`` that can start now: its candidate (rule 2: under caps, not
        left to busy runners) or a reserved job, whichever is older; None if there is none."""
        if self._returning:
            self._settle()
        found = self._first(self._indexes[tier], ANY_UNITS, ())
        for job in self.reserved.values():
            if job.tier == tier and (found is None or self._key[job.id] < self._key[found.id]):
                found = job
        return found

    def room(self) -> dict[str, int]:
        """App -> how many more of its jobs its in-flight cap lets start now (capped apps)."""
        return {name: max(0, app.cap - app.inflight) for name, app in self._apps.items()
                if app.cap != _NO_CAP}  # fmt: skip

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
        self._unindex(job, self._tenant(job.tenant))
        self.reserved[worker] = job
        self._count_reserved(worker, job, True)

    def _release(self, worker: str) -> None:
        held = self.reserved.pop(worker, None)
        if held is not None:
            self._count_reserved(worker, held, False)
            self._index(held, self._key[held.id])

    # -- lookups ---------------------------------------------------------------------------------

    def _lane_head(self, lane: _LaneIndex) -> Job | None:
        """The oldest job of the lane whose tenant is under cap (cached until ``_stale``)."""
        if not lane.known:
            lane.head = self._find_lane_head(lane)
            lane.known = True
        return lane.head

    def _find_lane_head(self, lane: _LaneIndex) -> Job | None:
        """``_lane_head``, worked out: a capped tenant's entry is dropped (``finish`` pushes it
        back), a stale one refreshed, a dead duplicate dropped."""
        if not lane.jobs:
            return None
        heap, flows, keys = lane.tenants, lane.flows, self._key
        while heap:
            entry = heap[0]
            key, tenant = entry >> _ID_BITS, entry & _ID_MASK
            flow = flows.get(tenant)
            if flow is None or flow.pushed != key:
                heapq.heappop(heap)
                continue
            head = flow.head()
            head_key = keys[head.id]
            if head_key != key:
                heapq.heapreplace(heap, head_key << _ID_BITS | tenant)
                flow.pushed = head_key
            elif not flow.tenant.open():
                heapq.heappop(heap)
                flow.pushed = None
            else:
                lane.head_key = head_key
                return head
        return None

    def _first(self, tier: _TierIndex, max_units: int, full: Collection[str]) -> Job | None:
        """The oldest lane head of ``tier`` under cap that fits ``max_units`` and whose function
        is not in ``full``: the oldest of the heads of each lane size that fits."""
        firsts = tier.firsts
        if not full and max_units in firsts:
            return firsts[max_units]
        found: Job | None = None
        found_key = 0
        for units, heap in tier.heaps.items():
            if units > max_units or not heap:
                continue
            head = self._top(heap, full) if full else self._top_of(tier, units, heap)
            if head is not None:
                key = self._key[head.id]
                if found is None or key < found_key:
                    found, found_key = head, key
        if not full:
            firsts[max_units] = found
        return found

    def _top_of(self, tier: _TierIndex, units: int, heap: list[int]) -> Job | None:
        """``_top`` of ``tier``'s order of ``units``-unit lanes (``heap``), with nothing full;
        cached in the tier's ``tops``."""
        tops = tier.tops
        if units in tops:
            return tops[units]
        head = tops[units] = self._top(heap, ())
        return head

    def _top(self, heap: list[int], full: Collection[str]) -> Job | None:
        """The oldest lane head under cap in ``heap`` whose function is not in ``full``. Lanes
        skipped for ``full`` go back into the order afterwards."""
        lanes = self._lane_list
        skipped: list[int] = []
        found: Job | None = None
        while heap:
            entry = heap[0]
            key, lane = entry >> _ID_BITS, lanes[entry & _ID_MASK]
            if lane.pushed != key:
                heapq.heappop(heap)
                continue
            if not lane.app.open():
                heapq.heappop(heap)
                lane.pushed = None
                continue
            head = self._lane_head(lane)
            if head is None:
                heapq.heappop(heap)
                lane.pushed = None
                continue
            head_key = lane.head_key
            if head_key != key:
                heapq.heapreplace(heap, head_key << _ID_BITS | lane.id)
                lane.pushed = head_key
                continue
            app = lane.app
            if app.waits and lane.fn not in self._idle and self._now - head.enqueued_at < app.cold:
                # W2b: left to the app's busy runners while its head is young
                heapq.heappop(heap)
                lane.pushed = None
                lane.deferred = True
                heapq.heappush(self._expiry, (head.enqueued_at + app.cold, lane.id))
                continue
            if full and lane.fn in full:
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
        if self._returning:
            self._settle()
        smallest = 0
        for tier in self._ordered:
            least = tier.smallest
            if least == _UNKNOWN:
                least = 0
                for units, heap in tier.heaps.items():
                    if (
                        (not least or units < least)
                        and heap
                        and self._top_of(tier, units, heap) is not None
                    ):
                        least = units
                tier.smallest = least
            if least and (not smallest or least < smallest):
                smallest = least
        return smallest

    def candidates(
        self, max_units: int = ANY_UNITS, full: Collection[str] = ()
    ) -> list[tuple[Tier, Job]]:
        """Rule 2: per tier its candidate, sorted by (rank, enqueued_at)."""
        if self._returning:
            self._settle()
        found = []
        for tier in self._ordered:
            job = self._first(tier, max_units, full)
            if job is not None:
                found.append((tier.tier, job))
        if not self._ranked:  # else ``found`` is in rank order already
            found.sort(key=lambda c: (c[0].rank, c[1].enqueued_at))
        return found

    def warm_candidates(
        self, here: Collection[str], max_units: int = ANY_UNITS, full: Collection[str] = ()
    ) -> list[tuple[Tier, Job]]:
        """W4's candidates: per tier the oldest job under cap whose function is in ``here``."""
        ordered = self._ordered
        best: list[Job | None] = [None] * len(ordered)
        best_key = [0] * len(ordered)
        for fn in here:
            per_tier = self._fns.get(fn)
            if per_tier is None or fn in full:
                continue
            for i, fn_index in enumerate(per_tier):
                if not ordered[i].queued:
                    continue
                for units, key, head in self._heads_of_fn(fn_index):
                    if units <= max_units and (best[i] is None or key < best_key[i]):
                        best[i], best_key[i] = head, key
        found = []
        for i, job in enumerate(best):
            if job is not None:
                found.append((ordered[i].tier, job))
        if not self._ranked:  # else ``found`` is in rank order already
            found.sort(key=lambda c: (c[0].rank, c[1].enqueued_at))
        return found

    def _heads_of_fn(self, fn_index: _FnIndex) -> list[tuple[int, _Key, Job]]:
        """(units, key, head) of the lanes of a function in a tier that have a head under cap
        (cached until ``_stale``)."""
        if fn_index.known:
            return fn_index.heads
        heads = []
        for lane in fn_index.lanes:
            if lane.jobs and lane.app.open():
                head = self._lane_head(lane)
                if head is not None:
                    heads.append((lane.units, lane.head_key, head))
        fn_index.heads, fn_index.known = heads, True
        return heads

    def pick(self, now: float) -> Job | None:
        """``pick`` over this backlog."""
        self.advance(now)
        found = self.candidates()
        return _best(found, now)[0] if found else None

    def pick_strict(self, now: float) -> Job | None:
        """``pick_strict`` over this backlog."""
        self.advance(now)
        for tier in self._ordered:
            job = self._first(tier, ANY_UNITS, ())
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
        self.advance(now)
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
            held = _held(mine, others, self._tier, now, free_units, total_units, self.under_cap,
                         lambda j: self._key[j.id],
                         lambda job: _warm_first(job, here, lambda: self.warm_candidates(
                             here, room, full)))  # fmt: skip
        if isinstance(held, Blocked):
            return held
        if isinstance(held, Job):
            return held  # start() ends its reservation
        self._release(worker)  # (the lanes W2b lets go meanwhile: ``candidates`` settles them)
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
            None,
            self.service_of,
        )
        if isinstance(got, Blocked) and got.job is not None:
            self._reserve(worker, got.job)
        return got
