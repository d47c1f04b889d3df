"""Soak: a steady stream of queue and sync requests for minutes while processes are killed.

    .venv/bin/python bench/soak.py                 # 5 minutes
    .venv/bin/python bench/soak.py --minutes 1 --rate 60

Starts a fresh ``klieg up`` in a temporary home (embedded Redis, 3 s leases), deploys the fault
suite's ``steady`` app, then runs rounds of ``--round-s`` seconds until ``--minutes`` pass. Each
round kills a third of the way in, in turn: the worker, every runner (found as the fault suite
finds them, zygote-forked ones included: ``runner_pids``; the requests they were running show
as ``retried``), the gateway, the embedded Redis. After each round every accepted request is
settled: its result read and checked, and no request ran more often than it was dispatched.
Prints one JSON line: the totals of every bucket of the tally (``tests/faults/stream.py``), per
fault and in all, and the processes killed per fault. Exits 1 when a request was lost or a
result wrong, or a round found nothing to kill (a soak that kills nothing proves nothing).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.platform import Platform, platform_pids, running_platform, wait_healthy
from tests.faults.conftest import deploy_steady, process_pids, runner_pids, stream
from tests.faults.stream import Tally


def faults(platform: Platform) -> dict[str, Callable[[], list[int]]]:
    """Per fault, where to find the processes it kills (one of them per round)."""
    home = platform.home
    return {
        "worker": lambda: platform_pids(home, "klieg_platform.worker"),
        "runner": lambda: runner_pids(home),
        "gateway": lambda: platform_pids(home, "klieg_platform.gateway"),
        "redis": lambda: process_pids("redis-server", home),
    }


EVERY = {"runner"}
"""Faults that kill every process found (all runners, so that some of them are busy), not
one."""


def killer(find: Callable[[], list[int]], killed: list[int], every: bool) -> Callable[[], None]:
    """SIGKILL the first process ``find`` names (``every``: each one), appending the pids to
    ``killed``."""

    def kill() -> None:
        for pid in find():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # gone between the listing and the kill
                continue
            killed.append(pid)
            if not every:
                return

    return kill


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
    kills: collections.Counter[str] = collections.Counter()
    missed: list[int] = []  # the rounds that found nothing to kill
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
            name, find = cycle[rounds % len(cycle)]
            killed: list[int] = []
            steady = stream(platform, rate=args.rate)
            steady.run_for(args.round_s, killer(find, killed, name in EVERY))
            kills[name] += len(killed)
            if not killed:
                missed.append(rounds + 1)
            tally: Tally = steady.settle(timeout_s=120)
            wait_healthy(platform.url)
            figures = tally.figures()
            figures.pop("failure_samples")
            add(per_fault.setdefault(name, {}), figures)
            rounds += 1
            print(
                f"round {rounds} ({name}, killed {killed}): {json.dumps(figures)}", file=sys.stderr
            )
    total: dict[str, Any] = {}
    for figures in per_fault.values():
        add(total, figures)
    print(
        json.dumps(
            {
                "minutes": round((time.monotonic() - started) / 60, 2),
                "rounds": rounds,
                "rate": args.rate,
                "killed": dict(kills),
                "rounds_without_a_kill": missed,
                **{k: (dict(v) if isinstance(v, dict) else v) for k, v in total.items()},
                "per_fault": {
                    name: {k: (dict(v) if isinstance(v, dict) else v) for k, v in f.items()}
                    for name, f in per_fault.items()
                },
            }
        )
    )
    if total.get("lost") or total.get("wrong") or missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
