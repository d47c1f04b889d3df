"""``klieg call`` as a user types it: a generator endpoint's items as they arrive, the logs on
stderr while the request runs, the queue's request id; and a GPU function deployed where no
worker serves its pool (a warning at deploy, a line in each request's logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.e2e.platform import TEST_APPS, Platform
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(240)


def documents(text: str) -> list[Any]:
    """The JSON documents printed one after another (each may span lines)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return out
        value, at = decoder.raw_decode(text, at)
        out.append(value)


@pytest.fixture(scope="module")
def ticker(platform: Platform) -> subprocess.CompletedProcess[str]:
    deployed = klieg(platform, "deploy", str(TEST_APPS / "ticker" / "app.py"))
    assert deployed.returncode == 0, deployed.stderr
    return deployed


def test_each_item_of_a_generator_endpoint_is_printed_as_it_arrives(
    platform: Platform, ticker: subprocess.CompletedProcess[str]
) -> None:
    klieg(platform, "call", "local/ticker/ticks", "--json", '{"n": 1}')  # a warm runner
    env = dict(os.environ, KLIEG_URL=platform.url, KLIEG_KEY=platform.key)
    proc = subprocess.Popen(
        [sys.executable, "-m", "klieg.cli", "call", "local/ticker/ticks", "--json",
         '{"n": 3, "gap": 1.5}'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = ""
    while '"tick": 0' not in seen:
        line = proc.stdout.readline()
        assert line, f"stdout ended before the first item: {seen!r} {proc.stderr.read()!r}"
        seen += line
    first_at = time.monotonic()
    rest = proc.stdout.read()  # what the reads above buffered, then the rest until it exits
    ended_at = time.monotonic()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 0, err
    assert documents(seen + rest) == [{"tick": 0}, {"tick": 1}, {"tick": 2}]
    assert ended_at - first_at > 2.0  # the first item came two gaps before the last


def test_logs_stream_to_stderr_for_plain_and_generator_endpoints(
    platform: Platform, ticker: subprocess.CompletedProcess[str]
) -> None:
    out = klieg(platform, "call", "local/ticker/ticks", "--json", '{"n": 2}', "--logs")
    assert out.returncode == 0, out.stderr
    assert documents(out.stdout) == [{"tick": 0}, {"tick": 1}]
    assert "tick 0" in out.stderr and "tick 1" in out.stderr
    out = klieg(platform, "call", "local/ticker/once", "--json", '{"n": 2}', "--logs")
    assert out.returncode == 0, out.stderr
    assert documents(out.stdout) == [{"steps": 2}]
    assert "step 0" in out.stderr and "step 1" in out.stderr
    missing = klieg(platform, "call", "local/ticker/nowhere", "--logs")
    assert missing.returncode == 1 and "NotFoundError" in missing.stderr


def test_queue_prints_the_request_id_and_wait_prints_the_result(
    platform: Platform, ticker: subprocess.CompletedProcess[str]
) -> None:
    out = klieg(platform, "call", "local/ticker/once", "--json", '{"n": 1}', "--queue")
    assert out.returncode == 0, out.stderr
    request_id = out.stdout.strip()
    assert len(request_id) == 32 and "klieg request" in out.stderr
    with platform.admin() as admin:
        assert admin.wait(admin.submit("local/ticker/once", {"n": 0})) == {"steps": 0}
        assert admin.request(request_id)["app"] == "local/ticker"
    waited = klieg(
        platform, "call", "local/ticker/once", "--json", '{"n": 1}', "--queue", "--wait", "--logs"
    )
    assert waited.returncode == 0, waited.stderr
    assert documents(waited.stdout) == [{"steps": 1}] and "step 0" in waited.stderr
    alone = klieg(platform, "call", "local/ticker/once", "--wait")
    assert alone.returncode == 1 and "--wait goes with --queue" in alone.stderr
    low = klieg(platform, "call", "local/ticker/once", "--queue", "--priority", "low")
    assert low.returncode == 0, low.stderr
    with platform.admin() as admin:
        assert admin.request(low.stdout.strip())["priority"] == "low"
        assert admin.request(request_id)["priority"] == "normal"
    bad = klieg(platform, "call", "local/ticker/once", "--priority", "urgent")
    assert bad.returncode == 2 and "invalid choice: 'urgent'" in bad.stderr


def test_a_gpu_function_without_its_pool_is_warned_at_deploy_and_logged_per_request(
    platform: Platform, ticker: subprocess.CompletedProcess[str]
) -> None:
    warnings = [line for line in ticker.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, ticker.stderr
    assert "'gpu'" in warnings[0] and "GPU-H100" in warnings[0] and "'*'" in warnings[0]
    out = klieg(platform, "call", "local/ticker/gpu", "--logs")
    assert out.returncode == 0, out.stderr
    assert documents(out.stdout) == [{"ran": "yes"}]
    notice = [line for line in out.stderr.splitlines() if "has no GPU" in line]
    assert len(notice) == 1 and "WARNING" in notice[0] and "GPU-H100" in notice[0]
    with platform.admin() as admin:
        handle = admin.submit("local/ticker/gpu", {})
        admin.wait(handle)
        logs = admin.logs(handle.request_id)
    assert [line["source"] for line in logs if "has no GPU" in line["message"]] == ["klieg"]
