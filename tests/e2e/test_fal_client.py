"""The unmodified ``fal_client`` against Klieg over TLS with a run and a queue listener.

Each scenario runs in its own interpreter (``tests/e2e/fal_scenarios.py``) because fal_client reads
its hosts when imported; the tests assert on the JSON it prints.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.platform import APPS, REPO, TEST_APPS, running_platform

pytestmark = pytest.mark.timeout(120)

BLOCKERS = 2
"""Worker slots of this platform: that many slow requests make the next one wait IN_QUEUE."""

Scenario = Callable[[str], dict[str, Any]]


@pytest.fixture(scope="module")
def fal_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("klieg-fal")
    slots = {"KLIEG_WORKER_SLOTS": str(BLOCKERS)}
    with (
        running_platform(home, with_tls=True, extra_env=slots) as p,
        pytest.MonkeyPatch.context() as mp,
    ):
        assert p.bundle is not None and p.queue_url is not None
        assert p.url.startswith("https://")
        mp.setenv("SSL_CERT_FILE", str(p.bundle))
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        p.deploy(TEST_APPS / "falcompat" / "app.py")
        p.deploy(TEST_APPS / "echo2" / "app.py")
        twice = {
            "input": {"type": "object", "properties": {"text": {"type": "string"}}},
            "nodes": {
                "a": {"app": "local/echo2", "input": {"text": "$input.text"}},
                "b": {"app": "local/echo2", "input": {"text": "$a.text"}},
            },
            "output": {"once": "$a.text", "twice": "$b.text"},
        }
        with p.admin() as admin:
            admin.put_workflow("twice", twice)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "KLIEG_"))}
        env.update(
            FAL_RUN_HOST=p.url.split("://", 1)[1],
            FAL_QUEUE_RUN_HOST=p.queue_url.split("://", 1)[1],
            FAL_KEY=p.key,
            SSL_CERT_FILE=str(p.bundle),
            FAL_SCENARIO_BLOCKERS=str(BLOCKERS),
        )
        yield env


@pytest.fixture(scope="module")
def scenario(fal_env: dict[str, str]) -> Scenario:
    """Run a scenario once per module; return its JSON output."""
    done: dict[str, dict[str, Any]] = {}

    def run(name: str) -> dict[str, Any]:
        if name not in done:
            proc = subprocess.run(
                [sys.executable, "-m", "tests.e2e.fal_scenarios", name],
                cwd=REPO,
                env=fal_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            lines = proc.stdout.strip().splitlines()
            assert proc.returncode == 0 and lines, proc.stderr[-3000:]
            done[name] = json.loads(lines[-1])
        out = done[name]
        assert "error" not in out and "timed_out" not in out, out
        return out

    return run


def _messages(status: dict[str, Any]) -> list[str]:
    return [line["message"] for line in status.get("logs") or []]


def _cancelled(outcome: dict[str, Any]) -> None:
    err = outcome.get("error")
    assert err is not None, outcome
    assert err["error_type"] == "RequestCancelledError", err


def test_health_on_both_listeners(fal_env: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=fal_env["SSL_CERT_FILE"])
    answers = []
    for host in (fal_env["FAL_RUN_HOST"], fal_env["FAL_QUEUE_RUN_HOST"]):
        r = httpx.get(f"https://{host}/health", verify=ctx)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        answers.append(r.json()["instance"])
    assert answers[0] and answers[0] == answers[1]  # one gateway serves both listeners


def test_run(scenario: Scenario) -> None:
    out = scenario("run")
    assert out["root"] == {"text": "hi", "length": 2}
    assert out["path"] == {"text": "HI", "length": 2}
    assert out["trailing_slash"] == {"text": "slash", "length": 5}


def test_submit_status_result(scenario: Scenario, fal_env: dict[str, str]) -> None:
    out = scenario("submit")
    rid = out["request_id"]
    root = f"https://{fal_env['FAL_QUEUE_RUN_HOST']}/queue/local/falcompat/requests/{rid}"
    assert out["urls"] == [f"{root}/status", root, f"{root}/cancel"]
    kinds = [s["type"] for s in out["seen"]]
    assert kinds[-1] == "Completed" and "InProgress" in kinds, kinds
    assert kinds == sorted(kinds, key=["Queued", "InProgress", "Completed"].index), kinds
    final = out["seen"][-1]
    assert "falcompat saw 'submitted'" in _messages(final)
    assert final["error"] is None and final["metrics"]["inference_time"] >= 1.0
    assert out["status_by_id"]["type"] == "Completed"
    assert "falcompat saw 'submitted'" in _messages(out["status_by_id"])
    assert out["status_without_logs"]["logs"] is None
    assert out["result"] == out["result_by_id"] == {"text": "submitted", "index": 0}


def test_live_logs_while_in_progress(scenario: Scenario) -> None:
    out = scenario("submit")
    live = [s for s in out["seen"] if s["type"] == "InProgress"]
    assert any("falcompat saw 'submitted'" in _messages(s) for s in live), out["seen"]


def test_subscribe_reports_queue_updates(scenario: Scenario) -> None:
    out = scenario("subscribe")
    assert out["result"] == {"text": "subscribed", "index": 0}
    assert len(out["enqueued"]) == 1
    events = out["events"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "Queued" and isinstance(events[0]["position"], int), events
    assert "InProgress" in kinds and kinds[-1] == "Completed", kinds
    assert "falcompat saw 'subscribed'" in _messages(events[-1])
    assert out["blockers"] == ["slept 3.0"] * BLOCKERS


def test_cancel_queued_request(scenario: Scenario) -> None:
    out = scenario("cancel_queued")
    assert out["before"]["type"] == "Queued", out["before"]
    assert out["cancel"] == {"value": None}, out["cancel"]
    assert out["after"]["type"] == "Completed"
    assert out["after"]["error_type"] == "RequestCancelledError", out["after"]
    _cancelled(out["get"])
    assert out["blockers"] == ["slept 3.0"] * BLOCKERS


def test_cancel_running_request(scenario: Scenario) -> None:
    out = scenario("cancel_running")
    assert out["before"]["type"] == "InProgress", out["before"]
    assert out["cancel"] == {"value": None}, out["cancel"]
    assert out["after"]["type"] == "Completed"
    assert out["after"]["error_type"] == "RequestCancelledError", out["after"]
    _cancelled(out["get"])


def test_stream(scenario: Scenario) -> None:
    out = scenario("stream")
    expected = [{"text": f"item {i}", "index": i} for i in range(3)]
    assert out["default_path"] == {"value": expected}, out["default_path"]


def test_errors_carry_detail_and_error_type(scenario: Scenario) -> None:
    out = scenario("errors")
    bad = out["bad_body"]["error"]
    assert (bad["status_code"], bad["error_type"]) == (422, "ValidationError"), bad
    assert "text" in json.dumps(bad["message"])
    for case in ("unknown_app", "unknown_app_submit"):
        err = out[case]["error"]
        assert (err["status_code"], err["error_type"]) == (404, "NotFoundError"), err
        assert err["message"]
    app_error = out["app_error"]["error"]
    assert (app_error["status_code"], app_error["error_type"]) == (500, "AppError"), app_error
    assert "falcompat refuses 'x'" in json.dumps(app_error["message"])
    bad_key = out["bad_key"]["error"]
    assert (bad_key["status_code"], bad_key["error_type"]) == (401, "AuthenticationError")


def test_workflows_through_fal_client(scenario: Scenario, fal_env: dict[str, str]) -> None:
    out = scenario("workflow")
    assert out["run"] == {"once": "cba", "twice": "abc"}
    root = f"https://{fal_env['FAL_QUEUE_RUN_HOST']}/queue/workflows/local/twice/requests/"
    assert all(url.startswith(root) for url in out["urls"]), out["urls"]
    final = out["seen"][-1]
    assert final["type"] == "Completed"
    assert [line.get("event") for line in final["logs"] or []][-1] == "output"
    assert out["result"] == {"once": "deueuq", "twice": "queued"}
    assert out["bad_input"]["error"]["error_type"] == "ValidationError"


def test_upload_file_stores_into_klieg(scenario: Scenario, fal_env: dict[str, str]) -> None:
    out = scenario("upload")
    gateway = f"https://{fal_env['FAL_RUN_HOST']}/files/uploads/"
    assert out["file_url"].startswith(gateway) and out["file_url"].split("?")[0].endswith(
        "/dot.png"
    )
    assert out["file_back"] == [200, True, "image/png"]
    assert out["bytes_url"].startswith(gateway) and out["bytes_back"] == [200, "plain words"]


def test_low_priority_submits_wait_behind_the_callers_normal_ones(scenario: Scenario) -> None:
    out = scenario("priority")
    # while the blockers run: each low one has both normal ones ahead of it
    assert out["positions"] == {"low1": 2, "low2": 3, "normal1": 0, "normal2": 1}, out
    # the blockers' two slots take the normal ones together, then the low ones: within each
    # pair the two start at once, in either order
    order = out["start_order"]
    assert set(order[:2]) == {"normal1", "normal2"} and set(order[2:]) == {"low1", "low2"}, out
    assert out["blockers"] == ["slept 3.0"] * BLOCKERS


def test_hinted_requests_go_to_the_runner_reporting_their_hint(scenario: Scenario) -> None:
    out = scenario("hint")
    pids = out["pids"]
    assert len(set(pids.values())) == 2, pids
    assert [pid for _, pid in out["hinted_runs"]] == [pids[lora] for lora, _ in out["hinted_runs"]]
    assert out["hinted_submit"] == pids["b"]
    bad = out["bad_hint"]["error"]
    assert (bad["status_code"], bad["error_type"]) == (400, "InvalidRequestError"), bad
    assert "X-Fal-Runner-Hint" in bad["message"]
