"""Dev-loop reload: from saving the app file under ``klieg run`` to the first result of the new
code.

    .venv/bin/python bench/reload.py [--repeats N] [--keep-home]

One temporary KLIEG_HOME: ``klieg up``, a first key, and ``klieg run`` on a small app (no
requirements) in a temporary folder. After the session serves (its URL printed) and a warm
first request, each repetition rewrites ``app.py`` with a new version number and, from the
moment the file is written, posts to the session's URL (back to back, each waiting for its
answer) until one answers with the new version: that time is ``reload_s``. It covers the
watcher noticing the save, the code-only redeploy (the env and its lock reused), the gateway's
route moving to the new revision, and the new revision's cold start (a runner forked from the
env's zygote) and its first request. The CLI's own ``reloaded in`` figure (the redeploy alone)
is read from its output. Printed: one JSON line with the median, max and every run, and
whether the goal holds (median reload to first new result <= 1 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

GOAL_S = 1.0
APP = """
import os

from pydantic import BaseModel

import klieg

app = klieg.App("reloadbench")
VERSION = {version}


class In(BaseModel):
    text: str = ""


@app.function(keep_alive=60)
@klieg.endpoint("/")
def hello(req: In) -> dict:
    return {{"v": VERSION, "pid": os.getpid()}}
"""


def log(message: str) -> None:
    print(f"[reload] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def platform(home: Path) -> Iterator[str]:
    from klieg_platform.local import launched

    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    with (
        open(home / "platform.log", "ab") as out,
        launched(home, free_port(), env=env, log=out) as url,
    ):
        yield url


class Run:
    """A ``klieg run`` process; its stderr lines collected by a thread."""

    def __init__(self, url: str, key: str, app_file: Path) -> None:
        env = dict(os.environ, KLIEG_URL=url, KLIEG_KEY=key)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "klieg.cli", "run", str(app_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, after: int = 0, timeout_s: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if found := re.search(pattern, line):
                    return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"klieg run printed no {pattern!r}:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def reload_once(http: httpx.Client, url: str, app_file: Path, version: int) -> float:
    """Write version ``version`` and time until the session's URL answers with it."""
    began = time.perf_counter()
    app_file.write_text(APP.format(version=version))
    while True:
        answer = http.post(url, json={})
        if answer.status_code == 200 and answer.json()["v"] == version:
            return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="reloads timed")
    parser.add_argument("--keep-home", action="store_true")
    args = parser.parse_args()
    from klieg.admin import AdminClient

    home = Path(tempfile.mkdtemp(prefix="klieg-reload-"))
    folder = home / "app"
    folder.mkdir()
    app_file = folder / "app.py"
    app_file.write_text(APP.format(version=0))
    out: dict[str, Any] = {"repeats": args.repeats, "cpus": os.cpu_count()}
    try:
        with platform(home) as url:
            with AdminClient(url, key="") as anonymous:
                key = anonymous.create_key()["key"]
            run = Run(url, key, app_file)
            try:
                served = run.wait_for(r"serving \S+ at (\S+)").group(1)
                log(f"session at {served}")
                headers = {"Authorization": f"Key {key}"}
                with httpx.Client(headers=headers, timeout=120) as http:
                    http.post(served, json={}).raise_for_status()  # warm: env, zygote, runner
                    runs, redeploys = [], []
                    for version in range(1, args.repeats + 1):
                        seen = len(run.lines)
                        runs.append(reload_once(http, served, app_file, version))
                        took = run.wait_for(r"reloaded in ([0-9.]+)s", after=seen).group(1)
                        redeploys.append(float(took))
                        log(f"reload {version}: {runs[-1]:.3f}s (redeploy {took}s)")
                        time.sleep(0.3)
            finally:
                run.stop()
        out["reload_to_first_result_s"] = {
            "median": round(statistics.median(runs), 3),
            "max": round(max(runs), 3),
            "runs": [round(r, 3) for r in runs],
        }
        out["redeploy_s_median"] = round(statistics.median(redeploys), 3)
        out["goal_s"] = GOAL_S
        out["goal_met"] = statistics.median(runs) <= GOAL_S
    finally:
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
