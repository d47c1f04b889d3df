"""Redis commands per request, and per process per second, on a running platform.

    .venv/bin/python bench/redis_ops.py [--requests 200] [--idle-s 10] [--extra-workers 3]

Starts ``klieg up`` in a temporary home (embedded Redis), deploys ``apps/echo`` and warms it.
Then, reading ``INFO commandstats`` before and after each window:

1. idle for ``--idle-s``: the background of one gateway and one worker (heartbeats, leases,
   housekeeping, the blocking pops), per second;
2. ``--requests`` sync calls, then as many queue submits each followed by its result (the
   client's long-poll ``wait``): every command Redis ran, less the background for the window's
   length, per request: calls, by command, and Redis's own µs;
3. ``--extra-workers`` more ``klieg worker`` processes, idle again: the background per worker.

Prints one JSON line: ``sync`` and ``queue`` (commands and Redis µs per request, by command),
``background`` (commands/s for 1 gateway + 1 worker, and per extra worker), and the ceiling one
Redis core sets on these numbers (``1e6 / CPU µs per request``). docs/scale.md discusses them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from klieg import Client
from klieg_platform import vault
from klieg_platform.config import Settings
from klieg_platform.local import ensure_signing_key, settings_env
from tests.e2e.platform import APPS, running_platform

Stats = dict[str, tuple[int, int]]  # command -> (calls, usec)


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


def window(r: redis.Redis, run: Any) -> tuple[Stats, float]:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--extra-workers", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_platform(Path(tmp) / "home") as p:
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        r = redis.Redis(unix_socket_path=str(p.home / "run" / "redis.sock"))
        with Client(p.url, p.key) as c:
            c.run("local/echo", {"text": "warm"})
            idle, idle_s = window(r, lambda: time.sleep(args.idle_s))

            def sync() -> None:
                for i in range(args.requests):
                    c.run("local/echo", {"text": f"s{i}"})

            def queued() -> None:
                for i in range(args.requests):
                    c.wait(c.submit("local/echo", {"text": f"q{i}"}), timeout=60)

            s_stats, s_s = window(r, sync)
            q_stats, q_s = window(r, queued)
        settings = ensure_signing_key(Settings.from_env({"KLIEG_HOME": str(p.home)}))
        env = settings_env(settings.with_(secrets_key=vault.ensure_key(p.home)))
        cmd = [sys.executable, "-m", "klieg_platform.worker", "--no-workflows"]
        extra = [subprocess.Popen(cmd, env=env) for _ in range(args.extra_workers)]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                live = httpx.get(f"{p.url}/workers", headers={"Authorization": f"Key {p.key}"})
                if len(live.json()["workers"]) >= 1 + args.extra_workers:
                    break
                time.sleep(0.5)
            more, more_s = window(r, lambda: time.sleep(args.idle_s))
        finally:
            for proc in extra:
                proc.terminate()
            for proc in extra:
                proc.wait(timeout=30)
    bg = sum(calls for calls, _ in idle.values()) / idle_s
    bg_more = sum(calls for calls, _ in more.values()) / more_s
    per_worker = (bg_more - bg) / max(1, args.extra_workers)
    sync_fig = per_request(s_stats, s_s, idle, idle_s, args.requests)
    queue_fig = per_request(q_stats, q_s, idle, idle_s, args.requests)
    print(json.dumps({
        "requests": args.requests,
        "sync": sync_fig,
        "queue": queue_fig,
        "background": {
            "gateway_and_worker_commands_per_s": round(bg, 1),
            "per_extra_worker_commands_per_s": round(per_worker, 1),
            "redis_cpu_share": round(idle["cpu"][1] / idle_s / 1e6, 4),
            "by_command_per_s": {k: round(v[0] / idle_s, 2) for k, v in sorted(idle.items())
                                 if k != "cpu"},
        },
        "one_redis_core_ceiling_requests_per_s": {
            "sync": round(1e6 / max(1.0, sync_fig["redis_cpu_us"])),
            "queue": round(1e6 / max(1.0, queue_fig["redis_cpu_us"])),
        },
    }))  # fmt: skip


if __name__ == "__main__":
    main()
