"""What a tenant sees of an app it does not own, through the real platform: the error's type and
message in statuses, results, the sync reply and streams, never the traceback, a frame line or a
host path of the owner's app; none of the app's log lines. The owner sees everything. With
``klieg apps caller-logs APP on`` callers see the logs (and errors) as the owner does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.platform import TEST_APPS, Platform, wait_for_status

pytestmark = pytest.mark.timeout(180)

VIEWER = "viewer-team"


@pytest.fixture(scope="module")
def leaky(platform: Platform) -> Iterator[str]:
    """The owner's public app ``local/leaky`` and public workflow ``local/leakyflow``; the
    viewer tenant's key."""
    platform.deploy(TEST_APPS / "leaky" / "app.py")
    with platform.admin() as admin:
        admin.share("leaky", "public")
        admin.put_workflow(
            "leakyflow",
            {
                "nodes": {
                    "fine": {"app": "local/leaky/ok", "input": {"text": "a"}},
                    "load": {"app": "local/leaky", "input": {"text": "$fine.text"}},
                },
                "output": "$load",
            },
        )
        admin.share_workflow("leakyflow", "public")
        viewer = admin.create_key(VIEWER, tier="free")["key"]
    try:
        yield viewer
    finally:
        with platform.admin() as admin:
            admin.set_caller_logs("leaky", False)
            admin.share("leaky", "private")
            admin.share_workflow("leakyflow", "private")


def _cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KLIEG_URL=platform.url, KLIEG_KEY=platform.key)
    return subprocess.run(
        [sys.executable, "-m", "klieg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_redacted(platform: Platform, text: str) -> None:
    assert "Traceback" not in text, text
    assert 'File "' not in text, text
    assert str(platform.home) not in text, text
    assert "/code/" not in text, text


def _failed(http: httpx.Client, path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Submit to ``path``; (its final status with logs, its result body, its status URL)."""
    sub = http.post(f"/queue/local/{path}", json={"text": "x"})
    assert sub.status_code == 200, sub.text
    status = wait_for_status(http, sub.json()["status_url"], "COMPLETED")
    result = http.get(sub.json()["response_url"])
    assert result.status_code == 500, result.text
    return status, result.json(), sub.json()["status_url"]


def test_a_caller_sees_the_error_type_and_message_only(platform: Platform, leaky: str) -> None:
    with platform.http(key=leaky) as http:
        status, result, status_url = _failed(http, "leaky")
        assert status["error_type"] == "AppError" and result["error_type"] == "AppError"
        assert status["error"] == result["detail"] == "RuntimeError: cannot open .../weights.bin"
        assert status["logs"] == []
        by_id = http.get(f"/requests/{status['request_id']}/status", params={"logs": "1"})
        assert by_id.json()["logs"] == [] and by_id.json()["error"] == status["error"]
        streamed = http.get(f"{status_url}/stream", params={"logs": "1"}).text
        sync = http.post("/local/leaky", json={"text": "x"})
        assert sync.status_code == 500
        assert sync.json() == {"detail": status["error"], "error_type": "AppError"}
        items = http.post("/local/leaky/items/stream", json={}).text
    assert '"index":0' in items and "event: error" in items and "weights.bin" in items
    for text in (json.dumps(status), json.dumps(result), streamed, sync.text, items):
        _assert_redacted(platform, text)
        assert "reading weights" not in text


def test_paths_after_a_colon_under_a_home_or_with_spaces_are_cut(
    platform: Platform, leaky: str
) -> None:
    with platform.http(key=leaky) as http:
        sync = http.post("/local/leaky/paths", json={})
    assert sync.status_code == 500, sync.text
    assert sync.json()["detail"] == "FileNotFoundError: ENOENT:.../a.bin, .../b.bin, .../c.bin"
    _assert_redacted(platform, sync.text)
    assert "Models" not in sync.text and "~" not in sync.text


def test_a_workflow_caller_sees_node_errors_without_paths(platform: Platform, leaky: str) -> None:
    with platform.http(key=leaky) as http:
        sync = http.post("/workflows/local/leakyflow", json={})
        assert sync.status_code == 500 and sync.json()["error_type"] == "AppError", sync.text
        assert "node 'load' failed: RuntimeError: cannot open .../weights.bin" in sync.text
        sub = http.post("/queue/workflows/local/leakyflow", json={}).json()
        status = wait_for_status(http, sub["status_url"], "COMPLETED")
        events = [line.get("event") for line in status["logs"]]
        assert events[:1] == ["started"] and "failed" in events  # the node events stay
        node = next(line for line in status["logs"] if line.get("event") == "failed")
        node_status = http.get(f"/requests/{sub['request_id']}.load/status", params={"logs": 1})
        assert node_status.status_code == 200 and node_status.json()["logs"] == []
        streamed = http.post("/workflows/local/leakyflow/stream", json={}).text
    assert "cannot open .../weights.bin" in json.dumps(node["error"])
    for text in (sync.text, json.dumps(status), node_status.text, streamed):
        _assert_redacted(platform, text)


def test_the_owner_sees_the_traceback_and_the_logs(platform: Platform, leaky: str) -> None:
    with platform.http() as http:
        status, result, _ = _failed(http, "leaky")
        sync = http.post("/local/leaky", json={"text": "x"})
    messages = "\n".join(line["message"] for line in status["logs"])
    assert "Traceback (most recent call last):" in messages
    assert 'File "' in messages and str(platform.home) in messages
    assert "reading weights from " + str(platform.home) in messages
    assert str(platform.home) in result["detail"] and str(platform.home) in sync.json()["detail"]


def test_with_caller_logs_on_callers_see_the_logs(platform: Platform, leaky: str) -> None:
    on = _cli(platform, "apps", "caller-logs", "leaky", "on")
    assert on.returncode == 0 and "callers see logs" in on.stdout, on.stderr
    try:
        with platform.http(key=leaky) as http:
            status, result, _ = _failed(http, "leaky")
            sub = http.post("/queue/local/leaky/ok", json={"text": "fine"}).json()
            ok = wait_for_status(http, sub["status_url"], "COMPLETED")
        messages = "\n".join(line["message"] for line in status["logs"])
        assert "Traceback (most recent call last):" in messages and "reading weights" in messages
        assert str(platform.home) in result["detail"]
        assert [line["message"] for line in ok["logs"]][-1].startswith("hello from ")
    finally:
        off = _cli(platform, "apps", "caller-logs", "leaky", "off")
        assert off.returncode == 0 and "error types and messages only" in off.stdout, off.stderr
    with platform.http(key=leaky) as http:
        status, _, _ = _failed(http, "leaky")
    assert status["logs"] == []
