"""The ordering policy: which queued job a free GPU slot takes next. Plain code, no I/O.

The live broker applies the same rule inside one Redis Lua script, and the simulator
(``klieg_platform.simulator``) replays traces through these very functions in virtual time, so
the rule is written here once, literally:

1. Tiers. Each tier has a queue-time SLO (``slo_s``), a queue bound (``max_queued``) and a
   ``rank``: 0 is the most important (paid) tier, higher ranks are less important. ``queues``
   maps a tier name to its queued jobs in FIFO order (oldest first).
2. Candidates. For each tier, the candidate is the first job in FIFO order whose tenant has
   fewer jobs in flight than its cap AND whose app has fewer jobs in flight than its cap. At most
   ``SCAN`` (64) jobs are examined per tier; a tier whose first ``SCAN`` jobs are all capped has
   no candidate this round. Caps are mappings name -> cap; a name missing from a cap mapping is
   unlimited; a name missing from an in-flight mapping has 0 in flight.
3. Score. A candidate's score is ``(now - enqueued_at) / slo_s`` of its tier: the share of its
   SLO that its wait has used ("1 minute of an api job's wait weighs as much as 10 minutes of a
   light job's").
4. Pick. If any candidate has score >= 1 (it is over its SLO), the candidate with the highest
   score wins; ties go to the lower rank, then to the earlier ``enqueued_at``. Otherwise
   (everyone is within SLO) the candidate of the lowest rank wins: paid first, FIFO in its tier.

Consequences: no tier starves (a waiting job's score grows without bound until it is the
highest); under overload every tier ends up equally late relative to its SLO; while everyone is
within SLO a paid job still goes first. A tenant at its cap waits without blocking others.

``pick_for_worker`` is what the live dispatch runs: the same pick, asked by one worker, plus warm
affinity and GPU draining. The worker states its free units, its total units, ``here`` (the
function keys with an idle warm runner on it), ``elsewhere`` (function keys idle on other
workers) and the apps' measured cold starts (``cold_start_s``, by app). A job takes
``max(gpus, 1)`` units; its function key is ``fn`` (the app when empty). The candidates are rule
2's, except that a job needing more units than the worker's total is never one; ``best`` is rule
4's pick among them. Then:

W1. best's function is idle here: take best;
W2. best needs more units than are free: ``Blocked(units)``, take nothing (the worker drains
    until it fits, so a big job is not starved by small ones);
W3. best is young (within its SLO, and it has waited less than its app's cold start) and some
    job whose function is idle here is a candidate by the same test (per tier, the first such
    job among the same ``SCAN``, under caps, fitting the total): the best of those by rule 4, if
    it fits the free units; no cold start;
W4. best is young and its function is idle elsewhere: ``Elsewhere()``, take nothing (the warm
    worker serves it);
W5. otherwise best, paying a cold start.

So warm work goes first only while that is better for the queue than a cold start: once best
has waited as long as a cold start (or is over its SLO), it is served where asked.

``pick_strict`` is the strict-priority baseline the policy is measured against: the lowest rank
with a candidate wins, FIFO within it (same candidates, same caps). Back pressure (``admit``,
``retry_after_s``) and the queue ETA (``estimate_start_s``) live here too, so the gateway, the
broker and the simulator share one set of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Protocol

SCAN = 64
"""How many queued jobs per tier ``pick`` examines for one whose tenant and app are under cap."""

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


@dataclass(frozen=True, slots=True)
class Job:
    """The scheduler's view of one queued job. ``tier`` names the queue the job sits in."""

    id: str
    tier: str
    tenant: str
    app: str
    enqueued_at: float
    gpus: int = 1
    fn: str = ""
    """The function the job runs ("revision/function" live); empty: the app is the function."""

    @property
    def function_key(self) -> str:
        """What ``here``/``elsewhere`` of ``pick_for_worker`` name: ``fn``, else ``app``."""
        return self.fn or self.app

    @property
    def units(self) -> int:
        """Worker units (GPUs) the job takes: ``gpus``, at least one."""
        return max(self.gpus, 1)


@dataclass(frozen=True, slots=True)
class Blocked:
    """``pick_for_worker`` took nothing: the best job needs ``units``, more than are free."""

    units: int


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """``pick_for_worker`` took nothing: the best job is young and its function is idle warm on
    another worker, which should serve it without a cold start."""


class PickFn(Protocol):
    """The signature ``pick`` and ``pick_strict`` share (what the simulator takes)."""

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


class WorkerPickFn(Protocol):
    """The signature of ``pick_for_worker`` (what ``simulator.simulate_per_worker`` takes)."""

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
        free_units: int,
        total_units: int,
        here: Collection[str] = ...,
        elsewhere: Collection[str] = ...,
        cold_start_s: Mapping[str, float] = ...,
    ) -> Job | Blocked | Elsewhere | None: ...


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
) -> list[tuple[Tier, Job]]:
    """Per tier, the first of its first SCAN jobs whose tenant and app are under cap, that takes
    at most ``max_units`` units and (when ``warm`` is given) whose function key is in ``warm``.

    The result is sorted by (rank, enqueued_at).

    Raises ValueError for a non-empty queue whose tier is not in ``tiers`` (it would never be
    served).
    """
    by_name = {t.name: t for t in tiers}
    found: list[tuple[Tier, Job]] = []
    for name, queue in queues.items():
        if not queue:
            continue
        tier = by_name.get(name)
        if tier is None:
            raise ValueError(f"jobs queued in unknown tier {name!r}")
        if max_units < 1:
            continue  # every job takes at least one unit
        for job in islice(queue, SCAN):
            if job.gpus > max_units:  # units > max_units, as max_units >= 1 here
                continue
            if warm is not None and job.function_key not in warm:
                continue
            if job.function_key in full:
                continue
            cap = tenant_caps.get(job.tenant)
            if cap is not None and inflight_by_tenant.get(job.tenant, 0) >= cap:
                continue
            cap = app_caps.get(job.app)
            if cap is not None and inflight_by_app.get(job.app, 0) >= cap:
                continue
            found.append((tier, job))
            break
    found.sort(key=lambda c: (c[0].rank, c[1].enqueued_at))
    return found


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
) -> Job | Blocked | Elsewhere | None:
    """What one worker takes (module docstring, rules W1-W5); None when nothing is a candidate.

    ``here``/``elsewhere`` hold function keys (``Job.function_key``); ``cold_start_s`` maps an
    app to its measured cold start (missing: 0, so its jobs are never young). ``full``: the
    functions whose runners on this worker are all busy at their max_concurrency; their jobs are
    not candidates here (the worker could not start them now: it must not hoard them). Pure,
    like ``pick``: the caller removes a returned job from its queue and counts it in flight.
    """
    counts = (inflight_by_tenant, inflight_by_app, tenant_caps, app_caps)
    found = _candidates(queues, tiers, *counts, max_units=total_units, full=full)
    if not found:
        return None
    best, score = _best(found, now)
    if best.function_key in here:
        return best  # W1
    if best.units > free_units:
        return Blocked(best.units)  # W2
    young = score < 1.0 and now - best.enqueued_at < cold_start_s.get(best.app, 0.0)
    if not young:
        return best  # W5
    if here:
        warm_found = _candidates(
            queues, tiers, *counts, max_units=total_units, warm=here, full=full
        )
        if warm_found:
            warm = _best(warm_found, now)[0]
            if warm.units <= free_units:
                return warm  # W3
    return Elsewhere() if best.function_key in elsewhere else best  # W4, W5


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
