"""``klieg run``: the dev loop against the live platform, as an author uses it. Saving the app
file (or a file it imports) serves the new code on the next request, from the printed URL;
each request's logs reach the terminal; a changed requirement builds the env with progress;
a broken save keeps the last revision serving; Ctrl-C removes the session, and a session whose
CLI was killed expires by itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.platform import Platform, until
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(400)

APP = """
import os

from pydantic import BaseModel

import klieg
from helper import SUFFIX

app = klieg.App("{name}"{requirements})
VERSION = {version}


class In(BaseModel):
    text: str = ""


@app.function(keep_alive=60)
@klieg.endpoint("/")
def hello(req: In) -> dict:
    print(f"hello v{{VERSION}}")
    return {{"v": VERSION, "suffix": SUFFIX, "pid": os.getpid()}}
"""


def write_app(folder: Path, version: int, name: str = "devloop", requirements: str = "") -> None:
    text = APP.format(name=name, version=version, requirements=requirements)
    (folder / "app.py").write_text(text)


class Session:
    """A ``klieg run`` process and the lines it printed on stderr."""

    def __init__(self, platform: Platform, folder: Path) -> None:
        env = dict(os.environ, KLIEG_URL=platform.url, KLIEG_KEY=platform.key,
                   PYTHONFAULTHANDLER="1")  # fmt: skip
        # Started with SIGINT ignored, as a background job of a script is: Ctrl-C (SIGINT)
        # must stop it all the same.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "klieg.cli", "run", str(folder / "app.py")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stops_within(self, timeout_s: float) -> None:
        """It exits, with 0, within ``timeout_s``; else the failure shows what it printed and
        where each of its threads was (SIGABRT: ``PYTHONFAULTHANDLER`` prints their stacks)."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=30)
            self._reader.join(timeout=10)
            raise AssertionError(
                f"klieg run did not stop within {timeout_s} s; it printed, then its stacks:\n"
                + "\n".join(self.lines)
            ) from None
        assert code == 0, "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 120) -> re.Match[str]:
        """The first line printed so far (or within ``timeout_s``) matching ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while True:
            exited = self.proc.poll() is not None and not self._reader.is_alive()
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
            time.sleep(0.05)


@pytest.fixture()
def folder(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "devloop"
    where.mkdir()
    (where / "helper.py").write_text('SUFFIX = "a"\n')
    write_app(where, 1)
    yield where


def test_saves_are_served_at_once_logs_stream_and_ctrl_c_removes_the_session(
    platform: Platform, folder: Path
) -> None:
    session = Session(platform, folder)
    try:
        url = session.wait_for(r"serving local/devloop at (\S+)").group(1)
        assert re.fullmatch(rf"{platform.url}/local/devloop@dev-[0-9a-f]{{8}}", url)
        ref = url.rsplit("@", 1)[1]
        session.wait_for(rf"playground: {platform.url}/console#/playground/local/devloop@{ref}")
        headers = {"Authorization": f"Key {platform.key}"}
        call = lambda: httpx.post(url, json={}, headers=headers, timeout=60)  # noqa: E731
        first = call().json()
        assert (first["v"], first["suffix"]) == (1, "a")
        session.wait_for(r"\[[0-9a-f]{8}\] INFO\s+hello v1")
        aliases = klieg(platform, "apps", "list", "--json").stdout
        assert ref in aliases and '"latest"' not in aliases.split('"devloop"')[1].split("}")[0]
        with platform.http() as http:  # the console's playground reads the session's doc
            assert http.get(f"/local/devloop@{ref}/openapi.json").status_code == 200

        write_app(folder, 2)  # a save of the app file
        until("the new code answers", lambda: call().json()["v"] == 2)
        session.wait_for(r"reloaded in [0-9.]+s: revision dev-")
        session.wait_for(r"hello v2")
        assert call().json()["pid"] != first["pid"]  # a runner of the new revision

        (folder / "helper.py").write_text('SUFFIX = "b"\n')  # a file the app imports
        until("the helper's change answers", lambda: call().json()["suffix"] == "b")

        (folder / "app.py").write_text("this is not python\n")
        session.wait_for(r"reload failed, the last revision keeps serving")
        assert call().json() == {**call().json(), "v": 2, "suffix": "b"}

        write_app(folder, 3, requirements=', requirements=["six==1.16.0"]')
        session.wait_for(r"resolving 1 requirement", timeout_s=180)  # the env is built, shown
        until("the new env answers", lambda: call().json()["v"] == 3, timeout_s=180)
    finally:
        session.proc.send_signal(signal.SIGINT)
        session.stops_within(60)
    session.wait_for(r"stopped: session dev-[0-9a-f]{8} removed")
    gone = httpx.post(url, json={}, headers=headers, timeout=30)
    assert gone.status_code == 404
    listed = klieg(platform, "revisions", "devloop")  # the session made the app: it is gone
    assert listed.returncode == 1 and "NotFoundError" in listed.stderr


def test_a_killed_session_expires_by_itself(platform: Platform, folder: Path) -> None:
    write_app(folder, 1, name="orphan")
    session = Session(platform, folder)
    url = session.wait_for(r"serving local/orphan at (\S+)").group(1)
    headers = {"Authorization": f"Key {platform.key}"}
    assert httpx.post(url, json={}, headers=headers, timeout=60).json()["v"] == 1
    session.proc.kill()
    session.proc.wait(timeout=30)
    until(
        "the unrenewed session removed",
        lambda: httpx.post(url, json={}, headers=headers, timeout=30).status_code == 404,
        timeout_s=90,
    )
    assert "orphan" not in klieg(platform, "apps", "list").stdout
