"""What Klieg adds to a request: the echo app through Klieg versus a bare Starlette echo server.

    .venv/bin/python bench/overhead.py [--quick | --requests N] [--wait-s S | --poll-ms MS]
                                       [--profile DIR]

One run measures three targets with the same load generator, at concurrency 1 and 32:

bare         a Starlette echo app on uvicorn (uvloop + httptools), pydantic in and out, no Klieg
klieg_sync   ``POST /local/echo`` through a fresh ``klieg up``: gateway -> Redis -> worker -> runner
klieg_queue  ``POST /queue/local/echo``, poll its status_url until 200, GET its response_url;
             the whole round trip is one request's latency; each poll is a long poll
             (``?wait_s=``, ``--wait-s``, default 10), answered when the request completes;
             ``--wait-s 0`` polls without waiting, the first right after the submit reply and
             each later one ``--poll-ms`` (default 1) after a 202

Each Klieg cell also reports the CPU time every Klieg process spent per request (gateway, worker,
runner, Redis, from ``/proc``; the load generator excluded), the commands Redis ran per request
(``INFO commandstats``, those inside Lua scripts included) and the ratio of its rps and p50 to
the bare cell's. After the timed cells, an untimed pass under Redis MONITOR counts the round
trips per request (commands sent by a client, apart from those its scripts run). ``--profile
DIR`` adds a sync c=32 pass recorded by py-spy: one flame graph per process in DIR.

The load generator is a raw asyncio HTTP/1.1 client on uvloop: each virtual user owns one
keep-alive connection and sends its next request when the previous one has been answered
(closed loop); every latency is taken with ``time.perf_counter``. A cell is a warm-up (not
recorded) followed by a fixed number of requests. Progress goes to stderr; stdout gets exactly
one JSON line. The platform lives in a temporary KLIEG_HOME; it and the bare server are stopped
at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import uvloop
from proctally import Monitor, Tally, per_request, role_of

REPO = Path(__file__).resolve().parents[1]
ECHO_APP = REPO / "apps" / "echo" / "app.py"
SYNC_TARGET_ADDED_P50_MS = 2.0
TEXT = "hello from the klieg overhead bench"
CONCURRENCIES = (1, 32)


def log(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model or platform.processor(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# ---- the bare comparison server ---------------------------------------------------------
def serve_bare(port: int) -> None:
    """Serve the bare echo app on ``port`` until SIGINT/SIGTERM (uvicorn, uvloop, httptools).

    Same contract as apps/echo: ``{"text"}`` validated by pydantic -> ``{"text", "length"}``.
    """
    import uvicorn
    from pydantic import BaseModel, Field, ValidationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    class EchoIn(BaseModel):
        text: str = Field(max_length=100_000)

    class EchoOut(BaseModel):
        text: str
        length: int

    async def echo(request: Request) -> Response:
        try:
            req = EchoIn.model_validate_json(await request.body())
        except ValidationError as exc:
            detail = exc.json(include_url=False)
            return Response(f'{{"detail":{detail}}}', 422, media_type="application/json")
        out = EchoOut(text=req.text, length=len(req.text))
        return Response(out.model_dump_json(), media_type="application/json")

    app = Starlette(routes=[Route("/local/echo", echo, methods=["POST"])])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


# ---- processes --------------------------------------------------------------------------
def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def bare_server() -> Iterator[int]:
    """The bare echo server as a child process in its own session; yields its port.

    Stopped with SIGINT when the block ends, killed if it has not exited 10 s later.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port)],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port):
            if proc.poll() is not None:
                raise RuntimeError(f"bare server exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("bare server not listening within 60s")
            time.sleep(0.05)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass(frozen=True)
class Klieg:
    port: int
    key: str
    home: Path
    tally: Tally
    redis_url: str


def _supervisor_pid(port: int) -> int:
    """The pid of the ``klieg up`` serving ``port``."""
    marker = f"up --port {port} ".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ") + b" ":
                    return int(entry.name)
    raise RuntimeError(f"no klieg up process for port {port}")


@contextlib.contextmanager
def klieg_platform(keep_home: bool) -> Iterator[Klieg]:
    """``klieg up`` in a fresh temporary KLIEG_HOME, a bootstrapped key, apps/echo deployed."""
    from klieg.admin import AdminClient, load_app
    from klieg_platform.config import Settings
    from klieg_platform.local import launched

    home = Path(tempfile.mkdtemp(prefix="klieg-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    try:
        with (
            open(home / "platform.log", "ab") as out,
            launched(home, port, env=env, log=out) as url,
        ):
            with AdminClient(url, key="", timeout=120) as anonymous:
                key = str(anonymous.create_key()["key"])
            app, folder, entry = load_app(ECHO_APP)
            with AdminClient(url, key=key, timeout=300) as admin:
                done = admin.deploy(app, folder, entry)
            log(f"klieg up at {url}, home {home}, deployed {done.get('revision')}")
            redis_url = Settings(home=home).effective_redis_url
            tally = Tally(_supervisor_pid(port), redis_url)
            try:
                yield Klieg(port, key, home, tally, redis_url)
            finally:
                tally.close()
    finally:
        if keep_home:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


# ---- the load generator -----------------------------------------------------------------
class HttpError(Exception):
    """A response other than the one the bench expects."""


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, port: int, auth: str) -> None:
        self.port = port
        self.prefix = f"Host: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request; return (status, body). Reconnects if the server closed."""
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\n{self.prefix}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._chunked(self._reader)
        else:
            payload = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


Op = Callable[[Connection], Awaitable[None]]
ECHO_BODY = json.dumps({"text": TEXT}).encode()
ECHO_REPLY = {"text": TEXT, "length": len(TEXT)}


def _check_echo(status: int, body: bytes, what: str) -> None:
    if status != 200 or json.loads(body) != ECHO_REPLY:
        raise HttpError(f"{what}: HTTP {status} {body[:300]!r}")


def post_echo(path: str) -> Op:
    """One request = one POST of the echo body, answered 200 with the echo reply."""

    async def op(conn: Connection) -> None:
        status, body = await conn.request("POST", path, ECHO_BODY)
        _check_echo(status, body, f"POST {path}")

    return op


@dataclass
class QueueOp:
    """One request = submit, poll status_url until 200 (COMPLETED), GET response_url.

    With ``wait_s``, each poll is a long poll the gateway answers once the request completes.
    Without, the first poll goes out right after the submit reply; later ones ``poll_s`` after
    the previous reply (0: back to back; every poll is a full round trip, so it never spins).
    """

    path: str
    poll_s: float
    wait_s: float = 0.0
    polls: int = 0

    async def __call__(self, conn: Connection) -> None:
        status, body = await conn.request("POST", self.path, ECHO_BODY)
        if status != 200:
            raise HttpError(f"POST {self.path}: HTTP {status} {body[:300]!r}")
        sub = json.loads(body)
        status_url, response_url = urlsplit(sub["status_url"]), urlsplit(sub["response_url"])
        poll = status_url.path + (f"?wait_s={self.wait_s:g}" if self.wait_s > 0 else "")
        while True:
            self.polls += 1
            status, body = await conn.request("GET", poll)
            if status == 200:
                if json.loads(body).get("status") != "COMPLETED":
                    raise HttpError(f"status 200 but not COMPLETED: {body[:300]!r}")
                break
            if status != 202:
                raise HttpError(f"GET {status_url.path}: HTTP {status} {body[:300]!r}")
            if self.poll_s > 0:
                await asyncio.sleep(self.poll_s)
        status, body = await conn.request("GET", response_url.path)
        _check_echo(status, body, f"GET {response_url.path}")


async def run_load(
    port: int, auth: str, op: Op, concurrency: int, n: int
) -> tuple[list[float], float]:
    """``n`` requests from ``concurrency`` users; (latencies in seconds, wall seconds)."""
    latencies: list[float] = []
    next_index = 0

    async def user() -> None:
        nonlocal next_index
        conn = Connection(port, auth)
        try:
            while next_index < n:
                next_index += 1
                t0 = time.perf_counter()
                async with asyncio.timeout(60):
                    await op(conn)
                latencies.append(time.perf_counter() - t0)
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


async def measure(
    name: str, port: int, auth: str, op: Op, concurrency: int, n: int, tally: Tally | None
) -> dict[str, Any]:
    warmup = max(200, n // 5)
    await run_load(port, auth, op, concurrency, warmup)
    if isinstance(op, QueueOp):
        op.polls = 0
    before = tally.snapshot() if tally else None
    latencies, wall = await run_load(port, auth, op, concurrency, n)
    after = tally.snapshot() if tally else None
    latencies.sort()
    cell: dict[str, Any] = {
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "rps": round(len(latencies) / wall, 1),
        "n": len(latencies),
    }
    if isinstance(op, QueueOp):
        cell["status_polls_per_request"] = round(op.polls / len(latencies), 2)
    if before is not None and after is not None:
        cell.update(per_request(before, after, len(latencies)))
    log(f"{name} c={concurrency}: {cell}")
    return cell


async def run_all(
    bare_port: int,
    klieg: Klieg,
    counts: dict[str, dict[int, int]],
    poll_s: float,
    wait_s: float,
) -> dict[str, dict[str, Any]]:
    """Every cell, one at a time: for each concurrency, bare then klieg_sync then klieg_queue."""
    auth = f"Key {klieg.key}"
    targets: dict[str, tuple[int, Callable[[], Op]]] = {
        "bare": (bare_port, lambda: post_echo("/local/echo")),
        "klieg_sync": (klieg.port, lambda: post_echo("/local/echo")),
        "klieg_queue": (klieg.port, lambda: QueueOp("/queue/local/echo", poll_s, wait_s)),
    }
    results: dict[str, dict[str, Any]] = {name: {} for name in targets}
    for concurrency in CONCURRENCIES:
        for name, (port, make_op) in targets.items():
            n = counts[name][concurrency]
            tally = klieg.tally if name != "bare" else None
            cell = await measure(name, port, auth, make_op(), concurrency, n, tally)
            if name != "bare":
                bare = results["bare"][f"c{concurrency}"]
                cell["rps_vs_bare"] = round(cell["rps"] / bare["rps"], 3)
                cell["p50_vs_bare"] = round(cell["p50_ms"] / bare["p50_ms"], 2)
            results[name][f"c{concurrency}"] = cell
    return results


async def count_round_trips(
    klieg: Klieg, poll_s: float, wait_s: float, n: int = 200
) -> dict[str, Any]:
    """Redis round trips per request of the sync and queue paths at c=1, under MONITOR."""
    auth = f"Key {klieg.key}"
    out: dict[str, Any] = {}
    ops: dict[str, Op] = {
        "klieg_sync": post_echo("/local/echo"),
        "klieg_queue": QueueOp("/queue/local/echo", poll_s, wait_s),
    }
    for name, op in ops.items():
        with Monitor(klieg.redis_url) as monitor:
            await run_load(klieg.port, auth, op, 1, n)
            await asyncio.sleep(0.5)  # the worker's completion of the last request
        out[name] = monitor.per_request(n)
        log(f"{name} round trips: {out[name]}")
    return out


async def profile(klieg: Klieg, out_dir: Path, n: int, fmt: str) -> list[str]:
    """A sync c=32 pass recorded by py-spy, one flame graph (or ``fmt``: ``raw`` collapsed
    stacks, ``speedscope``) per Klieg Python process. Only samples holding the GIL count
    (``--gil``): the graphs show where Python spends CPU, not where the event loop waits."""
    out_dir.mkdir(parents=True, exist_ok=True)
    auth = f"Key {klieg.key}"
    recorders = []
    for pid in klieg.tally.pids():
        role = role_of(pid)
        if role in ("gateway", "worker", "runner"):
            suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[fmt]
            svg = out_dir / f"{role}-{pid}.{suffix}"
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            cmd = [py_spy, "record", "--pid", str(pid), "--rate", "250", "-o", str(svg)]
            cmd += ["--format", fmt, "--gil", "--nonblocking"]
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            recorders.append((svg, subprocess.Popen(cmd, **quiet)))
    await asyncio.sleep(1.0)
    await run_load(klieg.port, auth, post_echo("/local/echo"), 32, n)
    for _, proc in recorders:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    return [str(svg) for svg, _ in recorders if svg.exists()]


# ---- the run ----------------------------------------------------------------------------
def request_counts(base: int) -> dict[str, dict[int, int]]:
    """Measured requests per cell: ``base`` at c=1 and 2x at c=32; the queue path half that."""
    plain = {1: base, 32: 2 * base}
    queue = {1: max(50, base // 2), 32: max(100, base)}
    return {"bare": plain, "klieg_sync": plain, "klieg_queue": queue}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests at c=1 (default 2000; 300 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a run of well under a minute")
    parser.add_argument(
        "--poll-ms", type=float, default=1.0, help="queue: pause between status polls (ms)"
    )
    parser.add_argument(
        "--wait-s", type=float, default=10.0, help="queue: long-poll wait per status poll (0: none)"
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temp KLIEG_HOME")
    parser.add_argument(
        "--profile", type=Path, default=None, help="write py-spy flame graphs to this folder"
    )
    parser.add_argument(
        "--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    base = args.requests or (300 if args.quick else 2000)
    counts = request_counts(base)
    poll_s = args.poll_ms / 1000
    started = time.monotonic()
    machine = machine_info()
    try:
        with bare_server() as bare_port, klieg_platform(args.keep_home) as klieg:
            results = uvloop.run(run_all(bare_port, klieg, counts, poll_s, args.wait_s))
            round_trips = uvloop.run(count_round_trips(klieg, poll_s, args.wait_s))
            flames = (
                uvloop.run(profile(klieg, args.profile, base, args.profile_format))
                if args.profile
                else []
            )
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    machine["load_avg_1m_after"] = round(os.getloadavg()[0], 2)

    def added(target: str, cell: str) -> float:
        return round(results[target][cell]["p50_ms"] - results["bare"][cell]["p50_ms"], 3)

    added_p50 = {
        "sync_c1": added("klieg_sync", "c1"),
        "sync_c32": added("klieg_sync", "c32"),
        "queue_c1": added("klieg_queue", "c1"),
    }
    report = {
        "bench": "overhead",
        "machine": machine,
        "config": {
            "client": "raw asyncio HTTP/1.1 on uvloop, one keep-alive connection per user",
            "requests": {
                name: {f"c{c}": n for c, n in cells.items()} for name, cells in counts.items()
            },
            "warmup": "max(200, n/5) requests per cell at the same concurrency",
            "queue_poll_ms": args.poll_ms,
            "queue_wait_s": args.wait_s,
            "wall_s": round(time.monotonic() - started, 1),
        },
        "results": results,
        "round_trips_c1": round_trips,
        "added_p50_ms": added_p50,
        "target": {
            "sync_added_p50_ms_max": SYNC_TARGET_ADDED_P50_MS,
            "met": added_p50["sync_c1"] <= SYNC_TARGET_ADDED_P50_MS,
        },
    }
    if flames:
        report["flame_graphs"] = flames
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
