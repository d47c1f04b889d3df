"""SLO-fair scheduling versus strict priority, replayed in virtual time.

    .venv/bin/python bench/scheduling.py [--trace FILE] [--hours H] [--gpus N] [--apps N]
                                         [--seed S] [--load L] [--cold-start-scale X]
                                         [--write-trace FILE] [--sweep]

Replays one trace three times through ``klieg_platform.simulator`` (the same cluster: workers,
warm runners, cold starts, tenant and app caps, the same indexed ``backlog.Backlog``) and prints
one JSON line on stdout: per-tier wait percentiles and SLO attainment of each run, cold starts,
GPU use (and the share of GPU time spent in cold starts, in all and per app archetype) and wall
time, the trace summary and the targets. Progress on stderr. The runs:

- ``policy``: what the live broker does. Each worker asks ``Backlog.pick_for_worker`` (the
  SLO-normalised pick plus reservations, warm affinity and backfill,
  ``simulator.simulate_per_worker``);
- ``policy_no_affinity``: ``Backlog.pick`` for the whole cluster, the job placed on any idle
  warm runner of its app, else where it fits (``simulator.simulate``);
- ``baseline``: ``Backlog.pick_strict`` (strict priority), placed like ``policy_no_affinity``.

Without ``--trace`` it generates a trace (``--write-trace FILE`` saves it for others to replay):
the five default tiers (TIER_MIX: share of requests, tenants with log-normal weights, in-flight
cap per tenant; queues unbounded, so waits show instead of shedding), apps of four archetypes
(APP_MIX, share of requests, service / cold start: image 1 GPU 5 s / 20 s, audio 1 GPU 10 s /
15 s, upscale 2 GPUs 15 s / 30 s, video 8 GPUs 120 s / 90 s, capped at 24 in flight), and a load
given as offered service GPU-seconds per second over the cluster's GPUs. The default is a launch
day over ``--hours`` (default 4): 1/6 of the time at 0.6, a ramp to 1.6 over 1/12, 1/4 at 1.6, a
ramp down to 0.5 over 1/12, the rest at 0.5. ``--load L`` holds L for the whole time instead
(``--load 0.7``: below capacity). ``--cold-start-scale X`` multiplies every app's cold start.

Scaling. TIER_MIX and APP_MIX describe a fleet of REFERENCE_GPUS (256); a fleet ``s`` times as
large gets ``s`` times the tenants in every tier (each tenant's cap and weight distribution
unchanged: a bigger fleet serves more customers, not bigger ones). ``--apps N`` (default 4)
spreads each archetype's share of requests over about N/4 apps (app k of the archetype weighted
1/k, Zipf), and a capped archetype's cap is scaled by ``s`` and split over its apps by those
weights (at least 1 each). So the video apps' caps bind at the launch-day peak at every size,
as the single video app's 24 does at 256 GPUs: a capped-app scenario, on purpose.

Targets, from the ``policy`` run: ``below_capacity_attainment_min`` (the lowest per-tier SLO
attainment; goal >= 0.95) when no 10-minute window of the trace offers more than capacity;
``overload_worst_over_best`` (the worst tier's p99 wait/SLO over the best tier's; goal <= 2)
when some window does (``..._max``: the same of the longest waits, for information: a capped
app's longest waits are its cap's, not the order's);
``utilisation_of_dispatchable`` (``window_utilisation`` over ``dispatchable_share``, the most a
fluid queue of the same arrivals could serve with each app held to its cap; goal >= 0.9);
``cold_starts_over_baseline`` (goal <= COLD_START_FACTOR). ``met`` holds when all of them do.
The same figures of the other runs are given for comparison (``no_affinity_...``,
``baseline_...``). ``--sweep`` runs SWEEP_GPUS x SWEEP_LOADS, with ``sweep_apps`` apps (600 at
10,000 GPUs, in proportion below), and prints one JSON line: a row of figures per trace.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import native

COMPILED = native.use_from_env()
"""Whether the policy and the simulator run compiled by mypyc (``native``; default) or, with
``--interpreted``, as plain Python."""

from klieg_platform.autoscaler import PoolPlan, Scaler, pool_demand  # noqa: E402
from klieg_platform.broker import LaneDepth  # noqa: E402
from klieg_platform.scheduler import DEFAULT_TIERS, Tier  # noqa: E402
from klieg_platform.simulator import (  # noqa: E402
    FleetView,
    RunStats,
    Scaling,
    simulate,
    simulate_per_worker,
)
from klieg_platform.traces import (  # noqa: E402
    UNBOUNDED,
    AppSpec,
    Cluster,
    Request,
    Trace,
    read_trace,
    write_trace,
)

GPUS_PER_WORKER = 8
WINDOW_S = 600.0
COLD_START_FACTOR = 1.5
"""Target: the policy's cold starts at most this many times strict priority's on one trace."""
RATIO_FLOOR = 1e-3
"""wait/SLO values below this count as this in ratios (a tier that never waited)."""

# tier: (share of requests, tenants, in-flight cap per tenant)
TIER_MIX = {
    "enterprise": (0.10, 5, 64),
    "api": (0.20, 30, 32),
    "plus": (0.20, 300, 8),
    "light": (0.15, 600, 4),
    "free": (0.35, 3000, 2),
}
# app: (share of requests, GPUs, mean service s, log-normal sigma, cold start s, max in flight)
APP_MIX: dict[str, tuple[float, int, float, float, float, int | None]] = {
    "image": (0.80, 1, 5.0, 0.35, 20.0, None),
    "audio": (0.08, 1, 10.0, 0.4, 15.0, None),
    "upscale": (0.11, 2, 15.0, 0.3, 30.0, None),
    "video": (0.01, 8, 120.0, 0.2, 90.0, 24),
}
REFERENCE_GPUS = 256
"""The fleet TIER_MIX's tenant counts and APP_MIX's caps are stated for (module docstring)."""


class _App(NamedTuple):
    spec: AppSpec
    share: float
    mean_s: float
    sigma: float


LAUNCH_DAY = ((0.0, 0.6), (1 / 6, 0.6), (1 / 4, 1.6), (1 / 2, 1.6), (7 / 12, 0.5), (1.0, 0.5))
"""(fraction of the horizon, load) corners of the launch-day profile; linear in between."""


def log(message: str) -> None:
    print(f"[scheduling] {message}", file=sys.stderr, flush=True)


def launch_day_load(fraction: float) -> float:
    """The launch-day load at ``fraction`` (0..1) of the horizon."""
    for (x0, y0), (x1, y1) in itertools.pairwise(LAUNCH_DAY):
        if fraction <= x1:
            return y0 + (y1 - y0) * (fraction - x0) / (x1 - x0)
    return LAUNCH_DAY[-1][1]


def app_catalogue(apps: int, scale: float, cold_start_scale: float = 1.0) -> list[_App]:
    """The generated apps (module docstring, "Scaling"): ``apps`` of them over the APP_MIX
    archetypes, Zipf-popular within each archetype, capped apps' caps scaled with the fleet."""
    if apps < len(APP_MIX):
        raise ValueError(f"--apps must be at least {len(APP_MIX)}")
    kinds = list(APP_MIX)
    per_kind = {kind: [k for k in range(apps) if k % len(kinds) == i] for i, kind in
                enumerate(kinds)}  # fmt: skip
    out: list[_App] = []
    for kind, ranks in per_kind.items():
        share, n_gpus, mean, sigma, cold, cap = APP_MIX[kind]
        weights = [1.0 / (r + 1) for r in range(len(ranks))]
        total = sum(weights)
        for r, w in enumerate(weights):
            name = kind if r == 0 else f"{kind}-{r + 1}"
            app_cap = None if cap is None else max(1, round(cap * scale * w / total))
            spec = AppSpec(name, cold * cold_start_scale, n_gpus, app_cap)
            out.append(_App(spec, share * w / total, mean, sigma))
    return out


def generate(
    hours: float,
    gpus: int,
    seed: int,
    load: float | None,
    cold_start_scale: float = 1.0,
    apps: int = len(APP_MIX),
) -> Trace:
    """A synthetic trace: Poisson arrivals thinned to the load profile (module docstring)."""
    rng = random.Random(seed)
    workers = max(1, gpus // GPUS_PER_WORKER)
    scale = workers * GPUS_PER_WORKER / REFERENCE_GPUS
    catalogue = app_catalogue(apps, scale, cold_start_scale)
    tiers = {t.name: t for t in DEFAULT_TIERS}
    cluster = Cluster(
        workers=workers,
        gpus_per_worker=GPUS_PER_WORKER,
        tiers=tuple(
            Tier(t.name, t.slo_s, UNBOUNDED, t.rank) for t in DEFAULT_TIERS if t.name in TIER_MIX
        ),
        apps={a.spec.name: a.spec for a in catalogue},
        tenant_caps={name: cap for name, (_, _, cap) in TIER_MIX.items() if name in tiers},
    )
    mean_gpu_s = sum(a.share * a.spec.num_gpus * a.mean_s for a in catalogue)
    profile: Callable[[float], float] = launch_day_load if load is None else (lambda _f: load)
    peak = max(y for _, y in LAUNCH_DAY) if load is None else load
    peak_rate = peak * workers * GPUS_PER_WORKER / mean_gpu_s
    horizon = hours * 3600.0
    tier_names = list(TIER_MIX)
    tier_cum = list(itertools.accumulate(share for share, _, _ in TIER_MIX.values()))
    tenants: dict[str, tuple[list[str], list[float]]] = {}
    for name, (_, count, _) in TIER_MIX.items():
        scaled = max(1, round(count * scale))
        weights = [rng.lognormvariate(0.0, 1.0) for _ in range(scaled)]
        ids = [f"{name}-{k}" for k in range(scaled)]
        tenants[name] = (ids, list(itertools.accumulate(weights)))
    app_cum = list(itertools.accumulate(a.share for a in catalogue))
    shapes = [(a.spec.name, math.log(a.mean_s) - a.sigma * a.sigma / 2, a.sigma) for a in catalogue]
    requests: list[Request] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= horizon:
            break
        if rng.random() * peak > profile(t / horizon):
            continue
        tier = tier_names[bisect.bisect(tier_cum, rng.random() * tier_cum[-1])]
        ids, cum = tenants[tier]
        tenant = ids[bisect.bisect(cum, rng.random() * cum[-1])]
        app, mu, sigma = shapes[bisect.bisect(app_cum, rng.random() * app_cum[-1])]
        service = rng.lognormvariate(mu, sigma)
        requests.append(Request(round(t, 3), tier, tenant, app, round(service, 3)))
    return Trace(cluster, tuple(requests))


def demand_windows(trace: Trace) -> list[float]:
    """Offered service GPU-seconds / GPU capacity in each WINDOW_S window from the first arrival."""
    reqs = trace.requests
    if not reqs:
        return []
    gpus = trace.cluster.workers * trace.cluster.gpus_per_worker
    windows = [0.0] * (int((reqs[-1].t - reqs[0].t) // WINDOW_S) + 1)
    for r in reqs:
        windows[int((r.t - reqs[0].t) // WINDOW_S)] += (
            r.service_s * trace.cluster.apps[r.app].num_gpus
        )
    return [w / (gpus * WINDOW_S) for w in windows]


def worst_over_best(stats: RunStats, of: str = "p99") -> float:
    """The worst tier's wait/SLO over the best tier's: of their p99 waits (``of="p99"``, the
    target) or of their longest waits (``of="max"``)."""
    used = [s for s in stats.tiers.values() if s.requests]
    values = [
        max(s.p99_wait_s / s.slo_s if of == "p99" else s.max_wait_over_slo, RATIO_FLOOR)
        for s in used
    ]
    return max(values) / min(values) if values else 1.0


RUNS: dict[str, Callable[[Trace, Callable[[float], None]], RunStats]] = {
    "policy": lambda trace, progress: simulate_per_worker(trace, progress=progress),
    "policy_no_affinity": lambda trace, progress: simulate(trace, False, progress),
    "baseline": lambda trace, progress: simulate(trace, True, progress),
}
"""The runs, by their key in the output (module docstring)."""


class Autoscaling(NamedTuple):
    """``--autoscale``: the autoscaler's settings in the ``policy_autoscaled`` run."""

    boot_s: float = 90.0
    interval_s: float = 15.0
    cooldown_s: float = 300.0


def autoscaled(trace: Trace, settings: Autoscaling) -> Scaling:
    """``klieg autoscaler``'s decision (``Scaler`` over ``pool_demand``: the same code) in the
    replay's loop, one pool of up to the trace's workers. The fleet starts sized for the first
    window's demand, as a fleet already serving would be."""
    cluster = trace.cluster
    plan = PoolPlan("GPU", max_workers=cluster.workers, slots=cluster.gpus_per_worker,
                    cooldown_s=settings.cooldown_s)  # fmt: skip
    scaler = Scaler({plan.name: plan}, {t.name: t for t in cluster.tiers})

    def size(view: FleetView) -> int:
        lanes = [LaneDepth(plan.name, tier, app, app, n, units) for tier, app, units, n in
                 view.lanes]  # fmt: skip
        demand = pool_demand(
            queued=view.queued,
            oldest_wait_s=view.oldest_wait_s,
            busy_slots=view.busy_gpus,
            lanes=lanes,
            idle=Counter(view.idle),
            service=view.service_s,
            cold=view.cold_start_s,
            room=view.room,
        )
        return scaler.decide({plan.name: demand}, view.now)[plan.name]

    first = demand_windows(trace)[:1]
    initial = min(cluster.workers, math.ceil((first[0] if first else 0.0) * cluster.workers))
    return Scaling(size, settings.interval_s, settings.boot_s, initial)


def run(
    trace: Trace, name: str, replay: Callable[[Trace, Callable[[float], None]], RunStats]
) -> tuple[RunStats, float]:
    """Replay ``trace`` as run ``name``; the stats and the wall seconds it took."""
    started = time.perf_counter()

    def progress(now: float) -> None:
        log(f"{name}: virtual {now / 3600:.2f} h")

    stats = replay(trace, progress)
    wall = time.perf_counter() - started
    log(f"{name}: done in {wall:.1f} s wall, makespan {stats.makespan_s / 3600:.2f} h")
    return stats, wall


def dispatchable_share(trace: Trace) -> float:
    """The highest window utilisation the trace allows (module docstring, "Targets"): a fluid
    queue per app over WINDOW_S windows, each app served at most its cap x GPUs per window and
    all apps together at most the fleet's GPUs, over GPUs x the arrival span."""
    reqs = trace.requests
    if not reqs:
        return 0.0
    cluster = trace.cluster
    gpus = cluster.workers * cluster.gpus_per_worker
    t0 = reqs[0].t
    windows = int((reqs[-1].t - t0) // WINDOW_S) + 1
    offered = [dict.fromkeys(cluster.apps, 0.0) for _ in range(windows)]
    for r in reqs:
        offered[int((r.t - t0) // WINDOW_S)][r.app] += r.service_s * cluster.apps[r.app].num_gpus
    backlog = dict.fromkeys(cluster.apps, 0.0)
    served_total = 0.0
    span = max(reqs[-1].t - t0, 1e-9)
    for k, window in enumerate(offered):
        length = min(WINDOW_S, span - k * WINDOW_S)
        allowed = {}
        for name, app in cluster.apps.items():
            backlog[name] += window[name]
            limit = math.inf if app.max_inflight is None else app.max_inflight * app.num_gpus
            allowed[name] = min(backlog[name], limit * length)
        total = sum(allowed.values())
        served = min(total, gpus * length)
        for name in allowed:
            backlog[name] -= allowed[name] * (served / total if total else 0.0)
        served_total += served
    return served_total / (gpus * span)


def cold_share_by_kind(stats: RunStats) -> dict[str, float]:
    """``cold_start_gpu_share`` split by app archetype (APP_MIX; an app ``video-3`` is a
    ``video`` app): which kinds of app the GPU time spent in cold starts went to."""
    total = sum(stats.cold_start_gpu_s.values())
    kinds: dict[str, float] = {}
    for app, gpu_s in stats.cold_start_gpu_s.items():
        kind = app.split("-", 1)[0]
        kinds[kind] = kinds.get(kind, 0.0) + gpu_s
    share = stats.cold_start_gpu_share
    return {kind: round(share * gpu_s / total, 4) for kind, gpu_s in sorted(kinds.items())}


def measure(
    trace: Trace, scenario: str, seed: int | None, autoscaling: Autoscaling | None = None
) -> dict[str, Any]:
    """Replay ``trace`` through every run of RUNS (and ``policy_autoscaled`` with
    ``autoscaling``); the figures and targets (module docstring)."""
    started = time.perf_counter()
    log(f"{len(trace.requests)} requests, {len(trace.cluster.apps)} apps")
    runs = {name: run(trace, name, replay) for name, replay in RUNS.items()}
    if autoscaling is not None:
        scaling = autoscaled(trace, autoscaling)
        runs["policy_autoscaled"] = run(
            trace,
            "policy_autoscaled",
            lambda trace, progress: simulate_per_worker(trace, progress, scaling=scaling),
        )
    policy, no_affinity, baseline = (
        runs[name][0] for name in ("policy", "policy_no_affinity", "baseline")
    )
    demand = demand_windows(trace)
    reqs = trace.requests
    span = reqs[-1].t - reqs[0].t if reqs else 0.0
    overloaded = bool(demand) and max(demand) > 1.0
    gpus = trace.cluster.workers * trace.cluster.gpus_per_worker
    mean_demand = sum(demand) * WINDOW_S / max(span, WINDOW_S)
    bound = dispatchable_share(trace)

    def attainment(stats: RunStats) -> float:
        return min(s.slo_attainment for s in stats.tiers.values() if s.requests)

    targets: dict[str, Any] = {"regime": "overload" if overloaded else "below_capacity"}
    for prefix, stats in (("", policy), ("no_affinity_", no_affinity), ("baseline_", baseline)):
        targets[f"{prefix}below_capacity_attainment_min"] = (
            None if overloaded else round(attainment(stats), 4)
        )
        targets[f"{prefix}overload_worst_over_best"] = (
            round(worst_over_best(stats), 3) if overloaded else None
        )
        targets[f"{prefix}overload_worst_over_best_max"] = (
            round(worst_over_best(stats, "max"), 3) if overloaded else None
        )
        targets[f"{prefix}utilisation_of_dispatchable"] = round(
            stats.window_utilisation / bound if bound else 0.0, 4
        )
    targets["cold_starts_over_baseline"] = round(
        policy.cold_starts / max(baseline.cold_starts, 1), 3
    )
    fair = worst_over_best(policy) <= 2.0 if overloaded else attainment(policy) >= 0.95
    targets["met"] = (
        fair
        and targets["utilisation_of_dispatchable"] >= 0.9
        and targets["cold_starts_over_baseline"] <= COLD_START_FACTOR
    )
    if autoscaling is not None:
        scaled = runs["policy_autoscaled"][0]
        targets["autoscaled"] = {
            **autoscaling._asdict(),
            "slo_attainment": {n: round(s.slo_attainment, 4) for n, s in scaled.tiers.items()},
            "fixed_slo_attainment": {
                n: round(s.slo_attainment, 4) for n, s in policy.tiers.items()
            },
            "gpu_hours": round(scaled.gpu_hours, 1),
            "fixed_gpu_hours": round(policy.gpu_hours, 1),
            "gpu_hours_share": round(scaled.gpu_hours / max(policy.gpu_hours, 1e-9), 4),
            "workers_mean": round(scaled.workers_mean, 1),
            "workers_peak": scaled.workers_peak,
        }
    return {
        **{
            name: {
                **stats.as_dict(),
                "cold_start_gpu_share_by_kind": cold_share_by_kind(stats),
                "wall_s": round(wall, 2),
            }
            for name, (stats, wall) in runs.items()
        },
        "trace": {
            "scenario": scenario,
            "seed": seed,
            "requests": len(reqs),
            "hours": round(span / 3600, 3),
            "gpus": gpus,
            "workers": trace.cluster.workers,
            "apps": len(trace.cluster.apps),
            "tenants": len({r.tenant for r in reqs}),
            "demand_over_capacity": round(mean_demand, 3),
            "peak_demand_over_capacity_10min": round(max(demand, default=0.0), 3),
            "dispatchable_share": round(bound, 4),
        },
        "targets": targets,
        "wall_s": round(time.perf_counter() - started, 2),
        "compiled": COMPILED,
    }


NATIVE_MODULES = (
    "klieg_platform.scheduler",
    "klieg_platform.backlog",
    "klieg_platform.traces",
    "klieg_platform.simulator",
)
"""What ``native`` compiles: the policy and the replay, the same source the broker mirrors."""

SWEEP_GPUS = (256, 1024, 2560, 10_000)
SWEEP_LOADS: tuple[float | None, ...] = (None, 0.7)
"""``--sweep``: every size, launch day (None) and a constant 0.7."""


def sweep_apps(gpus: int) -> int:
    """``--sweep``'s app count: 600 at 10,000 GPUs, in proportion below (at least APP_MIX's)."""
    return max(len(APP_MIX), round(600 * gpus / 10_000))


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """One row of the sweep: the figures of the issue's table for one trace."""
    t, targets = result["trace"], result["targets"]
    policy, baseline = result["policy"], result["baseline"]
    return {
        "gpus": t["gpus"],
        "scenario": t["scenario"],
        "apps": t["apps"],
        "requests": t["requests"],
        "regime": targets["regime"],
        "worst_over_best": targets["overload_worst_over_best"],
        "worst_over_best_max": targets["overload_worst_over_best_max"],
        "baseline_worst_over_best": targets["baseline_overload_worst_over_best"],
        "attainment_min": targets["below_capacity_attainment_min"],
        "baseline_attainment_min": targets["baseline_below_capacity_attainment_min"],
        "utilisation_of_dispatchable": targets["utilisation_of_dispatchable"],
        "window_utilisation": policy["window_utilisation"],
        "cold_starts": policy["cold_starts"],
        "baseline_cold_starts": baseline["cold_starts"],
        "cold_start_gpu_share": policy["cold_start_gpu_share"],
        "cold_start_gpu_share_by_kind": policy["cold_start_gpu_share_by_kind"],
        "p50_wait_free_s": policy["tiers"]["free"]["p50_wait_s"],
        "wall_s": {
            name: result[name]["wall_s"]
            for name in result
            if name in RUNS or name == "policy_autoscaled"
        },
        "met": targets["met"],
    } | ({"autoscaled": targets["autoscaled"]} if "autoscaled" in targets else {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, help="replay this trace instead of generating one")
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--gpus", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, help="constant demand / capacity (default: launch)")
    parser.add_argument("--apps", type=int, default=len(APP_MIX), help="apps in the trace")
    parser.add_argument(
        "--cold-start-scale", type=float, default=1.0, help="multiply the apps' cold starts"
    )
    parser.add_argument("--write-trace", type=Path, help="write the trace replayed to this file")
    parser.add_argument(
        "--sweep", action="store_true", help="every size of SWEEP_GPUS, launch day and load 0.7"
    )
    parser.add_argument(
        "--autoscale",
        action="store_true",
        help="also replay the policy with the autoscaler sizing the fleet (policy_autoscaled)",
    )
    parser.add_argument(
        "--boot-s",
        type=float,
        default=Autoscaling().boot_s,
        help="--autoscale: seconds from asking for a worker to its serving",
    )
    parser.add_argument(
        "--interval-s",
        type=float,
        default=Autoscaling().interval_s,
        help="--autoscale: seconds between the autoscaler's decisions",
    )
    parser.add_argument(
        "--cooldown-s",
        type=float,
        default=Autoscaling().cooldown_s,
        help="--autoscale: the pool's cool-down before it shrinks",
    )
    parser.add_argument(
        native.INTERPRETED,
        action="store_true",
        help="run the policy and the simulator as plain Python, not compiled by mypyc",
    )
    args = parser.parse_args(argv)
    autoscaling = (
        Autoscaling(args.boot_s, args.interval_s, args.cooldown_s) if args.autoscale else None
    )
    started = time.perf_counter()
    if args.sweep:
        rows = []
        for gpus in SWEEP_GPUS:
            for load in SWEEP_LOADS:
                scenario = "launch-day" if load is None else f"load {load}"
                apps = sweep_apps(gpus)
                log(f"sweep: {scenario}, {gpus} GPUs, {apps} apps, {args.hours} h")
                trace = generate(args.hours, gpus, args.seed, load, args.cold_start_scale, apps)
                rows.append(summary(measure(trace, scenario, args.seed, autoscaling)))
                log(f"sweep row: {json.dumps(rows[-1])}")
        met = all(row["met"] for row in rows)
        out = {"sweep": rows, "hours": args.hours, "seed": args.seed, "met": met,
               "wall_s": round(time.perf_counter() - started, 2), "compiled": COMPILED}  # fmt: skip
        print(json.dumps(out), flush=True)
        return 0
    if args.trace is not None:
        with args.trace.open() as f:
            trace = read_trace(f)
        scenario, seed = str(args.trace), None
    else:
        scenario = "launch-day" if args.load is None else f"load {args.load}"
        if args.cold_start_scale != 1.0:
            scenario += f", cold starts x{args.cold_start_scale}"
        log(f"generating {scenario}: {args.hours} h, {args.gpus} GPUs, seed {args.seed}")
        trace = generate(
            args.hours, args.gpus, args.seed, args.load, args.cold_start_scale, args.apps
        )
        seed = args.seed
    if args.write_trace is not None:
        with args.write_trace.open("w") as f:
            write_trace(trace, f)
        log(f"wrote {args.write_trace}")
    print(json.dumps(measure(trace, scenario, seed, autoscaling)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(native.run_compiled(main, NATIVE_MODULES))
