"""App secrets end to end: set from stdin, sealed in the registry, in the runner's environment
only; the value shows up in no answer (sync, queue status and result, ``GET /requests/{id}``,
``/metrics``, a webhook delivery), log, revision, file of the platform, command line of any
process, or environment of the platform's processes other than its runners (``ps``)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from klieg.admin import load_app
from tests.e2e.platform import TEST_APPS, Platform, wait_for_status
from tests.e2e.webhook_receiver import receiving
from tests.faults.conftest import runner_pids

pytestmark = pytest.mark.timeout(240)

VALUE = "sk-klieg-" + hashlib.sha256(b"e2e secret").hexdigest()[:24]
APP = TEST_APPS / "secretive" / "app.py"


def _klieg(platform: Platform, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KLIEG_URL=platform.url, KLIEG_KEY=platform.key)
    return subprocess.run(
        [sys.executable, "-m", "klieg.cli", *args],
        env=env, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and "envs" not in path.parts:
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def _platform_pids(home: Path) -> list[int]:
    """Every process of the platform in ``home``: its environment or command line names it."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (
                f"KLIEG_HOME={home}".encode() in (proc / "environ").read_bytes()
                or str(home).encode() in (proc / "cmdline").read_bytes()
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _ps(*args: str) -> str:
    return subprocess.run(["ps", *args], capture_output=True, text=True, check=True).stdout


def _listing_holds_no_secret(platform: Platform) -> None:
    """No command line on the machine holds the value, nor the environment of a process of the
    platform that is no runner (a runner's holds it: that is how the app gets it)."""
    assert VALUE not in _ps("-eww", "-o", "pid=,args=")
    runners = set(runner_pids(platform.home))
    others = [pid for pid in _platform_pids(platform.home) if pid not in runners]
    named = {pid: _ps("-ww", "-o", "args=", "-p", str(pid)) for pid in others}
    assert any("klieg_platform.gateway" in n for n in named.values()), named
    assert any("klieg_platform.worker" in n for n in named.values()), named
    assert runners, "no runner: the app did not run"
    environments = _ps("eww", "-o", "pid=,args=", "-p", ",".join(map(str, others)))
    assert "KLIEG_HOME=" in environments, "ps shows no environments here"
    assert VALUE not in environments, "a process of the platform holds the value"


def test_a_secret_reaches_the_runner_and_nothing_else(platform: Platform) -> None:
    outputs: list[str] = []
    out = _klieg(platform, "secrets", "set", "API_TOKEN", stdin=VALUE + "\n")
    assert out.returncode == 0, out.stderr
    outputs += [out.stdout, out.stderr]
    app, folder, entry = load_app(APP, "secretive")
    with platform.admin() as admin:
        outputs.append(str(admin.deploy(app, folder, entry)))
    with platform.http() as http, receiving() as receiver:
        answer = http.post("/local/secretive", json={"salt": "s"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["sha256"] == hashlib.sha256(("s" + VALUE).encode()).hexdigest()
        assert body["leaked"] == [], "platform credentials reached the runner"
        sub = http.post("/queue/local/secretive", json={}).json()
        done = wait_for_status(http, sub["status_url"], "COMPLETED")
        assert any("using a token of" in line["message"] for line in done["logs"])
        outputs += [answer.text, str(done), http.get(sub["response_url"]).text]
        outputs += [http.get("/apps/secretive/revisions").text, http.get("/secrets").text]
        hooked = http.post(
            "/queue/local/secretive", params={"fal_webhook": receiver.url}, json={"salt": "w"}
        ).json()
        deadline = time.monotonic() + 30
        while not receiver.accepted(hooked["request_id"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        deliveries = receiver.of(hooked["request_id"])
        assert deliveries and deliveries[0].body["status"] == "OK", deliveries
        outputs += [json.dumps(d.body) + json.dumps(d.headers) for d in deliveries]
        ids = [answer.headers["x-klieg-request-id"], sub["request_id"], hooked["request_id"]]
        for rid in ids:
            one = http.get(f"/requests/{rid}")
            assert one.status_code == 200 and one.json()["status"] == "COMPLETED", one.text
            outputs.append(one.text)
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and 'app="secretive"' in metrics.text
        outputs.append(metrics.text)
    listing = _klieg(platform, "secrets", "list")
    assert listing.returncode == 0 and "API_TOKEN" in listing.stdout
    outputs += [listing.stdout, listing.stderr]
    for text in outputs:
        assert VALUE not in text
    _listing_holds_no_secret(platform)
    leaking = _files_holding(platform.home, VALUE.encode())
    assert not leaking, f"the value is stored in clear in {leaking}"
    with sqlite3.connect(platform.home / "registry.db") as db:
        rows = db.execute("SELECT name, sealed FROM app_secrets").fetchall()
    sealed = dict(rows)["API_TOKEN"]
    assert sealed.startswith("gAAAA") and VALUE not in sealed  # a Fernet token, not the value


def test_a_missing_secret_is_a_setup_error_naming_it(platform: Platform) -> None:
    app, folder, entry = load_app(APP, "lacking")
    with platform.admin() as admin:
        admin.deploy(app, folder, entry)
    with platform.http() as http:
        r = http.post("/local/lacking", json={})
    assert r.status_code == 503 and r.json()["error_type"] == "SetupError", r.text
    assert "NEVER_SET" in r.json()["detail"] and "klieg secrets set" in r.json()["detail"]


def test_bad_secrets_are_refused_with_a_reason(platform: Platform) -> None:
    with platform.http() as http:
        for name, body in [("lower", {"value": "x"}), ("KLIEG_X", {"value": "x"})]:
            r = http.put(f"/secrets/{name}", json=body)
            assert (r.status_code, r.json()["error_type"]) == (400, "InvalidRequestError"), name
        for body in ({"value": ""}, {"nope": 1}, {"value": 5}):  # the body's field: 422
            r = http.put("/secrets/OK_NAME", json=body)
            assert (r.status_code, r.json()["error_type"]) == (422, "ValidationError"), body
            assert r.json()["detail"][0]["loc"] == ["body", "value"]
        assert http.delete("/secrets/NOT_THERE").status_code == 404
    empty = _klieg(platform, "secrets", "set", "EMPTY")
    assert empty.returncode == 1 and empty.stderr.count("\n") == 1 and "stdin" in empty.stderr
    r = httpx.put(f"{platform.url}/secrets/X_ANON", json={"value": "x"})
    assert r.status_code == 401
