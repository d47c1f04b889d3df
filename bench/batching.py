"""How much of the digits model's batching gain survives the platform.

    .venv/bin/python bench/batching.py [--quick] [--seconds S] [--concurrency C] [--rounds R]

One run measures, in images per second (one digit = one image):

model_alone  ``model.sample()`` of 1 digit and of 16 digits (20 steps, guidance 2.0) in the
             digits app's own built env (torch, 2 threads as the app sets), no platform;
             ``model_gain = ips16 / ips1``
app_alone    the app's batched endpoint called in-process the way a runner calls it (JSON in,
             sampling, PNG rendering, JSON out) with batches of 1 and 16: how much of the gap
             is the app's own per-request work rather than the platform's
platform     ``POST /{owner}/digits`` through a fresh ``klieg up`` under C closed-loop clients
             (default 32), each request ``{"digits": "<one digit>", "seed": i}``, with the app
             deployed with ``max_batch_size`` 1 and 16 (``DIGITS_MAX_BATCH_SIZE`` at deploy);
             ``platform_gain = ips16 / ips1``

``kept = platform_gain / model_gain`` is the share of the model's batching gain that reaches
clients; ``met`` is ``kept >= target_kept`` (0.9).

``platform_cpu`` is the platform's own CPU per request in each platform cell (``proctally``):
``processes_ms``, what every Klieg process but the runner spent per request (gateway, worker,
Redis, supervisor; their background included), plus ``runner_excess_ms``, what the runner
spent beyond the app's own work (its CPU per request less the app alone's CPU per image at that
batch size, paired by round). ``batch1`` is the unbatched figure its target
(``target_ms_batch1``, 1.5 ms) is for. The runner's excess is the difference of two figures near
90 ms and moves by several ms between rounds; much of it is torch's two threads waiting on each
other while the platform's processes take their turns on the same two cores, which the app alone
never meets.

The machine is shared and noisy, in two ways. The model's own speed at batch 16 drifts by
10-20% from one minute to the next, both ways, with nothing else of ours running; and it differs
by as much between two processes started one after the other (a process keeps its speed for
its life: where its memory and threads landed). So the figures are paired by round and every
round starts fresh processes: a new ``klieg up`` in the same KLIEG_HOME (new gateway, worker
and runners; the env is built once) and a new model-alone process on the digits env's
interpreter. A round measures everything once, back to back, with the same counted seconds for
each figure: the model and the app alone, then the platform with ``max_batch_size`` 1 and 16
(in turns 1, 16 and 16, 1; alias ``latest`` moved between the two revisions).
``kept_rounds`` is the ratio within each round and ``kept`` their median; each figure reported
is its median over the rounds. A platform cell is a warm-up under the same load (not
counted), then ``--seconds`` of counted completions; the clients are the raw asyncio HTTP/1.1
client of ``overhead.py`` on uvloop (one keep-alive connection per client, about 0.1 ms of
client CPU per request). ``others_cores`` says how many cores other processes of the machine
used during a figure (from /proc); above 0.2 the run is marked ``noisy``. Progress goes to
stderr; stdout gets exactly one JSON line.

The model-alone figures come from this file run by the digits env's interpreter
(``--serve-alone``), so its module level imports only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proctally import Snapshot, Tally

REPO = Path(__file__).resolve().parents[1]
DIGITS_APP = REPO / "apps" / "digits" / "app.py"
BATCH = 16
STEPS = 20
GUIDANCE = 2.0
TARGET_KEPT = 0.9
TARGET_PLATFORM_CPU_MS = 1.5
"""The platform's own CPU per unbatched request, every Klieg process together (``platform_cpu``)."""
NOISY_OTHERS_CORES = 0.2
"""Above this many cores used by other processes during a figure, the run is marked noisy."""


def log(message: str) -> None:
    print(f"[batching] {message}", file=sys.stderr, flush=True)


# ---- alone: runs inside the digits env (stdlib + torch + the SDK only) ---------------------
def _rate(work: Any, images: int, seconds: float) -> tuple[float, float]:
    """Images/s of ``work()`` (``images`` images per call), repeated for ``seconds``, and the
    CPU ms this process spent per image meanwhile (every thread: torch's too)."""
    calls = 0
    start, spent = time.perf_counter(), time.process_time()
    while True:
        work()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            cpu_ms = (time.process_time() - spent) * 1000 / (images * calls)
            return images * calls / elapsed, cpu_ms


def serve_alone() -> None:
    """Load the model and the app once; then, per line ``<seconds>`` on stdin, measure one
    round (model and app, batch 1 and 16, ``seconds`` each) and print it as one JSON line.
    What the app prints (a line per sampling pass) is dropped: stdout carries only those lines."""
    report, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    import torch

    from klieg import media
    from klieg._runtime.loader import Target
    from klieg.admin import load_app

    torch.set_num_threads(2)
    folder = DIGITS_APP.parent
    sys.path.insert(0, str(folder))
    import model as digits_model

    net = digits_model.load(str(folder / "weights.safetensors"))
    os.environ["DIGITS_MAX_BATCH_SIZE"] = str(BATCH)
    app, _, entry = load_app(DIGITS_APP)
    target = Target(folder, app.spec(entry).functions[0])
    target.setup()
    endpoint = target.endpoint("/")
    media.PENDING.active = True  # as in a runner: media bytes are kept, not base64-encoded

    def model_call(n: int) -> Any:
        digits = [i % 10 for i in range(n)]
        noise = digits_model.initial_noise(n, list(range(n)))
        return lambda: digits_model.sample(net, digits, steps=STEPS, guidance=GUIDANCE, noise=noise)

    def app_call(n: int) -> Any:
        bodies = [json.dumps({"digits": str(i % 10), "seed": i}).encode() for i in range(n)]

        def run() -> None:
            for out in endpoint.batch(bodies):
                if not isinstance(out, bytes):
                    raise RuntimeError(f"the endpoint failed: {out}")
            media.PENDING.clear()

        return run

    makers = {"model": model_call, "app": app_call}
    for make in makers.values():
        for n in (1, BATCH):
            _rate(make(n), n, 0.5)  # warm-up
    info = {"torch": str(torch.__version__), "threads": torch.get_num_threads()}
    print(json.dumps(info), file=report, flush=True)
    for line in sys.stdin:
        seconds = float(line)
        started, machine, spent = time.monotonic(), machine_cpu_s(), time.process_time()
        out: dict[str, Any] = {}
        for kind, make in makers.items():
            out[kind] = {}
            for n in (1, BATCH):
                ips, cpu_ms = _rate(make(n), n, seconds)
                out[kind] |= {f"ips{n}": round(ips, 1), f"cpu_ms{n}": round(cpu_ms, 2)}
        elapsed, now = time.monotonic() - started, machine_cpu_s()
        out["others_cores"] = None
        if machine is not None and now is not None:
            foreign = (now - machine - time.process_time() + spent) / elapsed
            out["others_cores"] = round(max(0.0, foreign), 2)
        print(json.dumps(out), file=report, flush=True)


class Alone:
    """``serve_alone`` in a subprocess on the digits env's interpreter ``python``."""

    def __init__(self, python: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--serve-alone"],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the model-alone process exited with code {self.proc.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def measure(self, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- the platform -------------------------------------------------------------------------
@dataclass
class Klieg:
    url: str
    port: int
    key: str
    home: Path
    tally: Tally


@contextlib.contextmanager
def bench_home(keep: bool) -> Iterator[Path]:
    """A temporary KLIEG_HOME shared by every round (the env is built once); removed after
    unless ``keep``."""
    home = Path(tempfile.mkdtemp(prefix="klieg-bench-"))
    try:
        yield home
    finally:
        if keep:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def klieg_platform(home: Path, key: str = "") -> Iterator[Klieg]:
    """``klieg up`` in ``home`` (fresh processes: gateway, worker, and runners once called);
    a key is bootstrapped when ``key`` is empty."""
    from overhead import _supervisor_pid, free_port
    from proctally import Tally

    from klieg.admin import AdminClient
    from klieg_platform.config import Settings
    from klieg_platform.local import launched

    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KLIEG_") and k != "DIGITS_MAX_BATCH_SIZE"
    }
    with (
        open(home / "platform.log", "ab") as out,
        launched(home, port, env=env, log=out) as url,
    ):
        if not key:
            with AdminClient(url, key="", timeout=120) as anonymous:
                key = str(anonymous.create_key()["key"])
        log(f"klieg up at {url}, home {home}")
        tally = Tally(_supervisor_pid(port), Settings(home=home).effective_redis_url)
        try:
            yield Klieg(url, port, key, home, tally)
        finally:
            tally.close()


def deploy_digits(klieg: Klieg, batch: int) -> dict[str, Any]:
    """Deploy apps/digits with ``DIGITS_MAX_BATCH_SIZE=batch`` (read when the app file is
    imported); returns the deploy's ``done`` event (revision, env_key, owner)."""
    from klieg.admin import AdminClient, load_app

    before = os.environ.get("DIGITS_MAX_BATCH_SIZE")
    os.environ["DIGITS_MAX_BATCH_SIZE"] = str(batch)
    try:
        app, folder, entry = load_app(DIGITS_APP)
    finally:
        if before is None:
            os.environ.pop("DIGITS_MAX_BATCH_SIZE", None)
        else:
            os.environ["DIGITS_MAX_BATCH_SIZE"] = before
    fn = app.spec(entry).functions[0]
    assert fn.endpoints[0].max_batch_size == batch, fn
    started = time.monotonic()
    with AdminClient(klieg.url, key=klieg.key, timeout=900) as admin:
        done = admin.deploy(app, folder, entry)
    log(
        f"deployed digits max_batch_size={batch}: revision {done['revision']} "
        f"(env built: {done.get('env_built')}, {time.monotonic() - started:.1f}s)"
    )
    return done


def use_revision(klieg: Klieg, revision: str) -> None:
    from klieg.admin import AdminClient

    with AdminClient(klieg.url, key=klieg.key, timeout=60) as admin:
        admin.set_alias("digits", "latest", revision)


def env_python(home: Path, env_key: str) -> Path:
    """The interpreter of the env ``env_key`` built by the platform living in ``home``."""
    from klieg_platform.config import Settings
    from klieg_platform.packager import Packager

    return Packager(Settings(home=home)).python(env_key)


# ---- CPU accounting (Linux /proc; None elsewhere) ------------------------------------------
def machine_cpu_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (every core)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s() -> float | None:
    """CPU seconds of this process and its live descendants (platform, runners, clients)."""
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            spent[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    mine, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        mine.add(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return sum(spent.get(pid, 0.0) for pid in mine)


CpuMark = tuple[float, float | None, float | None]


def cpu_mark() -> CpuMark:
    return time.monotonic(), machine_cpu_s(), tree_cpu_s()


def cores_since(mark: CpuMark) -> dict[str, float | None]:
    """Cores used since ``mark``: ``ours`` (this process tree) and ``others`` (the rest of the
    machine: other users of a shared box; a large value means a noisy figure)."""
    now, machine, tree = cpu_mark()
    if mark[1] is None or mark[2] is None or machine is None or tree is None:
        return {"ours": None, "others": None}
    ours = (tree - mark[2]) / (now - mark[0])
    others = (machine - mark[1]) / (now - mark[0]) - ours
    return {"ours": round(ours, 2), "others": round(max(0.0, others), 2)}


# ---- the load -----------------------------------------------------------------------------
class HttpError(Exception):
    """A response other than a digits result."""


async def drive(
    klieg: Klieg, path: str, concurrency: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``warmup_s + seconds``; the requests completed in
    the last ``seconds`` are counted (images/s and latency percentiles), and the CPU each
    platform process spent per request meanwhile (``proctally``)."""
    import asyncio

    from overhead import Connection, percentile
    from proctally import per_request

    latencies: list[float] = []
    sent = 0
    t0 = time.perf_counter() + warmup_s
    t1 = t0 + seconds

    async def client() -> None:
        nonlocal sent
        conn = Connection(klieg.port, f"Key {klieg.key}")
        try:
            while (start := time.perf_counter()) < t1:
                body = json.dumps({"digits": str(sent % 10), "seed": sent}).encode()
                sent += 1
                async with asyncio.timeout(120):
                    status, reply = await conn.request("POST", path, body)
                end = time.perf_counter()
                if status != 200 or b'"digits"' not in reply:
                    raise HttpError(f"POST {path}: HTTP {status} {reply[:300]!r}")
                if t0 <= end <= t1:
                    latencies.append(end - start)
        finally:
            conn.close()

    async def watch() -> tuple[dict[str, float | None], Snapshot, Snapshot]:
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        mark, before = cpu_mark(), klieg.tally.snapshot()
        await asyncio.sleep(max(0.0, t1 - time.perf_counter()))
        return cores_since(mark), before, klieg.tally.snapshot()

    watched, *_ = await asyncio.gather(watch(), *(client() for _ in range(concurrency)))
    cores, before, after = watched
    latencies.sort()
    return {
        "ips": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "n": len(latencies),
        "cores": cores,
        **per_request(before, after, max(1, len(latencies))),
    }


def warm(klieg: Klieg, path: str, timeout_s: float = 600) -> float:
    """Send requests until one succeeds (the first may cold-start a runner); seconds taken."""
    import httpx

    started = time.monotonic()
    headers = {"Authorization": f"Key {klieg.key}"}
    with httpx.Client(base_url=klieg.url, headers=headers, timeout=timeout_s) as http:
        r = http.post(path, json={"digits": "0", "seed": 0})
        if r.status_code != 200:
            raise HttpError(f"POST {path}: HTTP {r.status_code} {r.text[:300]}")
    return time.monotonic() - started


# ---- the run ------------------------------------------------------------------------------
def gain(cells: dict[str, Any]) -> float:
    return round(cells[f"ips{BATCH}"] / cells["ips1"], 3) if cells["ips1"] else 0.0


def paired(ours: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[float]:
    """Per round, the gain of ``ours`` over the gain of ``base``."""
    return [round(gain(o) / gain(b), 3) for o, b in zip(ours, base, strict=True) if gain(b)]


def median_cells(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median images/s of each batch size over the rounds, their gain and every round."""
    out: dict[str, Any] = {
        f"ips{n}": round(statistics.median(r[f"ips{n}"] for r in runs), 1) for n in (1, BATCH)
    }
    out["gain"] = gain(out)
    out["rounds"] = runs
    return out


def platform_cpu_figures(
    cells: dict[int, list[dict[str, Any]]], alone: list[dict[str, Any]]
) -> dict[str, Any]:
    """The platform's own CPU per request, per batch size, medians over the rounds:
    ``processes_ms``, every Klieg process but the runner (gateway, worker, Redis, supervisor;
    their background included), measured exactly; ``runner_excess_ms``, what the runner spent
    beyond the app's own work (its CPU per request less the app alone's CPU per image at the same
    batch size, paired by round), a difference of two large, noisy figures; ``ms_per_request``,
    both. For ``max_batch_size`` 16 the app's figure is that of full batches of 16, so the
    runner's excess there is an upper bound. ``cpu_us_by_role``: the median round's."""
    out: dict[str, Any] = {}
    for batch, runs in cells.items():
        rows = []
        for cell, own in zip(runs, alone, strict=True):
            roles = dict(cell["cpu_us_per_request"])
            runner = roles.pop("runner", 0.0)
            roles.pop("klieg_total", None)
            processes = sum(roles.values()) / 1000
            excess = max(0.0, runner - own["app"][f"cpu_ms{batch}"] * 1000) / 1000
            rows.append((processes + excess, processes, excess, cell["cpu_us_per_request"]))
        rows.sort(key=lambda r: r[0])
        median = rows[len(rows) // 2]
        out[f"batch{batch}"] = {
            "ms_per_request": round(median[0], 2),
            "processes_ms": round(statistics.median(r[1] for r in rows), 2),
            "runner_excess_ms": round(statistics.median(r[2] for r in rows), 2),
            "rounds": [round(r[0], 2) for r in rows],
            "cpu_us_by_role": median[3],
        }
    out["target_ms_batch1"] = TARGET_PLATFORM_CPU_MS
    out["met"] = out["batch1"]["ms_per_request"] <= TARGET_PLATFORM_CPU_MS
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop
    from overhead import machine_info

    started = time.monotonic()
    machine = machine_info()
    configs = (1, BATCH)
    alone_runs: list[dict[str, Any]] = []
    cells: dict[int, list[dict[str, Any]]] = {b: [] for b in configs}
    revisions: dict[int, str] = {}
    path, env_key, key = "", "", ""
    info: dict[str, Any] = {}
    with bench_home(args.keep_home) as home:
        for round_no in range(1, args.rounds + 1):
            with klieg_platform(home, key) as klieg:
                key = klieg.key
                if not revisions:
                    for batch in configs:
                        done = deploy_digits(klieg, batch)
                        revisions[batch] = str(done["revision"])
                        path, env_key = f"/{done['owner']}/digits", str(done["env_key"])
                alone = Alone(env_python(home, env_key))
                try:
                    alone_runs.append(alone.measure(args.alone_seconds))
                    info = alone.info
                finally:
                    alone.close()
                log(f"round {round_no} alone: {alone_runs[-1]}")
                for batch in configs if round_no % 2 else configs[::-1]:
                    use_revision(klieg, revisions[batch])
                    first = warm(klieg, path)
                    cell = uvloop.run(
                        drive(klieg, path, args.concurrency, args.warmup, args.seconds)
                    )
                    cell["first_request_s"] = round(first, 2)
                    cells[batch].append(cell)
                    log(f"round {round_no} platform max_batch_size={batch}: {cell}")

    model = median_cells([{**r["model"], "others_cores": r["others_cores"]} for r in alone_runs])
    app = median_cells([{**r["app"], "others_cores": r["others_cores"]} for r in alone_runs])
    platform = median_cells(
        [
            {
                **{f"ips{b}": cells[b][i]["ips"] for b in configs},
                **{f"p50_ms_{b}": cells[b][i]["p50_ms"] for b in configs},
                **{f"p99_ms_{b}": cells[b][i]["p99_ms"] for b in configs},
                "cores_ours": [cells[b][i]["cores"]["ours"] for b in configs],
                "others_cores": max(
                    (cells[b][i]["cores"]["others"] or 0.0 for b in configs), default=0.0
                ),
            }
            for i in range(args.rounds)
        ]
    )
    for b in configs:
        middle = sorted(cells[b], key=lambda c: c["ips"])[len(cells[b]) // 2]
        platform[f"p50_ms_{b}"], platform[f"p99_ms_{b}"] = middle["p50_ms"], middle["p99_ms"]
    seen = [r["others_cores"] for r in model["rounds"] + platform["rounds"]]
    others = max((o for o in seen if o is not None), default=None)
    noisy = others is not None and others > NOISY_OTHERS_CORES
    if noisy:
        log(f"other processes used up to {others} cores meanwhile: the figures are noisy")
    platform_cpu = platform_cpu_figures(cells, alone_runs)
    per_round = paired(platform["rounds"], model["rounds"])
    kept = round(statistics.median(per_round), 3) if per_round else 0.0
    vs_app = paired(platform["rounds"], app["rounds"])
    machine["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return {
        "bench": "batching",
        "machine": machine,
        "config": {
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "alone_seconds": args.alone_seconds,
            "steps": STEPS,
            "guidance": GUIDANCE,
            "batch_wait_ms": 20,
            "torch": info.get("torch"),
            "torch_threads": info.get("threads"),
            "wall_s": round(time.monotonic() - started, 1),
        },
        "model_alone": model,
        "app_alone": app,
        "platform": platform,
        "model_gain": model["gain"],
        "app_gain": app["gain"],
        "platform_gain": platform["gain"],
        "kept": kept,
        "kept_rounds": per_round,
        "kept_vs_app": round(statistics.median(vs_app), 3) if vs_app else 0.0,
        "platform_cpu": platform_cpu,
        "target_kept": TARGET_KEPT,
        "met": kept >= TARGET_KEPT,
        "others_cores_max": others,
        "noisy": noisy,
    }


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of short cells")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--seconds", type=float, default=None, help="counted seconds per cell (default 4; 3)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="warm-up seconds per cell (default 1.5; 1)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of (alone, 1, 16) (default 7; 1)"
    )
    parser.add_argument(
        "--alone-seconds",
        type=float,
        default=None,
        help="seconds per model/app-alone figure per round (default: --seconds)",
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temp KLIEG_HOME")
    parser.add_argument("--serve-alone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_alone:
        serve_alone()
        return 0
    quick = args.quick
    args.seconds = args.seconds or (3.0 if quick else 4.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 1.5)
    args.rounds = args.rounds or (1 if quick else 7)
    args.alone_seconds = args.alone_seconds or args.seconds
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted; platform stopped")
        return 130
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
