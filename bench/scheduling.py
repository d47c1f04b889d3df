"""SLO-fair scheduling versus strict priority, replayed in virtual time.

    .venv/bin/python bench/scheduling.py [--trace FILE] [--hours H] [--gpus N] [--seed S]
                                         [--load L] [--cold-start-scale X] [--write-trace FILE]

Replays one trace three times through ``klieg_platform.simulator`` (the same cluster: workers,
warm runners, cold starts, tenant and app caps) and prints one JSON line on stdout: per-tier wait
percentiles and SLO attainment of each run, the trace summary and the targets. Progress on stderr.
The runs:

- ``policy``: what the live broker does. Each worker asks ``scheduler.pick_for_worker`` (the
  SLO-normalised pick plus warm affinity and GPU draining, ``simulator.simulate_per_worker``);
- ``policy_no_affinity``: ``scheduler.pick`` for the whole cluster, the job placed on any idle
  warm runner of its app, else where it fits (``simulator.simulate``; the rule before warm
  affinity);
- ``baseline``: ``scheduler.pick_strict`` (strict priority), placed like ``policy_no_affinity``.

Without ``--trace`` it generates a trace (``--write-trace FILE`` saves it for others to replay):
the five default tiers (TIER_MIX: share of requests, tenants with log-normal weights, in-flight
cap per tenant; queues unbounded, so waits show instead of shedding), four apps (APP_MIX, service
/ cold start: image 1 GPU 5 s / 20 s, audio 1 GPU 10 s / 15 s, upscale 2 GPUs 15 s / 30 s, video
8 GPUs 120 s / 90 s, capped at 24 in flight), and a load given as offered service GPU-seconds per
second over the cluster's GPUs. The default is a launch day over ``--hours`` (default 4): 1/6 of
the time at 0.6, a ramp to 1.6 over 1/12, 1/4 at 1.6, a ramp down to 0.5 over 1/12, the rest at
0.5. ``--load L`` holds L for the whole time instead (``--load 0.7``: below capacity).
``--cold-start-scale X`` multiplies every app's cold start (default 1: the figures above).

Targets, from the ``policy`` run: ``below_capacity_attainment_min`` (the lowest per-tier SLO
attainment; goal >= 0.95) when no 10-minute window of the trace offers more than capacity;
``overload_worst_over_best`` (the worst tier's wait/SLO over the best tier's, taking the larger
of the p99 and the max ratios; goal <= 2) when some window does. The same figures of the other
runs are given for comparison (``no_affinity_...``, ``baseline_...``).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klieg_platform.scheduler import DEFAULT_TIERS, Tier, pick, pick_strict
from klieg_platform.simulator import (
    UNBOUNDED,
    AppSpec,
    Cluster,
    Request,
    RunStats,
    Trace,
    read_trace,
    simulate,
    simulate_per_worker,
    write_trace,
)

GPUS_PER_WORKER = 8
WINDOW_S = 600.0
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


def generate(
    hours: float, gpus: int, seed: int, load: float | None, cold_start_scale: float = 1.0
) -> Trace:
    """A synthetic trace: Poisson arrivals thinned to the load profile (module docstring)."""
    rng = random.Random(seed)
    workers = max(1, gpus // GPUS_PER_WORKER)
    tiers = {t.name: t for t in DEFAULT_TIERS}
    cluster = Cluster(
        workers=workers,
        gpus_per_worker=GPUS_PER_WORKER,
        tiers=tuple(
            Tier(t.name, t.slo_s, UNBOUNDED, t.rank) for t in DEFAULT_TIERS if t.name in TIER_MIX
        ),
        apps={
            name: AppSpec(name, cold * cold_start_scale, n_gpus, cap)
            for name, (_, n_gpus, _, _, cold, cap) in APP_MIX.items()
        },
        tenant_caps={name: cap for name, (_, _, cap) in TIER_MIX.items() if name in tiers},
    )
    mean_gpu_s = sum(share * n * mean for share, n, mean, *_ in APP_MIX.values())
    profile: Callable[[float], float] = launch_day_load if load is None else (lambda _f: load)
    peak = max(y for _, y in LAUNCH_DAY) if load is None else load
    peak_rate = peak * workers * GPUS_PER_WORKER / mean_gpu_s
    horizon = hours * 3600.0
    tier_names = list(TIER_MIX)
    tier_cum = list(itertools.accumulate(share for share, _, _ in TIER_MIX.values()))
    tenants: dict[str, tuple[list[str], list[float]]] = {}
    for name, (_, count, _) in TIER_MIX.items():
        weights = [rng.lognormvariate(0.0, 1.0) for _ in range(count)]
        ids = [f"{name}-{k}" for k in range(count)]
        tenants[name] = (ids, list(itertools.accumulate(weights)))
    app_names = list(APP_MIX)
    app_cum = list(itertools.accumulate(spec[0] for spec in APP_MIX.values()))
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
        app = app_names[bisect.bisect(app_cum, rng.random() * app_cum[-1])]
        _, _, mean, sigma, _, _ = APP_MIX[app]
        service = rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
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


def worst_over_best(stats: RunStats) -> float:
    """max over tiers of wait/SLO divided by the min, for p99 and for max; the larger ratio."""
    used = [s for s in stats.tiers.values() if s.requests]
    ratios = []
    for values in (
        [max(s.p99_wait_s / s.slo_s, RATIO_FLOOR) for s in used],
        [max(s.max_wait_over_slo, RATIO_FLOOR) for s in used],
    ):
        ratios.append(max(values) / min(values) if values else 1.0)
    return max(ratios)


RUNS: dict[str, Callable[[Trace, Callable[[float], None]], RunStats]] = {
    "policy": lambda trace, progress: simulate_per_worker(trace, progress=progress),
    "policy_no_affinity": lambda trace, progress: simulate(trace, pick, progress),
    "baseline": lambda trace, progress: simulate(trace, pick_strict, progress),
}
"""The runs, by their key in the output (module docstring)."""


def run(trace: Trace, name: str) -> tuple[RunStats, float]:
    """Replay ``trace`` as run ``name`` of RUNS; the stats and the wall seconds it took."""
    started = time.perf_counter()

    def progress(now: float) -> None:
        log(f"{name}: virtual {now / 3600:.2f} h")

    stats = RUNS[name](trace, progress)
    wall = time.perf_counter() - started
    log(f"{name}: done in {wall:.1f} s wall, makespan {stats.makespan_s / 3600:.2f} h")
    return stats, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, help="replay this trace instead of generating one")
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--gpus", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, help="constant demand / capacity (default: launch)")
    parser.add_argument(
        "--cold-start-scale", type=float, default=1.0, help="multiply the apps' cold starts"
    )
    parser.add_argument("--write-trace", type=Path, help="write the trace replayed to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.trace is not None:
        with args.trace.open() as f:
            trace = read_trace(f)
        scenario = str(args.trace)
    else:
        scenario = "launch-day" if args.load is None else f"load {args.load}"
        if args.cold_start_scale != 1.0:
            scenario += f", cold starts x{args.cold_start_scale}"
        log(f"generating {scenario}: {args.hours} h, {args.gpus} GPUs, seed {args.seed}")
        trace = generate(args.hours, args.gpus, args.seed, args.load, args.cold_start_scale)
    if args.write_trace is not None:
        with args.write_trace.open("w") as f:
            write_trace(trace, f)
        log(f"wrote {args.write_trace}")
    log(f"{len(trace.requests)} requests")
    runs = {name: run(trace, name) for name in RUNS}
    policy, no_affinity, baseline = (
        runs[name][0] for name in ("policy", "policy_no_affinity", "baseline")
    )
    demand = demand_windows(trace)
    reqs = trace.requests
    span = reqs[-1].t - reqs[0].t if reqs else 0.0
    overloaded = bool(demand) and max(demand) > 1.0
    gpus = trace.cluster.workers * trace.cluster.gpus_per_worker
    mean_demand = sum(demand) * WINDOW_S / max(span, WINDOW_S)

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
    targets["met"] = worst_over_best(policy) <= 2.0 if overloaded else attainment(policy) >= 0.95
    result = {
        **{
            name: {**stats.as_dict(), "wall_s": round(wall, 2)}
            for name, (stats, wall) in runs.items()
        },
        "trace": {
            "scenario": scenario,
            "seed": None if args.trace else args.seed,
            "requests": len(reqs),
            "hours": round(span / 3600, 3),
            "gpus": gpus,
            "workers": trace.cluster.workers,
            "tenants": len({r.tenant for r in reqs}),
            "demand_over_capacity": round(mean_demand, 3),
            "peak_demand_over_capacity_10min": round(max(demand, default=0.0), 3),
        },
        "targets": targets,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
