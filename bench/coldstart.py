"""Cold start: a torch app's first request on a node where its env is present, with and without
zygotes, against the floor of ``python -c "import torch"`` in the same env.

    .venv/bin/python bench/coldstart.py [--repeats N] [--keep-home]

One run, one temporary KLIEG_HOME: ``klieg up`` with ``KLIEG_ZYGOTES=0`` (every runner starts
its own interpreter and imports torch), then again with zygotes on (runners are forked from a
zygote that preloaded what the app imports). For each of ``apps/digits`` and
``bench/apps/torch10m`` (a 10M-parameter module built in setup()), each mode deploys a fresh
revision per repetition (same env, new code: a new runner) and times its first request, sync,
from the POST to the answer; ``GET /requests/{id}`` gives the request's cold start and the part
of it the app's own ``setup()`` took; a second request right after is the warm time. The first
repetition of each cell warms the page cache (and, with zygotes, may wait for the zygote's own
start) and is not in the medians: it is reported on its own as ``first_run`` (the cell's figures
with the page cache as the previous cell left it); the other figures are medians of the
repetitions after it, with the page cache warm.

Both apps import torch inside setup(), as media apps do: without a zygote that import is part of
``setup_s``; with one it was done before the fork, and ``setup_s`` is the app's own work (building
the module). The floor is ``<env python> -c "import torch"`` (and ``-c pass``) in the apps' env,
timed as often. Printed: one JSON line, with per app and mode ``first_result_s``, ``setup_s``,
``warm_result_s``, ``cold_start_s`` and ``overhead_s`` (first result less setup() less the warm
run), the ratios zygote/plain of the first result and of the cold start, and whether the goal
holds: with zygotes, the first result within 0.3 s of the app's own ``setup()``
(``first_result_s <= 0.3 + setup_s``) and below the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
APPS = {
    "digits": (REPO / "apps" / "digits", {"digits": "7", "steps": 4, "seed": 0}),
    "torch10m": (REPO / "bench" / "apps" / "torch10m", {"seed": 0}),
}
GOAL_OVERHEAD_S = 0.3


def log(message: str) -> None:
    print(f"[coldstart] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def platform(home: Path, zygotes: int) -> Iterator[str]:
    from klieg_platform.local import launched

    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    env["KLIEG_ZYGOTES"] = str(zygotes)
    with (
        open(home / "platform.log", "ab") as out,
        launched(home, free_port(), env=env, log=out) as url,
    ):
        yield url


def deploy_fresh(url: str, key: str, name: str, nonce: str, work: Path) -> str:
    """Deploy a copy of app ``name`` with a new file in it: a new revision on the same env."""
    from klieg.admin import AdminClient, load_app

    folder = work / f"{name}-{nonce}"
    shutil.copytree(APPS[name][0], folder)
    (folder / "nonce.txt").write_text(nonce)
    app, where, entry = load_app(folder / "app.py")
    with AdminClient(url, key=key, timeout=900) as admin:
        done = admin.deploy(app, where, entry)
    return str(done.get("revision"))


def zygote_pids(home: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"klieg._runtime.zygote" in cmdline and str(home).encode() in cmdline:
                    found.append(int(proc.name))
    return found


def first_request(url: str, key: str, name: str) -> dict[str, float]:
    body = APPS[name][1]
    with httpx.Client(base_url=url, headers={"Authorization": f"Key {key}"}, timeout=900) as http:
        began = time.perf_counter()
        answer = http.post(f"/local/{name}", json=body)
        first = time.perf_counter() - began
        answer.raise_for_status()
        began = time.perf_counter()
        http.post(f"/local/{name}", json=body).raise_for_status()
        warm = time.perf_counter() - began
        rid = answer.headers["x-fal-request-id"]
        record = http.get(f"/requests/{rid}").json()
    setup = float(record.get("setup_s") or 0.0)
    return {"first_result_s": first, "setup_s": setup, "warm_result_s": warm,
            "cold_start_s": float(record.get("cold_start_s") or 0.0),
            "overhead_s": first - setup - warm}  # fmt: skip


def median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}


def timed(cmd: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats + 1):
        began = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - began)
    return round(statistics.median(runs[1:]), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="counted repetitions per cell")
    parser.add_argument("--keep-home", action="store_true")
    args = parser.parse_args()
    from klieg.admin import AdminClient

    home = Path(tempfile.mkdtemp(prefix="klieg-coldstart-"))
    work = home / "apps"
    work.mkdir()
    out: dict[str, Any] = {"repeats": args.repeats, "cpus": os.cpu_count()}
    cells: dict[str, dict[str, list[dict[str, float]]]] = {n: {} for n in APPS}
    firsts: dict[str, dict[str, dict[str, float]]] = {}
    key = ""
    nonce = 0
    try:
        for mode, zygotes in (("plain", 0), ("zygote", 2)):
            with platform(home, zygotes) as url:
                if not key:
                    with AdminClient(url, key="", timeout=60) as anonymous:
                        key = str(anonymous.create_key()["key"])
                for name in APPS:
                    rows = cells[name].setdefault(mode, [])
                    for rep in range(args.repeats + 1):
                        nonce += 1
                        rev = deploy_fresh(url, key, name, str(nonce), work)
                        if zygotes:
                            deadline = time.monotonic() + 120
                            while not zygote_pids(home) and time.monotonic() < deadline:
                                time.sleep(0.2)
                            time.sleep(0.5)  # the zygote preloads before it answers
                        row = first_request(url, key, name)
                        log(f"{mode} {name} {rev} #{rep}: " + json.dumps(
                            {k: round(v, 3) for k, v in row.items()}))  # fmt: skip
                        if rep:
                            rows.append(row)
                        else:
                            firsts.setdefault(name, {})[mode] = row
        envs = [p for p in (home / "envs").iterdir() if (p / "bin" / "python").exists()]
        python = str(envs[0] / "bin" / "python")
        out["floor_import_torch_s"] = timed([python, "-c", "import torch"], args.repeats)
        out["python_start_s"] = timed([python, "-c", "pass"], args.repeats)
        met = True
        for name, modes in cells.items():
            plain, forked = median(modes["plain"]), median(modes["zygote"])
            out[name] = {
                "plain": plain, "zygote": forked,
                "first_run": {m: {k: round(v, 4) for k, v in r.items()}
                              for m, r in firsts.get(name, {}).items()},
                "first_result_ratio": round(forked["first_result_s"] / plain["first_result_s"], 3),
                "cold_start_ratio": round(forked["cold_start_s"] / plain["cold_start_s"], 3),
            }  # fmt: skip
            met = met and forked["first_result_s"] <= GOAL_OVERHEAD_S + forked["setup_s"]
            met = met and forked["first_result_s"] < out["floor_import_torch_s"]
        out["goal"] = (
            f"with zygotes: first result <= {GOAL_OVERHEAD_S}s + setup(), "
            "and first result < import torch"
        )
        out["goal_met"] = met
    finally:
        if args.keep_home:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
