"""Soak: a steady stream of queue and sync requests for minutes while processes are killed.

    .venv/bin/python bench/soak.py                 # 5 minutes
    .venv/bin/python bench/soak.py --minutes 1 --rate 60

Starts a fresh ``klieg up`` in a temporary home (embedded Redis, 3 s leases), deploys the fault
suite's ``steady`` app, then runs rounds of ``--round-s`` seconds until ``--minutes`` pass. Each
round kills one process a third of the way in, in turn: the worker, a runner mid-request, the
gateway, the embedded Redis. After each round every accepted request is settled (its result read
and checked). Prints one JSON line: the totals of every bucket of the tally (``tests/faults/
stream.py``), per fault and in all; ``lost`` and ``wrong`` must be 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.platform import Platform, platform_pids, running_platform, wait_healthy
from tests.faults.conftest import deploy_steady, process_pids
from tests.faults.stream import Stream, Tally


def _kill(pids: list[int]) -> None:
    if pids:
        os.kill(pids[0], signal.SIGKILL)


def faults(platform: Platform) -> dict[str, Any]:
    home = platform.home
    return {
        "worker": lambda: _kill(platform_pids(home, "klieg_platform.worker")),
        "runner": lambda: _kill(process_pids("klieg._runtime.runner", home)),
        "gateway": lambda: _kill(platform_pids(home, "klieg_platform.gateway")),
        "redis": lambda: _kill(process_pids("redis-server", home)),
    }


def add(total: dict[str, Any], figures: dict[str, Any]) -> None:
    for name, value in figures.items():
        if isinstance(value, dict):
            total.setdefault(name, collections.Counter()).update(value)
        elif isinstance(value, int):
            total[name] = total.get(name, 0) + value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--round-s", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    env = {"KLIEG_LEASE_S": "3", "KLIEG_WORKER_SLOTS": "4"}
    per_fault: dict[str, dict[str, Any]] = {}
    rounds = 0
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="klieg-soak-") as tmp,
        running_platform(Path(tmp) / "home", extra_env=env) as platform,
    ):
        platform.bootstrap()
        deploy_steady(platform)
        cycle = list(faults(platform).items())
        while time.monotonic() - started < args.minutes * 60:
            name, fault = cycle[rounds % len(cycle)]
            stream = Stream(platform.url, platform.key, rate=args.rate)
            stream.run_for(args.round_s, fault)
            tally: Tally = stream.settle(timeout_s=120)
            wait_healthy(platform.url)
            figures = tally.figures()
            figures.pop("failure_samples")
            add(per_fault.setdefault(name, {}), figures)
            rounds += 1
            print(f"round {rounds} ({name}): {json.dumps(figures)}", file=sys.stderr)
    total: dict[str, Any] = {}
    for figures in per_fault.values():
        add(total, figures)
    print(
        json.dumps(
            {
                "minutes": round((time.monotonic() - started) / 60, 2),
                "rounds": rounds,
                "rate": args.rate,
                **{k: (dict(v) if isinstance(v, dict) else v) for k, v in total.items()},
                "per_fault": {
                    name: {k: (dict(v) if isinstance(v, dict) else v) for k, v in f.items()}
                    for name, f in per_fault.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
