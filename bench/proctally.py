"""CPU time of a process tree and command counts of a Redis server, for the benches.

``Tally(root_pid, redis_url)`` names each descendant of ``root_pid`` by its role (gateway,
worker, runner, redis, supervisor) from its command line; ``snapshot()`` reads their CPU
seconds (utime + stime from ``/proc/<pid>/stat``) and Redis's ``INFO commandstats``;
``per_request(before, after, n)`` turns two snapshots into µs of CPU per request per role and
Redis commands per request (every command Redis ran, those inside Lua scripts included).
``Monitor`` counts what clients send (round trips) apart from what scripts run, with MONITOR, in
a short pass of its own (MONITOR slows Redis, so it never runs during a timed cell).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_SCRIPT_STATS = frozenset({"cmdstat_evalsha", "cmdstat_eval"})
"""Script invocations: their time includes the commands they run (counted again under their
own names, so summing every command's time would count those twice)."""
ROLES = (
    ("klieg._runtime.runner", "runner"),
    ("klieg._runtime.zygote", "runner"),  # a runner forked from a zygote keeps its command line
    ("klieg_platform.gateway", "gateway"),
    ("klieg_platform.worker", "worker"),
    ("redis-server", "redis"),
    ("klieg.cli", "supervisor"),
)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def role_of(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    return next((role for marker, role in ROLES if marker in cmdline), "other")


@dataclass(frozen=True)
class Snapshot:
    cpu_s: dict[int, tuple[str, float]]
    commands: dict[str, int]
    redis_usec: int


class Tally:
    def __init__(self, root_pid: int, redis_url: str) -> None:
        self.root_pid = root_pid
        self.redis = redis.Redis.from_url(redis_url)

    def pids(self) -> list[int]:
        children = _children()
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def snapshot(self) -> Snapshot:
        cpu = {pid: (role_of(pid), _cpu_s(pid)) for pid in self.pids()}
        stats: dict[str, Any] = self.redis.info("commandstats")
        commands = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        usec = sum(int(v["usec"]) for k, v in stats.items() if k in _SCRIPT_STATS)
        return Snapshot(cpu, commands, usec)

    def close(self) -> None:
        self.redis.close()


def per_request(before: Snapshot, after: Snapshot, n: int) -> dict[str, Any]:
    """µs of CPU per request by role (and all Klieg processes together), Redis commands per
        request (all of them, those inside scripts included) and the µs Redis spent running Lua
    scripts per request."""
    by_role: dict[str, float] = {}
    for pid, (role, cpu) in after.cpu_s.items():
        start = before.cpu_s.get(pid, (role, 0.0))[1]
        by_role[role] = by_role.get(role, 0.0) + cpu - start
    cpu_us = {role: round(s * 1e6 / n, 1) for role, s in sorted(by_role.items())}
    cpu_us["klieg_total"] = round(sum(by_role.values()) * 1e6 / n, 1)
    delta = {k: v - before.commands.get(k, 0) for k, v in after.commands.items()}
    total = sum(v for k, v in delta.items() if v > 0 and k != "info")
    return {
        "cpu_us_per_request": cpu_us,
        "redis_commands_per_request": round(total / n, 2),
        "redis_script_us_per_request": round((after.redis_usec - before.redis_usec) / n, 1),
    }


class Monitor:
    """Counts the commands Redis runs while it is open, by who sent them: a client (one round
    trip each) or a Lua script."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.client.ping()  # one more line, so the reader wakes and sees the stop
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                command = monitor.next_command()
                name = str(command.get("command", "")).split(" ", 1)[0].lower()
                if command.get("client_type") == "lua":
                    self.scripted[name] += 1
                elif name not in ("ping", "monitor"):
                    self.sent[name] += 1

    def per_request(self, n: int) -> dict[str, Any]:
        return {
            "redis_round_trips_per_request": round(sum(self.sent.values()) / n, 2),
            "sent_per_request": {k: round(v / n, 2) for k, v in self.sent.most_common()},
            "scripted_per_request": round(sum(self.scripted.values()) / n, 2),
        }
