"""The autoscaler: how many workers each pool should have, from the queue itself.

Every ``interval_s`` (``klieg autoscaler``) it reads each pool's demand from Redis (requests
waiting per tier and the oldest one's wait, per app and function from the lane index; the slots
busy now and the idle warm runners from the workers' heartbeats; each app's measured service
and cold-start times; what ``min_concurrency`` and ``concurrency_buffer`` keep warm, scale
overrides applied), turns it into the slots the pool needs to start every waiting request
within its tier's SLO (``slots_needed``), and into workers per pool (``Scaler.decide``):

- up at once, before the SLOs break: a request that has waited ``w`` of its tier's ``slo_s``
  must start within ``slo_s - w - cold_s`` (its app's cold start: a new worker's runner
  cold-starts first; none for as many of a function's requests as it has idle warm runners),
  so its share of the slots is its app's ``service_s / that budget``;
- down only once the pool has wanted fewer workers for ``cooldown_s`` without a break;
- never below ``min_workers`` nor what ``min_concurrency`` needs, never above ``max_workers``;
- a burst pool (``burst_for``: borrowed capacity, such as a training cluster, whose workers
  serve the main pool's queue) gets only what the main pool cannot hold at its maximum, and is
  handed back first: the main pool does not shrink while its burst pool has workers.

An ``Adapter`` applies the sizes: ``LocalAdapter`` starts and stops real ``klieg worker``
processes on this machine; ``KubernetesAdapter`` sets the replicas of each pool's Deployment
through its scale subresource (the official client). A pool the adapter cannot reach keeps its
last good size and the error is logged, once per change of error. The same need, in slots, is
``klieg_pool_slots_needed{pool}`` in ``GET /metrics``: a KEDA ``ScaledObject`` can scale on it
instead (``infra/k8s``), with the slots of one worker as its target value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from klieg.exceptions import InvalidRequestError
from klieg.types import AppSpec
from klieg_platform import keys
from klieg_platform.broker import Broker, Depth, LaneDepth
from klieg_platform.config import Settings, touch_probe
from klieg_platform.local import stop_workers
from klieg_platform.scheduler import Tier
from klieg_platform.unreachable import root_cause

log = logging.getLogger("klieg.autoscaler")

DEFAULT_SERVICE_S = 10.0
"""The service time assumed before any request has been measured."""
MIN_BUDGET_S = 1.0


# ---- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    """One scaled group of workers. ``serves``: the pool whose queue its workers take (itself,
    or for a burst pool the pool it lends to); ``slots``: slots (GPUs, or CPU slots) per worker.
    ``deployment``/``namespace``: its Kubernetes Deployment."""

    name: str
    max_workers: int
    slots: int = 1
    min_workers: int = 0
    cooldown_s: float = 300.0
    burst_for: str | None = None
    deployment: str = ""
    namespace: str = "klieg"

    @property
    def serves(self) -> str:
        return self.burst_for or self.name


FIELDS = {"max_workers", "slots", "min_workers", "cooldown_s", "burst_for", "deployment",
          "namespace"}  # fmt: skip


def _whole(where: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidRequestError(f"{where}: must be a whole number of at least {least}")
    return value


def parse_plans(doc: Any) -> dict[str, PoolPlan]:
    """The ``pools:`` mapping of an autoscaler config (the ConfigMap's ``pools.yaml``), checked:
    a bad value is an ``InvalidRequestError`` naming its field."""
    pools = doc.get("pools") if isinstance(doc, dict) else None
    if not isinstance(pools, dict) or not pools:
        raise InvalidRequestError("pools: a mapping of pool name to its scaling settings")
    out: dict[str, PoolPlan] = {}
    for name, raw in pools.items():
        where = f"pools.{name}"
        if not isinstance(raw, dict):
            raise InvalidRequestError(f"{where}: a mapping of settings")
        unknown = set(raw) - FIELDS
        if unknown:
            raise InvalidRequestError(f"{where}.{sorted(unknown)[0]}: not a setting")
        if "max_workers" not in raw:
            raise InvalidRequestError(f"{where}.max_workers: required")
        most = _whole(f"{where}.max_workers", raw["max_workers"], 1)
        least = _whole(f"{where}.min_workers", raw.get("min_workers", 0), 0)
        if least > most:
            raise InvalidRequestError(f"{where}.min_workers: above max_workers ({most})")
        cooldown = raw.get("cooldown_s", 300.0)
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or cooldown < 0:
            raise InvalidRequestError(f"{where}.cooldown_s: a number of seconds, 0 or more")
        out[str(name)] = PoolPlan(
            name=str(name),
            max_workers=most,
            slots=_whole(f"{where}.slots", raw.get("slots", 1), 1),
            min_workers=least,
            cooldown_s=float(cooldown),
            burst_for=str(raw["burst_for"]) if raw.get("burst_for") else None,
            deployment=str(raw.get("deployment") or f"klieg-worker-{str(name).lower()}"),
            namespace=str(raw.get("namespace") or "klieg"),
        )
    for plan in out.values():
        if plan.burst_for is None:
            continue
        main = out.get(plan.burst_for)
        if main is None or main.burst_for is not None:
            raise InvalidRequestError(
                f"pools.{plan.name}.burst_for: {plan.burst_for!r} is not a main pool here"
            )
        if [p.name for p in out.values() if p.burst_for == plan.burst_for] != [plan.name]:
            raise InvalidRequestError(f"pools.{plan.name}.burst_for: one burst pool per pool")
    return out


def load_plans(path: Path) -> dict[str, PoolPlan]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequestError(f"{path} is not YAML: {exc}") from None
    return parse_plans(doc)


# ---- demand and decisions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """Requests of one function waiting in one tier of a pool, with its app's measured times."""

    tier: str
    queued: int
    service_s: float = DEFAULT_SERVICE_S
    cold_s: float = 0.0
    warm: int = 0
    """Idle warm runners of the function on the pool's workers: as many of these requests
    start on one without a cold start."""
    units: int = 1
    """Slots each of these requests takes (a function's GPUs)."""


@dataclass(frozen=True)
class Demand:
    """What one pool is asked to do now. ``waiting`` breaks the queues down by function; the
    requests of ``queued`` it does not cover (reserved ones, or all of them when it is empty)
    count with the pool's ``service_s`` and ``cold_s``."""

    queued: Mapping[str, int] = field(default_factory=dict)
    """tier -> requests waiting"""
    oldest_wait_s: Mapping[str, float] = field(default_factory=dict)
    busy_slots: int = 0
    """Slots serving (or starting for) requests now."""
    service_s: float = DEFAULT_SERVICE_S
    cold_s: float = 0.0
    warm_slots: int = 0
    """Slots ``min_concurrency`` keeps warm whatever the load."""
    buffer_slots: int = 0
    """Slots ``concurrency_buffer`` keeps warm beyond the busy ones."""
    waiting: tuple[Waiting, ...] = ()


def slots_needed(demand: Demand, tiers: Mapping[str, Tier]) -> int:
    """Slots that serve the requests running now and start every waiting one within its tier's
    SLO: each waiting request needs its app's ``service_s`` of its ``units`` slots within the
    time its tier has left (its SLO less the oldest wait and, unless an idle warm runner takes
    it, its app's cold start; at least ``MIN_BUDGET_S``)."""
    need = float(demand.busy_slots + demand.buffer_slots)
    for tier, queued in demand.queued.items():
        if queued <= 0:
            continue
        slo = tiers[tier].slo_s if tier in tiers else DEFAULT_SERVICE_S
        left = slo - demand.oldest_wait_s.get(tier, 0.0)
        mine = [w for w in demand.waiting if w.tier == tier]
        rest = queued - sum(w.queued for w in mine)
        groups = [*mine, Waiting(tier, rest, demand.service_s, demand.cold_s)]
        for group in groups:
            warm = min(max(group.warm, 0), max(group.queued, 0))
            for n, cold_s in ((warm, 0.0), (group.queued - warm, group.cold_s)):
                if n > 0:
                    budget = max(left - cold_s, MIN_BUDGET_S, group.service_s)
                    need += n * group.units * group.service_s / budget
    queued_any = any(q > 0 for q in demand.queued.values())
    return max(math.ceil(need - 1e-9), demand.warm_slots, 1 if queued_any else 0)


class Scaler:
    """Sizes per pool from demands, remembering what each pool wanted over its cool-down."""

    def __init__(self, plans: Mapping[str, PoolPlan], tiers: Mapping[str, Tier]) -> None:
        self.plans = dict(plans)
        self.tiers = dict(tiers)
        self._wants: dict[str, deque[tuple[float, int]]] = {}
        """Per plan, (when, workers wanted) over the last ``cooldown_s``."""
        self._sizes: dict[str, int] = {}

    def wanted(self, demands: Mapping[str, Demand]) -> dict[str, int]:
        """Workers per plan for these demands, before cool-downs: the main pool first, up to
        its maximum; what is left over goes to its burst pool."""
        out: dict[str, int] = {}
        for plan in self.plans.values():
            if plan.burst_for is not None:
                continue
            slots = slots_needed(demands.get(plan.name, Demand()), self.tiers)
            main = max(plan.min_workers, min(plan.max_workers, math.ceil(slots / plan.slots)))
            out[plan.name] = main
            burst = next((b for b in self.plans.values() if b.burst_for == plan.name), None)
            if burst is not None:
                rest = max(0, slots - plan.max_workers * plan.slots)
                out[burst.name] = max(
                    burst.min_workers, min(burst.max_workers, math.ceil(rest / burst.slots))
                )
        return out

    def decide(self, demands: Mapping[str, Demand], now: float) -> dict[str, int]:
        """Workers per plan now: the most the pool has wanted over its last ``cooldown_s`` (so
        up at once, and down only to what it has not exceeded for a whole cool-down); a main
        pool keeps its size while its burst pool still has workers (the borrowed capacity goes
        back first)."""
        wanted = self.wanted(demands)
        out: dict[str, int] = {}
        bursts = sorted(self.plans.values(), key=lambda p: p.burst_for is None)
        for plan in bursts:  # burst pools first: their sizes gate their main pool's
            history = self._wants.setdefault(plan.name, deque())
            history.append((now, wanted[plan.name]))
            while now - history[0][0] > plan.cooldown_s:
                history.popleft()
            size = max(want for _, want in history)
            burst = next((b for b in self.plans.values() if b.burst_for == plan.name), None)
            if burst is not None and out.get(burst.name, 0) > 0:
                size = max(size, self._sizes.get(plan.name, 0))
            out[plan.name] = self._sizes[plan.name] = size
        return out


# ---- reading the demand -------------------------------------------------------------------------


async def read_demands(
    broker: Broker,
    warm_slots: Mapping[str, int],
    pools: Sequence[str],
    *,
    depths: list[Depth] | None = None,
    live: list[tuple[str, dict[str, Any]]] | None = None,
    buffer_slots: Mapping[str, int] | None = None,
) -> dict[str, Demand]:
    """Each pool's demand from Redis: queues per tier, and per function from the lane index;
    the oldest wait of a request that can start (the lane orders' heads) and each capped app's
    room under its cap; busy slots and idle warm runners from the workers' heartbeats; each
    app's measured service and cold-start times (an app not measured yet: the mean over the
    apps that are). ``depths`` and ``live``: the queues and heartbeats, where the caller has
    just read them."""
    if depths is None:
        depths = await broker.queue.depths()
    if live is None:
        live = await broker.workers.live()
    lanes, heads, room, service, cold = await asyncio.gather(  # concurrent reads, not in turn
        broker.queue.lanes(pools),
        broker.queue.heads_waited(pools),
        broker.queue.app_room(),
        broker.stats.means("service"),
        broker.stats.means("cold"),
    )
    busy, idle = fleet_capacity(live)
    out = {}
    for pool in pools:
        mine = [d for d in depths if d.pool == pool]
        out[pool] = pool_demand(
            queued={d.tier: d.queued for d in mine},
            oldest_wait_s={d.tier: heads.get((pool, d.tier), 0.0) for d in mine},
            busy_slots=busy.get(pool, 0),
            lanes=[n for n in lanes if n.pool == pool],
            idle=idle.get(pool, Counter()) + idle.get(keys.ALL_POOLS, Counter()),
            service=service,
            cold=cold,
            warm_slots=warm_slots.get(pool, 0),
            buffer_slots=(buffer_slots or {}).get(pool, 0),
            room=room,
        )
    return out


def pool_demand(
    *,
    queued: Mapping[str, int],
    oldest_wait_s: Mapping[str, float],
    busy_slots: int,
    lanes: Sequence[LaneDepth],
    idle: Counter[str],
    service: Mapping[str, float],
    cold: Mapping[str, float],
    warm_slots: int = 0,
    buffer_slots: int = 0,
    room: Mapping[str, int] | None = None,
) -> Demand:
    """One pool's ``Demand`` from its signals: queues per tier, its lanes, busy slots, idle warm
    runners per function, the apps' measured times and what ``min_concurrency`` and
    ``concurrency_buffer`` keep (``read_demands`` reads them from Redis and the registry; the
    simulator has them from its replay). ``room``: per capped app ("owner/app"), how many more
    of its requests its in-flight cap lets start now; the rest of its queued requests are no
    demand (more workers would not start them), the most important tiers' first in. So
    ``oldest_wait_s`` should be the oldest wait of a request that can start (the heads of the
    lane index, which leaves capped apps and tenants out)."""
    capped: Counter[str] = Counter()
    waiting = waiting_by_function(lanes, idle, service, cold, room, capped)
    if capped:
        queued = {tier: max(0, n - capped[tier]) for tier, n in queued.items()}
    return Demand(
        queued=queued,
        oldest_wait_s=oldest_wait_s,
        busy_slots=busy_slots,
        service_s=_weighted([(w.queued, w.service_s) for w in waiting], service, DEFAULT_SERVICE_S),
        cold_s=_weighted([(w.queued, w.cold_s) for w in waiting], cold, 0.0),
        warm_slots=warm_slots,
        buffer_slots=buffer_slots,
        waiting=tuple(waiting),
    )


def fleet_capacity(
    live: Sequence[tuple[str, dict[str, Any]]],
) -> tuple[dict[str, int], dict[str, Counter[str]]]:
    """From the heartbeats: per pool the slots busy (serving or starting), and the idle warm
    runners per "revision/function" (under ``*``: those of workers serving every pool)."""
    busy: dict[str, int] = {}
    idle: dict[str, Counter[str]] = {}
    for _, doc in live:
        for runner in doc.get("detail", []):
            if runner["state"] in ("busy", "starting"):
                for pool in doc["pools"]:
                    busy[pool] = busy.get(pool, 0) + int(runner["slots"])
        for pool in doc["pools"]:
            idle.setdefault(pool, Counter()).update(doc.get("idle", []))
    return busy, idle


def waiting_by_function(
    lanes: Sequence[LaneDepth],
    idle: Counter[str],
    service: Mapping[str, float],
    cold: Mapping[str, float],
    room: Mapping[str, int] | None = None,
    capped: Counter[str] | None = None,
) -> list[Waiting]:
    """A pool's waiting requests per tier and function, each with its app's service and cold
    start times (unmeasured: the mean over measured apps, else the defaults) and the idle warm
    runners of its function, given to the most important tier first (``lanes`` come in tier
    order). With ``room`` (``pool_demand``), a capped app's requests past its room are left
    out, and counted per tier in ``capped``."""
    service_s = _plain_mean(service, DEFAULT_SERVICE_S)
    cold_s = _plain_mean(cold, 0.0)
    per: dict[tuple[str, str], Waiting] = {}
    free = Counter(idle)
    left = dict(room or {})
    for lane in lanes:
        n = lane.queued
        if lane.app in left:
            n = min(n, max(left[lane.app], 0))
            left[lane.app] -= n
            if capped is not None and n < lane.queued:
                capped[lane.tier] += lane.queued - n
        prior = per.get((lane.tier, lane.function))
        if n <= 0 and prior is None:
            continue
        queued = n + (prior.queued if prior else 0)
        warm = min(free[lane.function], n)
        free[lane.function] -= warm
        per[(lane.tier, lane.function)] = Waiting(
            lane.tier, queued, service.get(lane.app, service_s), cold.get(lane.app, cold_s),
            warm + (prior.warm if prior else 0), lane.units,
        )  # fmt: skip
    return list(per.values())


def _plain_mean(means: Mapping[str, float], default: float) -> float:
    return sum(means.values()) / len(means) if means else default


def _weighted(
    counted: Sequence[tuple[int, float]], means: Mapping[str, float], default: float
) -> float:
    """A pool's time for the requests its breakdown does not cover: the mean of its waiting
    functions' times weighted by how many wait; with none waiting, the mean over every
    measured app (``means``), else ``default``."""
    total = sum(n for n, _ in counted)
    if total <= 0:
        return _plain_mean(means, default)
    return sum(n * t for n, t in counted) / total


def warm_slots(revisions: Sequence[Any]) -> dict[str, int]:
    """Slots per pool that aliased functions' ``min_concurrency`` keeps warm."""
    return _slots_for(revisions, "min_concurrency")


def buffer_slots(revisions: Sequence[Any]) -> dict[str, int]:
    """Slots per pool that aliased functions' ``concurrency_buffer`` keeps warm beyond their
    busy runners."""
    return _slots_for(revisions, "concurrency_buffer")


def _slots_for(revisions: Sequence[Any], runners: str) -> dict[str, int]:
    """Per pool, the slots of the runners each function's ``runners`` setting asks for."""
    out: dict[str, int] = {}
    for rev in revisions:
        for fn in AppSpec.model_validate(rev.spec).functions:
            if (count := int(getattr(fn, runners))) > 0:
                out[fn.pool] = out.get(fn.pool, 0) + count * max(fn.num_gpus, 1)
    return out


# ---- adapters -----------------------------------------------------------------------------------


class AdapterError(Exception):
    """The adapter could not read or set a pool's size. ``cause``: the part of the message that
    does not name the pool (the same for every pool when the API server does not answer)."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message


class Adapter(Protocol):
    def current(self, plan: PoolPlan) -> int: ...

    def scale(self, plan: PoolPlan, workers: int) -> None: ...


class LocalAdapter:
    """Real ``klieg worker`` processes on this machine, ``--pool <serves> --slots <slots>``,
    with the environment given (``local.settings_env``). Scaling down sends SIGTERM to the
    newest: a worker stops taking work, finishes what runs within its drain (``KLIEG_DRAIN_S``
    of ``env``) and hands back the rest, then exits. The workers belong to the autoscaler that
    started them: ``close`` stops them all the same way (``klieg autoscaler --once`` with this
    adapter only decides: workers it started would outlive it)."""

    def __init__(self, env: Mapping[str, str], *, python: str = sys.executable) -> None:
        self.env = dict(env)
        self.python = python
        self.drain_s = Settings.from_env(self.env).drain_s
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.stopping: list[subprocess.Popen[bytes]] = []
        self.started: list[subprocess.Popen[bytes]] = []
        """Every worker started here, in order."""

    def _alive(self, plan: PoolPlan) -> list[subprocess.Popen[bytes]]:
        procs = [p for p in self.procs.get(plan.name, []) if p.poll() is None]
        self.procs[plan.name] = procs
        self.stopping = [p for p in self.stopping if p.poll() is None]
        return procs

    def current(self, plan: PoolPlan) -> int:
        return len(self._alive(plan))

    def scale(self, plan: PoolPlan, workers: int) -> None:
        procs = self._alive(plan)
        while len(procs) < workers:
            cmd = [self.python, "-m", "klieg_platform.worker", "--pool", plan.serves,
                   "--slots", str(plan.slots), "--no-workflows"]  # fmt: skip
            try:
                procs.append(subprocess.Popen(cmd, env=self.env))
                self.started.append(procs[-1])
            except OSError as exc:
                raise AdapterError(f"cannot start a worker for {plan.name}: {exc}") from exc
        while len(procs) > workers:
            proc = procs.pop()
            proc.send_signal(signal.SIGTERM)
            self.stopping.append(proc)

    def close(self) -> None:
        """Stop every worker started here as ``klieg up`` does (``local.stop_workers``: each
        drains first, and is killed past its drain and a margin)."""
        every = [p for procs in self.procs.values() for p in procs] + self.stopping
        stop_workers(every, self.drain_s)


class KubernetesAdapter:
    """Each plan's Deployment, through its scale subresource (``apps/v1``). ``api``: an
    ``AppsV1Api``; by default from the in-cluster service account, else ``~/.kube/config``."""

    def __init__(self, api: Any | None = None) -> None:
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.AppsV1Api()
        self.api = api
        # its retries of a connection are logged as warnings, per request: the adapter's error
        # says what failed, once
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    def current(self, plan: PoolPlan) -> int:
        try:
            scale = self.api.read_namespaced_deployment_scale(plan.deployment, plan.namespace)
        except Exception as exc:
            raise self._error("read", plan, exc) from exc
        spec = scale.spec
        return int(spec.replicas or 0) if spec is not None else 0

    def scale(self, plan: PoolPlan, workers: int) -> None:
        body = {"spec": {"replicas": workers}}
        try:
            self.api.patch_namespaced_deployment_scale(plan.deployment, plan.namespace, body)
        except Exception as exc:
            raise self._error("scale", plan, exc) from exc

    def _error(self, verb: str, plan: PoolPlan, exc: Exception) -> AdapterError:
        """One line: the API server's answer (``HTTP 404 Not Found``), or that it did not answer
        and why (``connection refused``), not the HTTP library's retry story."""
        where = f"cannot {verb} deployment {plan.namespace}/{plan.deployment}"
        status = getattr(exc, "status", None)
        if status:
            return AdapterError(
                f"{where}: HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
            )
        host = getattr(getattr(getattr(self.api, "api_client", None), "configuration", None),
                       "host", None) or "?"  # fmt: skip
        cause = f"no answer from the Kubernetes API server at {host} ({root_cause(exc)})"
        return AdapterError(f"{where}: {cause}", cause)


# ---- the loop -----------------------------------------------------------------------------------


@dataclass
class Step:
    """One round: the sizes decided, applied, and the pools that could not be reached."""

    decided: dict[str, int]
    applied: dict[str, int]
    errors: dict[str, str]


class Autoscaler:
    def __init__(
        self,
        broker: Broker,
        registry: Any,
        plans: Mapping[str, PoolPlan],
        adapter: Adapter,
        *,
        interval_s: float = 5.0,
        dry_run: bool = False,
        probe_dir: Path | None = None,
    ) -> None:
        self.broker = broker
        self.probe_dir = probe_dir
        self.registry = registry
        self.plans = dict(plans)
        self.scaler = Scaler(plans, broker.queue.tiers)
        self.adapter = adapter
        self.interval_s = interval_s
        self.dry_run = dry_run
        self._said: dict[str, str] = {}
        self._stopping = asyncio.Event()

    async def step(self, now: float | None = None) -> Step:
        revisions = await asyncio.to_thread(self.registry.aliased_revisions)
        pools = sorted({p.serves for p in self.plans.values()})
        demands = await read_demands(
            self.broker, warm_slots(revisions), pools, buffer_slots=buffer_slots(revisions)
        )
        decided = self.scaler.decide(demands, time.monotonic() if now is None else now)
        applied: dict[str, int] = {}
        errors: dict[str, str] = {}
        news: dict[str, list[str]] = {}
        for name, workers in decided.items():
            plan = self.plans[name]
            try:
                have = await asyncio.to_thread(self.adapter.current, plan)
                if have != workers and not self.dry_run:
                    await asyncio.to_thread(self.adapter.scale, plan, workers)
                    log.info("pool %s: %d -> %d workers", name, have, workers)
                applied[name] = workers if not self.dry_run else have
                self._said.pop(name, None)
            except AdapterError as exc:
                errors[name] = str(exc)
                if self._said.get(name) != str(exc):
                    news.setdefault(exc.cause, []).append(name)
                    self._said[name] = str(exc)
        for cause, names in news.items():  # one line per cause, however many pools it hits
            if len(names) == 1:
                log.error("pool %s keeps its size: %s", names[0], errors[names[0]])
            else:
                log.error("pools %s keep their sizes: %s", ", ".join(names), cause)
        return Step(decided, applied, errors)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """A round every ``interval_s`` until ``stop()``; each touches ``probe_dir/alive``, and
        ``ready`` once it read Redis (the Kubernetes exec probes read their age)."""
        from klieg_platform.broker import UNAVAILABLE

        while not self._stopping.is_set():
            touch_probe(self.probe_dir, "alive")
            try:
                await self.step()
            except UNAVAILABLE as exc:  # sizes stay as they are until Redis answers
                log.warning("autoscaler round skipped: Redis is unavailable (%s)", exc)
            else:
                touch_probe(self.probe_dir, "ready")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
