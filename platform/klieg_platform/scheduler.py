"""The ordering policy: which queued job a free GPU slot takes next. Plain code, no I/O.

The live broker applies the same rule inside one Redis Lua script, and the simulator
(``klieg_platform.simulator``) replays traces through this very code in virtual time, so the
rule is written here once, literally:

1. Tiers. Each tier has a queue-time SLO (``slo_s``), a queue bound (``max_queued``) and a
   ``rank``: 0 is the most important (paid) tier, higher ranks are less important. ``queues``
   maps a tier name to its queued jobs in FIFO order (oldest first).
2. Candidates. For each tier, the candidate is the first job (FIFO) whose tenant has fewer jobs in
   flight than its cap AND whose app has fewer jobs in flight than its cap. Caps are mappings
   name -> cap; a name missing from a cap mapping is unlimited; a name missing from an in-flight
   mapping has 0 in flight. However many jobs of capped tenants or apps wait ahead of it, the
   candidate is found in bounded time: ``backlog.Backlog`` indexes the queue so that capped
   tenants and apps are parked, not scanned.
   Priority: a job is queued at normal or low priority (``Job.low``: fal's
   ``X-Fal-Queue-Priority: low``). A low job is not a candidate while a normal job of its *flow*
   waits that is not reserved (W3): its flow is its tier, tenant and lane (its function and the
   units it takes; a function belongs to one app, so "low waits behind normal of the same
   tenant and app" holds per function of the app). Within a flow the order is thus (priority,
   enqueue time); nothing else changes: a low job's score (rule 3) counts from its own enqueue
   time, and it never waits behind another tenant's or another function's normal jobs.
3. Score. A candidate's score is ``(now - enqueued_at) / slo_s`` of its tier: the share of its
   SLO that its wait has used ("1 minute of an api job's wait weighs as much as 10 minutes of a
   light job's").
4. Pick. If any candidate has score >= 1 (it is over its SLO), the candidate with the highest
   score wins; ties go to the lower rank, then to the earlier ``enqueued_at``. Otherwise
   (everyone is within SLO) the candidate of the lowest rank wins: paid first, FIFO in its tier.

Consequences: no tier starves (a waiting job's score grows without bound until it is the
highest); under overload every tier ends up equally late relative to its SLO; while everyone is
within SLO a paid job still goes first. A tenant or app at its cap waits without blocking others.

``pick_for_worker`` is what the live dispatch runs: the same pick, asked by one worker, plus warm
affinity and GPU draining. The worker states its free units, its total units, ``here`` (the
function keys with an idle warm runner on it), ``elsewhere`` (function keys idle on other
workers that can take work) and the apps' measured cold starts (``cold_start_s``, by app). A job
takes ``max(gpus, 1)`` units; its function key is ``fn`` (the app when empty). The candidates
are rule 2's, except that a job needing more units than the worker's total, or whose function's
runners here are all busy (``full``), is never one; ``best`` is rule 4's pick among them. Jobs
reserved by a draining worker (W3) are not candidates. Then:

W0. a reserved job fits the free units and is under cap: this worker's own reservation, else the
    best (rule 4) of the other workers' reservations that fit: take it (a drained slot goes to
    the job it was drained for). This worker's reservation does not fit yet: ``Blocked(units)``,
    take nothing. This worker's reservation is now over cap: the reservation ends (the job waits
    in its queue like any other) and the rules go on. Another worker's reservation is not taken
    while this worker holds warm work for its idle runners (``_warm_first``: the reserved job's
    function is not idle here, and a job whose function is idle here is a candidate that fits
    the free units): the rules go on, and the reservation waits for the worker that drains for
    it. Taking it would evict a warm runner whose own app has requests waiting, for a cold
    start, and that app would pay a cold start of its own next;
W1. best's function is idle here: take best, unless best carries a runner hint (fal's
    ``X-Fal-Runner-Hint``, ``Job.hint``) that no idle runner of its function here reports but
    one on another worker does (``hinted_here``, ``hinted_elsewhere``: (function key, hint)
    pairs of idle runners), and best has waited less than ``HINT_WAIT_S``: then
    ``Elsewhere()``, as W2 (that runner has what the request needs, a LoRA loaded say). The
    preference lasts that short window only: past it any idle runner takes best;
W2. best's function is idle on another worker: ``Elsewhere()``, take nothing (that worker
    serves it now, warm, instead of this one paying a cold start or draining for it);
W2b. best is young for its app (it has waited less than the app's cold start), its function
    idles on no worker (``idle``: ``here`` and ``elsewhere`` unless given), and its app's busy
    runners reach every queued job of the app within a cold start: ``inflight * cold_start >=
    queued * service`` (``busy_runners_first``; ``service_s``: the app's measured mean service
    time; the queued jobs are those not reserved): best's lane (tier, function, units) is left
    to them, and the rules start again without it. A cold start now would start best no sooner
    than one of those runners will, and would take a GPU from other work for the cold start's
    length; best waits for that reason at most a cold start;
W3. best needs more units than are free: reserve best for this worker and answer
    ``Blocked(units)``: the worker drains until it fits, so a big job is not starved by small
    ones, and only this worker drains for it (the others go on serving the queue). At most
    ``max_reserved`` jobs are reserved at once (the pool's share of draining workers): when that
    many are, the worker backfills instead: these rules again, over the candidates that fit its
    free units;
W4. some job whose function is idle here is a candidate by the same test (per tier, the oldest
    such job under caps, fitting the total), and the best of those by rule 4 fits the free
    units, and either best is young (within its SLO, and it has waited less than its app's cold
    start) or best is over its SLO and that warm job's score is at least ``WARM_SHARE`` (0.5) of
    best's, or, for a warm job of best's tier or a more important one, ``warm_share`` of it
    (``WARM_SHARE`` times (service / cold start) ** ``COLD_WEIGHT`` where best's app's measured
    cold start is longer than its mean service time): take the warm job, no cold start;
W5. otherwise best, paying a cold start.

So a job is never cold-started while a runner of its function idles on a worker that can take
it, nor while its own app's busy runners will reach it as soon, and warm work goes first while
that is better for the queue than a cold start: while the best job would have waited for its
cold start anyway, or, under overload, while the warm job is about as late as the best one (so
the fleet is not spent on cold starts exactly when it is short of GPUs), or later still when
best's cold start would cost several of its requests' worth of GPU time and the warm job is of
a tier at least as important (so no tier waits for a less important one's warm work).

``pick_strict`` is the strict-priority baseline the policy is measured against: the lowest rank
with a candidate wins, FIFO within it (same candidates, same caps). Back pressure (``admit``,
``retry_after_s``) and the queue ETA (``estimate_start_s``) live here too, so the gateway, the
broker and the simulator share one set of numbers.

Two forms, one rule. ``pick``, ``pick_strict`` and ``pick_for_worker`` are the reference: pure
functions over plain queues, scanning them whole; the rules they apply (``_best``, ``_held``,
``_for_worker``, ``_hinted_away``) are the ones the indexed form calls. ``backlog.Backlog``
holds the queues indexed as the live broker holds them in Redis, and answers the same picks
(``Backlog.pick`` and friends) in time bounded by the number of tiers and of the functions a
worker skips, not by the queue: per
tier, the *lanes* (jobs of one function and size) ordered by their oldest eligible job; per
lane, the tenants ordered by the enqueue time of their flow's head; per tenant and lane, a
*flow*: its normal jobs FIFO, then its low ones FIFO (rule 2), whose head is the first normal
job, else the first low one. A tenant at its cap leaves its lanes' tenant orders, an app at its
cap leaves the tier orders, and both come back when they fall under cap. A property test holds
the two forms equal on random queues.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

WARM_SHARE = 0.5
"""W4: under overload a warm job goes first while its score is at least this share of best's
(less for an app whose cold start is longer than its service: ``warm_share``)."""

COLD_WEIGHT = 6
"""W4: the share falls as (service / cold start) to this power (for a warm job of a tier at
least as important as best's): for an app that starts in 4x its service time, about 1/4000 of
best's score is enough. Applied to warm jobs of any tier, the launch-day replays at 1,024 and
2,560 GPUs reached 0.92 and 0.89 of the dispatchable GPU time (from 0.82 and 0.80) but the
worst tier's p99 wait/SLO went to 1.6x and 2.0x the best's; held to tiers at least as important,
0.89 and 0.85 at 1.2x."""

HINT_WAIT_S = 0.5
"""W1: how long a job with a runner hint is left to the worker whose idle runner reports that
hint, while a runner of its function idles here without it (fal: "goes to any available runner
without waiting"; this bounds the wait to the other worker's next dispatch)."""

DRAIN_SHARE = 1 / 16
"""W3: at most this share of a pool's workers drain for a reservation at once."""

ANY_UNITS = 1 << 30
"""``max_units`` that every job fits (kept an int: the indexed picks compare and key by it)."""

RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 600

_NO_COUNTS: Mapping[str, int] = MappingProxyType({})
_NO_TIMES: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Tier:
    """A user tier: its queue-time SLO, its queue bound and its rank (0 = most important)."""

    name: str
    slo_s: float
    max_queued: int
    rank: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tier needs a name")
        if not self.slo_s > 0:
            raise ValueError(f"tier {self.name!r}: slo_s must be > 0, not {self.slo_s}")
        if self.max_queued < 0:
            raise ValueError(f"tier {self.name!r}: max_queued must be >= 0")
        if self.rank < 0:
            raise ValueError(f"tier {self.name!r}: rank must be >= 0")


def parse_tiers(spec: str) -> tuple[Tier, ...]:
    """Tiers from ``"name:slo_s:max_queued,..."``; the order given is the rank (first = 0).

    Example: ``parse_tiers("enterprise:60:20000,free:1800:1000")``. Raises ValueError on a
    malformed entry, a duplicate name or an empty spec.
    """
    tiers: list[Tier] = []
    for rank, entry in enumerate(part.strip() for part in spec.split(",") if part.strip()):
        fields = [f.strip() for f in entry.split(":")]
        if len(fields) != 3:
            raise ValueError(f"tier entry {entry!r} is not name:slo_s:max_queued")
        name, slo, bound = fields
        try:
            tier = Tier(name, float(slo), int(bound), rank)
        except ValueError as exc:
            raise ValueError(f"tier entry {entry!r}: {exc}") from None
        tiers.append(tier)
    if not tiers:
        raise ValueError("no tiers in spec")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tier names in {spec!r}")
    return tuple(tiers)


DEFAULT_TIERS: tuple[Tier, ...] = parse_tiers(
    "enterprise:60:20000,api:120:10000,plus:300:5000,light:600:2000,free:1800:1000"
)


class Job:
    """The scheduler's view of one queued job. ``tier`` names the queue the job sits in.

    A value: equal to a job of the same fields, hashable, never changed once made. A plain
    class rather than a frozen dataclass, because a replay makes one per request and this is
    several times cheaper to make (compiled, about 30x)."""

    __slots__ = (
        "app",
        "enqueued_at",
        "fn",
        "function_key",
        "gpus",
        "hint",
        "id",
        "low",
        "tenant",
        "tier",
        "units",
    )  # fmt: skip

    def __init__(
        self,
        id: str,
        tier: str,
        tenant: str,
        app: str,
        enqueued_at: float,
        gpus: int = 1,
        fn: str = "",
        low: bool = False,
        hint: str = "",
    ) -> None:
        self.id = id
        self.tier = tier
        self.tenant = tenant
        self.app = app
        self.enqueued_at = enqueued_at
        self.gpus = gpus
        self.fn = fn
        """The function the job runs ("revision/function" live); empty: the app is it."""
        self.function_key = fn or app
        """What ``here``/``elsewhere`` of ``pick_for_worker`` name: ``fn``, else ``app``."""
        self.units = gpus if gpus > 1 else 1
        """Worker units (GPUs) the job takes: ``gpus``, at least one."""
        self.low = low
        """Queued at low priority: behind its flow's normal jobs (rule 2)."""
        self.hint = hint
        """Its runner hint (W1); empty: none."""

    def _fields(self) -> tuple[str, str, str, str, float, int, str, bool, str]:
        return (self.id, self.tier, self.tenant, self.app, self.enqueued_at, self.gpus, self.fn,
                self.low, self.hint)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Job(id={self.id!r}, tier={self.tier!r}, tenant={self.tenant!r}, "
                f"app={self.app!r}, enqueued_at={self.enqueued_at!r}, gpus={self.gpus!r}, "
                f"fn={self.fn!r}, low={self.low!r}, hint={self.hint!r})")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Blocked:
    """``pick_for_worker`` took nothing: the job this worker drains for needs ``units``, more than
    are free. ``job`` is that job: reserved for this worker now (W3) or already (W0)."""

    units: int
    job: Job | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """``pick_for_worker`` took nothing: the best job's function is idle warm on another worker,
    which should serve it without a cold start. ``job``: that best job."""

    job: Job | None = field(default=None, compare=False)


class PickFn(Protocol):
    """The signature ``pick`` and ``pick_strict`` share."""

    def __call__(
        self,
        queues: Mapping[str, Sequence[Job]],
        now: float,
        *,
        tiers: Sequence[Tier] = ...,
        inflight_by_tenant: Mapping[str, int] = ...,
        inflight_by_app: Mapping[str, int] = ...,
        tenant_caps: Mapping[str, int] = ...,
        app_caps: Mapping[str, int] = ...,
    ) -> Job | None: ...


def _under_cap(
    job: Job,
    inflight_by_tenant: Mapping[str, int],
    inflight_by_app: Mapping[str, int],
    tenant_caps: Mapping[str, int],
    app_caps: Mapping[str, int],
) -> bool:
    cap = tenant_caps.get(job.tenant)
    if cap is not None and inflight_by_tenant.get(job.tenant, 0) >= cap:
        return False
    cap = app_caps.get(job.app)
    return cap is None or inflight_by_app.get(job.app, 0) < cap


def _flow_of(job: Job) -> tuple[str, str, int]:
    """A job's flow within its tier: (tenant, function key, units)."""
    return (job.tenant, job.function_key, job.units)


def _candidates(
    queues: Mapping[str, Sequence[Job]],
    tiers: Iterable[Tier],
    inflight_by_tenant: Mapping[str, int],
    inflight_by_app: Mapping[str, int],
    tenant_caps: Mapping[str, int],
    app_caps: Mapping[str, int],
    max_units: float = math.inf,
    warm: Collection[str] | None = None,
    full: Collection[str] = (),
    skip: Collection[str] = (),
    skip_lanes: Collection[tuple[str, str, int]] = (),
) -> list[tuple[Tier, Job]]:
    """Rule 2 by a whole scan: per tier, the first job (FIFO) whose tenant and app are under
    cap, that takes at most ``max_units`` units, whose function is not in ``full`` (and, when
    ``warm`` is given, is in ``warm``), whose id is not in ``skip``, whose lane (tier, function
    key, units) is not in ``skip_lanes`` and that is not a low job behind a normal job of its
    flow (same tenant, function and units) not in ``skip``. Sorted by (rank, enqueued_at).

    Raises ValueError for a non-empty queue whose tier is not in ``tiers`` (it would never be
    served).
    """
    by_name = {t.name: t for t in tiers}
    counts = (inflight_by_tenant, inflight_by_app, tenant_caps, app_caps)
    found: list[tuple[Tier, Job]] = []
    for name, queue in queues.items():
        if not queue:
            continue
        tier = by_name.get(name)
        if tier is None:
            raise ValueError(f"jobs queued in unknown tier {name!r}")
        normal = {_flow_of(j) for j in queue if not j.low and j.id not in skip}
        for job in queue:
            if job.units > max_units or job.function_key in full or job.id in skip:
                continue
            if skip_lanes and (name, job.function_key, job.units) in skip_lanes:
                continue
            if job.low and _flow_of(job) in normal:
                continue
            if warm is not None and job.function_key not in warm:
                continue
            if _under_cap(job, *counts):
                found.append((tier, job))
                break
    found.sort(key=lambda c: (c[0].rank, c[1].enqueued_at))
    return found


def _best(found: Sequence[tuple[Tier, Job]], now: float) -> tuple[Job, float]:
    """Rule 4 over non-empty ``found`` (in (rank, enqueued_at) order): the pick and its score."""
    best_tier, best = found[0]
    best_score = (now - best.enqueued_at) / best_tier.slo_s
    first_score = best_score
    for tier, job in found[1:]:
        score = (now - job.enqueued_at) / tier.slo_s
        if score > best_score:
            best_tier, best, best_score = tier, job, score
    # ``found`` is in (rank, enqueued_at) order and only a strictly higher score replaces the
    # best, so ties already went to the lower rank, then the earlier job. Below 1 the best score
    # does not count: found[0] (the lowest rank) wins.
    return (best, best_score) if best_score >= 1.0 else (found[0][1], first_score)


def pick(
    queues: Mapping[str, Sequence[Job]],
    now: float,
    *,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
    inflight_by_tenant: Mapping[str, int] = _NO_COUNTS,
    inflight_by_app: Mapping[str, int] = _NO_COUNTS,
    tenant_caps: Mapping[str, int] = _NO_COUNTS,
    app_caps: Mapping[str, int] = _NO_COUNTS,
) -> Job | None:
    """The SLO-normalised pick (module docstring, rule 4); None when no tier has a candidate.

    Pure: reads its arguments, changes nothing; the caller removes the job from its queue and
    counts it in flight.
    """
    found = _candidates(queues, tiers, inflight_by_tenant, inflight_by_app, tenant_caps, app_caps)
    return _best(found, now)[0] if found else None


def pick_strict(
    queues: Mapping[str, Sequence[Job]],
    now: float,
    *,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
    inflight_by_tenant: Mapping[str, int] = _NO_COUNTS,
    inflight_by_app: Mapping[str, int] = _NO_COUNTS,
    tenant_caps: Mapping[str, int] = _NO_COUNTS,
    app_caps: Mapping[str, int] = _NO_COUNTS,
) -> Job | None:
    """Strict priority, the baseline: the lowest-rank tier's candidate, whatever the waits.

    ``now`` is unused (kept so both picks share one signature).
    """
    found = _candidates(queues, tiers, inflight_by_tenant, inflight_by_app, tenant_caps, app_caps)
    return found[0][1] if found else None


_VOID = object()
"""``_held`` of a worker whose reservation is over cap: the reservation ends."""


def _held(
    mine: Job | None,
    others: Iterable[Job],
    tiers: Mapping[str, Tier],
    now: float,
    free_units: int,
    total_units: int,
    under_cap: Callable[[Job], bool],
    fifo: Callable[[Job], int],
    warm_first: Callable[[Job], bool] | None = None,
) -> Job | Blocked | object | None:
    """Rule W0, for a worker holding ``mine`` (None: no reservation) while ``others`` (every
    other reservation, or at least those that fit) are held elsewhere: the reserved job to
    take, ``Blocked`` (still draining), ``_VOID`` (this worker's reservation ends untaken) or
    None (no reservation applies: go on with W1-W5). ``fifo``: a job's place in its tier's
    FIFO order, which decides between reservations of one tier enqueued at the same time.
    ``warm_first``: whether this worker's warm work goes before another worker's reserved job
    (``_warm_first``)."""
    if mine is not None:
        if not under_cap(mine):
            return _VOID
        return Blocked(mine.units, mine) if mine.units > free_units else mine
    room = min(free_units, total_units)
    fits = sorted(
        ((tiers[j.tier], j) for j in others if j.units <= room and under_cap(j)),
        key=lambda c: (c[0].rank, c[1].enqueued_at, fifo(c[1])),
    )
    if not fits:
        return None
    job = _best(fits, now)[0]
    return None if warm_first is not None and warm_first(job) else job


def _warm_first(
    job: Job, here: Collection[str], warm_candidates: Callable[[], Sequence[object]]
) -> bool:
    """W0's exception: another worker's reserved ``job`` is left to it while its function is not
    idle here and ``warm_candidates()`` (W4's, of the jobs that fit the free units) is not
    empty."""
    return bool(here) and job.function_key not in here and bool(warm_candidates())


Hinted = Collection[tuple[str, str]]
"""(function key, hint) of each hint an idle runner of that function reports (W1)."""


def _hinted_away(
    job: Job, now: float, here: Hinted, elsewhere: Hinted, window_s: float = HINT_WAIT_S
) -> bool:
    """W1's exception: ``job``'s hint is reported by an idle runner on another worker and by
    none here, and ``job`` has waited less than ``window_s``."""
    if not job.hint or not elsewhere or now - job.enqueued_at >= window_s:
        return False
    pair = (job.function_key, job.hint)
    return pair in elsewhere and pair not in here


def _rank_of(found: Sequence[tuple[Tier, Job]], job: Job) -> int:
    """The rank of ``job``'s tier among the candidates ``found``."""
    return next(tier.rank for tier, j in found if j is job)


def warm_share(cold_start_s: float, service_s: float) -> float:
    """W4: the share of best's score a warm job's must reach to go first under overload, for a
    best whose app starts in ``cold_start_s`` and serves in ``service_s`` (0: not measured)."""
    if cold_start_s <= service_s or service_s <= 0:
        return WARM_SHARE
    return WARM_SHARE * (service_s / cold_start_s) ** COLD_WEIGHT


def _for_worker(
    candidates: Callable[[int], Sequence[tuple[Tier, Job]]],
    warm_candidates: Callable[[int], Sequence[tuple[Tier, Job]]],
    now: float,
    free_units: int,
    total_units: int,
    here: Collection[str],
    elsewhere: Collection[str],
    cold_start_s: Mapping[str, float],
    may_reserve: bool,
    hinted_away: Callable[[Job], bool] | None = None,
    left_to_busy: Callable[[Job], bool] | None = None,
    service_of: Callable[[str], float] | None = None,
) -> Job | Blocked | Elsewhere | None:
    """Rules W1-W5 over ``candidates(units)`` (rule 2, sorted, of jobs of at most ``units``)
    and, asked only when W4 needs them, ``warm_candidates(units)``. Without ``may_reserve``, W3
    backfills: the same rules over the candidates that fit the free units. ``hinted_away``:
    W1's exception (``_hinted_away``). ``left_to_busy``: W2b, asked of best; True when best's
    lane is left to its busy runners, which ``candidates`` then leave out (the indexed form
    leaves such lanes out of its orders itself and passes None). ``service_of``: an app's
    measured mean service time (0: none), for W4's ``warm_share``."""
    found = candidates(total_units)
    if not found:
        return None
    best, score = _best(found, now)
    if best.function_key in here:
        if hinted_away is not None and hinted_away(best):
            return Elsewhere(best)  # W1, its hint idle on another worker
        return best  # W1
    if best.function_key in elsewhere:
        return Elsewhere(best)  # W2
    if left_to_busy is not None and left_to_busy(best):  # W2b: the rules again, without it
        return _for_worker(candidates, warm_candidates, now, free_units, total_units, here,
                           elsewhere, cold_start_s, may_reserve, hinted_away,
                           left_to_busy, service_of)  # fmt: skip
    if best.units > free_units:  # W3
        if may_reserve:
            return Blocked(best.units, best)
        return _for_worker(candidates, warm_candidates, now, free_units, free_units, here,
                           elsewhere, cold_start_s, True, hinted_away, left_to_busy,
                           service_of)  # fmt: skip
    cold = cold_start_s.get(best.app, 0.0)
    young = score < 1.0 and now - best.enqueued_at < cold
    if here and (young or score >= 1.0):
        warm = warm_candidates(total_units)
        if warm:
            pick_warm, warm_score = _best(warm, now)
            share = WARM_SHARE
            if _rank_of(warm, pick_warm) <= _rank_of(found, best):
                share = warm_share(cold, service_of(best.app) if service_of is not None else 0.0)
            close = warm_score >= share * score
            if pick_warm.units <= free_units and (young or close):
                return pick_warm  # W4
    return best  # W5


def pick_for_worker(
    queues: Mapping[str, Sequence[Job]],
    now: float,
    *,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
    inflight_by_tenant: Mapping[str, int] = _NO_COUNTS,
    inflight_by_app: Mapping[str, int] = _NO_COUNTS,
    tenant_caps: Mapping[str, int] = _NO_COUNTS,
    app_caps: Mapping[str, int] = _NO_COUNTS,
    free_units: int,
    total_units: int,
    here: Collection[str] = (),
    elsewhere: Collection[str] = (),
    cold_start_s: Mapping[str, float] = _NO_TIMES,
    full: Collection[str] = (),
    worker: str = "",
    reserved: Mapping[str, Job] = MappingProxyType({}),
    max_reserved: int | None = None,
    hinted_here: Hinted = (),
    hinted_elsewhere: Hinted = (),
    hint_wait_s: float = HINT_WAIT_S,
    service_s: Mapping[str, float] = _NO_TIMES,
    idle: Collection[str] | None = None,
) -> Job | Blocked | Elsewhere | None:
    """What ``worker`` takes (module docstring, rules W0-W5); None when nothing is a candidate.

    ``here``/``elsewhere`` hold function keys (``Job.function_key``); ``cold_start_s`` maps an
    app to its measured cold start (missing: 0, so its jobs are never young). ``full``: the
    functions whose runners on this worker are all busy at their max_concurrency; their jobs are
    not candidates here (the worker could not start them now: it must not hoard them).
    ``reserved``: worker -> the job it drains for; those jobs stay in ``queues`` but are not
    candidates. Pure, like ``pick``: the caller removes a returned job from its queue and counts
    it in flight, and keeps ``reserved``: a ``Blocked`` answer reserves its ``job`` for
    ``worker``; any other answer ends ``worker``'s reservation (taken, or back in its queue), and
    a returned job reserved by another worker is no longer reserved. ``hinted_here`` and
    ``hinted_elsewhere``: (function key, hint) pairs of the idle runners here and on the other
    workers (W1); ``hint_wait_s``: W1's window, in the unit of ``now``. ``service_s``: each
    app's measured mean service time, in the unit of ``cold_start_s`` (an app without one is
    never left to its busy runners, W2b); ``idle``: the functions with an idle runner on any
    worker (default: ``here`` and ``elsewhere``).
    """
    counts = (inflight_by_tenant, inflight_by_app, tenant_caps, app_caps)
    others = [j for w, j in reserved.items() if w != worker]
    by_name = {t.name: t for t in tiers}
    place = {j.id: i for queue in queues.values() for i, j in enumerate(queue)}
    every = {j.id for j in reserved.values()}
    room = min(free_units, total_units)
    held = _held(reserved.get(worker), others, by_name, now, free_units, total_units,
                 lambda j: _under_cap(j, *counts), lambda j: place[j.id],
                 lambda job: _warm_first(job, here, lambda: _candidates(
                     queues, tiers, *counts, max_units=room, warm=here, full=full,
                     skip=every)))  # fmt: skip
    if isinstance(held, Job | Blocked):
        return held
    skip = {j.id for w, j in reserved.items() if w != worker or held is not _VOID}
    skip_lanes: set[tuple[str, str, int]] = set()
    idle_fns = set(here) | set(elsewhere) if idle is None else idle
    queued_by_app: dict[str, int] = {}
    for queue in queues.values():
        for j in queue:
            if j.id not in skip:
                queued_by_app[j.app] = queued_by_app.get(j.app, 0) + 1

    def left_to_busy(job: Job) -> bool:
        app = job.app
        if job.function_key in idle_fns or not busy_runners_first(
            now - job.enqueued_at,
            inflight_by_app.get(app, 0),
            queued_by_app.get(app, 0),
            cold_start_s.get(app, 0.0),
            service_s.get(app, 0.0),
        ):
            return False
        skip_lanes.add((job.tier, job.function_key, job.units))
        return True

    return _for_worker(
        lambda units: _candidates(
            queues, tiers, *counts, max_units=units, full=full, skip=skip, skip_lanes=skip_lanes
        ),
        lambda units: _candidates(
            queues, tiers, *counts, max_units=units, warm=here, full=full, skip=skip
        ),
        now,
        free_units,
        total_units,
        here,
        elsewhere,
        cold_start_s,
        max_reserved is None or len(others) < max_reserved,
        lambda job: _hinted_away(job, now, hinted_here, hinted_elsewhere, hint_wait_s),
        left_to_busy if service_s else None,
        lambda app: service_s.get(app, 0.0),
    )


def busy_runners_first(
    waited_s: float, inflight: int, queued: int, cold_start_s: float, service_s: float
) -> bool:
    """W2b: whether a job that has waited ``waited_s`` is left to its app's busy runners
    rather than cold-started: less than a cold start has passed, the app has ``inflight``
    requests running, and those runners, each serving one request per ``service_s``, reach all
    ``queued`` requests of the app within about a cold start (``queued * service_s <=
    inflight * cold_start_s``). A job left so waits at most a cold start for that reason."""
    return (
        inflight > 0
        and service_s > 0
        and waited_s < cold_start_s
        and queued * service_s <= inflight * cold_start_s
    )


def max_reserved(workers: int) -> int:
    """W3's limit for a pool of ``workers`` workers: ``DRAIN_SHARE`` of them, at least one."""
    return max(1, math.ceil(workers * DRAIN_SHARE))


def admit(tier: str, queued_in_tier: int, tiers: Sequence[Tier] = DEFAULT_TIERS) -> bool:
    """Whether one more job fits in ``tier``'s bounded queue (False: answer 429 + Retry-After).

    Lower tiers have smaller bounds, so under a flood they are shed first. Raises ValueError
    for an unknown tier.
    """
    for t in tiers:
        if t.name == tier:
            return queued_in_tier < t.max_queued
    raise ValueError(f"unknown tier {tier!r}")


def retry_after_s(queued_ahead: int, mean_service_s: float, capacity: int) -> int:
    """Seconds for a Retry-After header: the time to serve ``queued_ahead`` jobs, in [1, 600].

    ``ceil(queued_ahead * mean_service_s / max(capacity, 1))`` where ``capacity`` is how many
    jobs run at once.
    """
    raw = math.ceil(max(queued_ahead, 0) * max(mean_service_s, 0.0) / max(capacity, 1))
    return min(max(raw, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)


def estimate_start_s(
    position: int, mean_service_s: float, capacity: int, cold_start_s: float, warm: bool
) -> float:
    """Expected seconds until a queued job starts running: the queue ETA shown to callers.

    ``position`` jobs are ahead of it (0 = next), served ``capacity`` at a time, each taking
    ``mean_service_s``; a job whose app has no warm runner also pays ``cold_start_s``.
    """
    queue_s = max(position, 0) * max(mean_service_s, 0.0) / max(capacity, 1)
    return queue_s + (0.0 if warm else max(cold_start_s, 0.0))
