"""Redis commands and Redis CPU per request, and the background per second, as the fleet grows.

    .venv/bin/python bench/redis_ops.py [--workers 1,4,16] [--requests 200] [--idle-s 10]
                                        [--concurrency 4]

Starts ``klieg up`` in a temporary home (embedded Redis, the production lease of 30 s, no
zygotes so that 16 workers fit a small machine), deploys ``apps/echo`` and warms it. For each
fleet size N of ``--workers`` (the platform's own worker and N - 1 more ``klieg worker``
processes, every one serving every pool; warmed with a few rounds of requests), reading
``INFO commandstats`` and the server's CPU time before and after each window:

1. idle for ``--idle-s``: the background of one gateway and N workers (heartbeats, lease
   renewals, housekeeping, the blocking pops), per second;
2. ``--requests`` sync calls, then as many queue submits each followed by its result (the
   client's long-poll ``wait``), ``--concurrency`` at a time: every command Redis ran, less the
   background for the window's length, per request: calls, by command, and Redis's CPU µs.

Prints one JSON line: per N, ``sync`` and ``queue`` (commands, scripts and Redis CPU µs per
request, by command) and ``background`` (commands/s, by command, and the share of a Redis core
it takes), and the requests/s one Redis core could carry at the largest N's cost (``1e6 / CPU
µs per request``). docs/scale.md reads the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from klieg import Client
from klieg_platform import vault
from klieg_platform.config import Settings
from klieg_platform.local import ensure_signing_key, settings_env, stop_workers
from tests.e2e.platform import APPS, Platform, running_platform

Stats = dict[str, tuple[int, int]]  # command -> (calls, usec)
FLEET_ENV = {"KLIEG_LEASE_S": "30", "KLIEG_ZYGOTES": "0", "KLIEG_DRAIN_S": "5"}


def commandstats(r: redis.Redis) -> Stats:
    """Calls and µs per command, and under ``cpu`` the server's CPU µs (user + system): a
    script's µs include those of the commands it runs, which Redis also counts by name, so only
    the CPU time is the cost of a window."""
    raw: dict[str, Any] = r.info("commandstats")
    out = {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in raw.items()}
    cpu: dict[str, Any] = r.info("cpu")
    out["cpu"] = (0, int((float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6))
    return out


def delta(after: Stats, before: Stats) -> Stats:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0 or name == "cpu":
            out[name] = (calls - c0, usec - u0)
    return out


def window(r: redis.Redis, run: Callable[[], None]) -> tuple[Stats, float]:
    before, started = commandstats(r), time.monotonic()
    run()
    return delta(commandstats(r), before), time.monotonic() - started


def per_request(stats: Stats, seconds: float, background: Stats, idle_s: float, n: int) -> dict:
    by: dict[str, float] = {}
    for name, (calls, _) in stats.items():
        bg_calls, _ = background.get(name, (0, 0))
        c = calls - bg_calls * seconds / idle_s
        if name != "cpu" and c > 0.05 * n:
            by[name] = round(c / n, 2)
    cpu = stats["cpu"][1] - background["cpu"][1] * seconds / idle_s
    return {"commands": round(sum(by.values()), 1), "scripts": by.get("evalsha", 0.0),
            "redis_cpu_us": round(max(0.0, cpu) / n, 1),
            "by_command": dict(sorted(by.items(), key=lambda kv: -kv[1]))}  # fmt: skip


def background(idle: Stats, idle_s: float) -> dict[str, Any]:
    calls = {k: v[0] / idle_s for k, v in idle.items() if k not in ("cpu", "info")}  # info: ours
    return {"commands_per_s": round(sum(calls.values()), 1),
            "redis_cpu_share": round(idle["cpu"][1] / idle_s / 1e6, 4),
            "by_command_per_s": {k: round(v, 2) for k, v in sorted(calls.items())}}  # fmt: skip


def load(p: Platform, n: int, concurrency: int, queued: bool) -> Callable[[], None]:
    """``n`` requests, ``concurrency`` at a time: sync calls, or submits each waited for."""

    def one(i: int) -> None:
        with Client(p.url, p.key) as c:
            if queued:
                c.wait(c.submit("local/echo", {"text": f"q{i}"}), timeout=120)
            else:
                c.run("local/echo", {"text": f"s{i}"})

    def run() -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(n)))

    return run


def live_workers(p: Platform) -> list[dict[str, Any]]:
    answer = httpx.get(f"{p.url}/workers", headers={"Authorization": f"Key {p.key}"}, timeout=30)
    workers: list[dict[str, Any]] = answer.json()["workers"]
    return workers


def grow(
    p: Platform, procs: list[subprocess.Popen[bytes]], n: int, env: dict[str, str], warm: int
) -> None:
    """Start workers until the fleet has ``n`` (the platform's own included), wait until each
    has sent a heartbeat, then run ``warm`` requests at ``warm`` at a time: whatever cold
    starts the new fleet makes (warm affinity keeps echo on few of them) happen before the
    windows."""
    cmd = [sys.executable, "-m", "klieg_platform.worker", "--no-workflows"]
    while 1 + len(procs) < n:
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
    deadline = time.monotonic() + 300
    while len(live_workers(p)) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(live_workers(p))} of {n} workers up after 300 s")
        time.sleep(0.5)
    for _ in range(3):
        load(p, warm, warm, queued=False)()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,4,16", help="fleet sizes, ascending")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    sizes = sorted(int(n) for n in args.workers.split(","))
    fleet: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_platform(Path(tmp) / "home", extra_env=FLEET_ENV) as p,
    ):
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        settings = ensure_signing_key(Settings.from_env({"KLIEG_HOME": str(p.home), **FLEET_ENV}))
        env = settings_env(settings.with_(secrets_key=vault.ensure_key(p.home)))
        r = redis.Redis(unix_socket_path=str(p.home / "run" / "redis.sock"))
        try:
            for n in sizes:
                grow(p, procs, n, env, args.concurrency)
                idle, idle_s = window(r, lambda: time.sleep(args.idle_s))
                s_stats, s_s = window(r, load(p, args.requests, args.concurrency, False))
                q_stats, q_s = window(r, load(p, args.requests, args.concurrency, True))
                fleet.append({
                    "workers": n,
                    "sync": per_request(s_stats, s_s, idle, idle_s, args.requests),
                    "queue": per_request(q_stats, q_s, idle, idle_s, args.requests),
                    "background": background(idle, idle_s),
                })  # fmt: skip
        finally:
            stop_workers(procs, 5.0)
    last = fleet[-1]
    print(json.dumps({
        "requests": args.requests,
        "concurrency": args.concurrency,
        "fleet": fleet,
        "one_redis_core_ceiling_requests_per_s": {
            kind: round(1e6 / max(1.0, last[kind]["redis_cpu_us"])) for kind in ("sync", "queue")
        },
    }))  # fmt: skip


if __name__ == "__main__":
    main()
