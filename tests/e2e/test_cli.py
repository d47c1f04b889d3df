"""The ``klieg`` command against the live platform, as a user would type it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.platform import APPS, TEST_APPS, Platform, wait_for_status

pytestmark = pytest.mark.timeout(180)


def klieg(
    platform: Platform, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KLIEG_URL=platform.url, KLIEG_KEY=platform.key if key is None else key)
    return subprocess.run(
        [sys.executable, "-m", "klieg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_create_prints_key_on_last_line(platform: Platform) -> None:
    out = klieg(platform, "keys", "create", "--label", "ci")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    key_id, _, secret = key.partition(":")
    assert key_id.startswith("k_") and len(secret) > 20
    assert klieg(platform, "apps", "list", key=key).returncode == 0


def test_keys_create_without_key_on_bootstrapped_platform_is_refused(platform: Platform) -> None:
    out = klieg(platform, "keys", "create", key="")
    assert out.returncode == 1 and "AuthenticationError" in out.stderr


def test_deploy_call_list_alias_rollback_apply(platform: Platform, tmp_path: Path) -> None:
    dep = klieg(platform, "deploy", str(TEST_APPS / "echo2" / "app.py"), "--alias", "cli")
    assert dep.returncode == 0, dep.stderr
    assert "resolv" in dep.stderr  # build progress is shown
    rev = dep.stdout.split("revision ")[1].split()[0]

    call = klieg(platform, "call", "local/echo2@cli", "--json", '{"text": "abc"}')
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout) == {"text": "cba"}
    queued = klieg(
        platform, "call", "local/echo2@cli", "--json", '{"text": "xy"}', "--queue", "--wait"
    )
    assert json.loads(queued.stdout) == {"text": "yx"}

    listed = json.loads(klieg(platform, "apps", "list", "--json").stdout)
    assert {"owner": "local", "name": "echo2"}.items() <= next(
        a for a in listed if a["name"] == "echo2"
    ).items()
    revs = klieg(platform, "revisions", "echo2")
    assert rev in revs.stdout

    assert klieg(platform, "alias", "set", "echo2", "pinned", rev).returncode == 0
    plan = tmp_path / "klieg.yaml"
    plan.write_text(f"apps:\n  echo2:\n    aliases:\n      blue: {rev}\n      green: pinned\n")
    applied = klieg(platform, "apply", str(plan))
    assert applied.returncode == 0, applied.stderr
    aliases = next(a for a in platform.admin().apps() if a["name"] == "echo2")["aliases"]
    assert aliases["blue"] == aliases["green"] == aliases["pinned"] == rev

    bad = klieg(platform, "call", "local/echo2@cli", "--json", '{"nope": 1}')
    assert bad.returncode == 1 and "ValidationError" in bad.stderr


def test_rollback_with_nothing_to_roll_back_is_an_error(platform: Platform) -> None:
    dep = klieg(platform, "deploy", str(APPS / "echo" / "app.py"), "--alias", "solo")
    assert dep.returncode == 0, dep.stderr
    out = klieg(platform, "rollback", "echo", "--alias", "solo")
    assert out.returncode == 1 and "NotFoundError" in out.stderr


def test_logs_prints_a_requests_log_lines(platform: Platform, echo_deployed: object) -> None:
    with platform.http() as http:
        sub = http.post("/queue/local/echo/upper", json={"text": "abcd"}).json()
        wait_for_status(http, sub["status_url"], "COMPLETED")
    out = klieg(platform, "logs", sub["request_id"])
    assert out.returncode == 0, out.stderr
    assert "INFO" in out.stdout and "upper-casing 4 characters" in out.stdout
    other = klieg(platform, "logs", "0" * 32)
    assert other.returncode == 1 and "NotFoundError" in other.stderr
