"""Request semantics through the real platform: live logs, SSE streams, cancel, timeouts,
crashed runners, large payloads."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

import klieg
from tests.e2e.platform import TEST_APPS, Platform, wait_for_status

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def semantics(platform: Platform) -> Platform:
    platform.deploy(TEST_APPS / "semantics" / "app.py")
    return platform


def _sse(response: httpx.Response) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
            name = "message"
    return events


def test_generator_endpoint_streams_as_sse(semantics: Platform) -> None:
    with semantics.http() as http:
        with http.stream("POST", "/local/semantics/count/stream", json={"n": 3}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _sse(r)
        assert events == [("message", {"i": 0}), ("message", {"i": 1}), ("message", {"i": 2})]
        # the same endpoint through the sync and queue paths returns its last item
        assert http.post("/local/semantics/count", json={"n": 2}).json() == {"i": 1}


def test_stream_failing_midway_ends_with_an_error_event(semantics: Platform) -> None:
    with semantics.http() as http:
        with http.stream("POST", "/local/semantics/count/stream", json={"n": 101}) as r:
            events = _sse(r)
        assert [e for _, e in events[:100]] == [{"i": i} for i in range(99)] + [events[99][1]]
        name, err = events[-1]
        assert name == "error" and err["error_type"] == "AppError"
        assert "too far" in json.dumps(err["detail"])


def test_client_stream_and_subscribe(semantics: Platform) -> None:
    client = klieg.Client(semantics.url, semantics.key)
    assert list(client.stream("local/semantics/count", {"n": 2})) == [{"i": 0}, {"i": 1}]
    updates: list[dict[str, Any]] = []
    out = client.subscribe(
        "local/semantics/count", {"n": 3}, with_logs=True, on_update=updates.append
    )
    assert out == {"i": 2}
    assert updates[-1]["status"] == "COMPLETED"
    lines = [line["message"] for u in updates for line in (u["logs"] or [])]
    assert lines == ["counting 0", "counting 1", "counting 2"]


def test_logs_are_visible_while_the_request_runs(semantics: Platform) -> None:
    with semantics.http() as http:
        sub = http.post("/queue/local/semantics/sleep", json={"n": 2}).json()
        body = wait_for_status(http, sub["status_url"], "IN_PROGRESS")
        deadline = time.monotonic() + 10
        while not body["logs"]:
            assert time.monotonic() < deadline
            body = http.get(sub["status_url"], params={"logs": "true"}).json()
        assert body["status"] == "IN_PROGRESS"
        line = body["logs"][0]
        assert line["message"] == "sleeping" and line["level"] == "INFO" and line["timestamp"]
        wait_for_status(http, sub["status_url"], "COMPLETED")
    logs = klieg.Client(semantics.url, semantics.key).logs(sub["request_id"])
    assert [line["message"] for line in logs] == ["sleeping"]


def test_cancel_running_request_keeps_the_runner(semantics: Platform) -> None:
    with semantics.http() as http:
        warm = http.post("/local/semantics/sleep", json={"n": 0}).json()["pid"]
        sub = http.post("/queue/local/semantics/sleep", json={"n": 60}).json()
        wait_for_status(http, sub["status_url"], "IN_PROGRESS")
        started = time.monotonic()
        r = http.put(sub["cancel_url"])
        assert r.status_code == 202 and r.json()["status"] == "CANCELLATION_REQUESTED"
        done = wait_for_status(http, sub["status_url"], "COMPLETED", timeout=15)
        assert time.monotonic() - started < 10
        assert done["error_type"] == "RequestCancelledError"
        res = http.get(sub["response_url"])
        assert res.status_code == 499 and res.json()["error_type"] == "RequestCancelledError"
        again = http.put(sub["cancel_url"])
        assert again.status_code == 400 and again.json()["status"] == "ALREADY_COMPLETED"
        pids = {http.post("/local/semantics/sleep", json={"n": 0}).json()["pid"] for _ in range(3)}
        assert warm in pids


def test_request_timeout_header_ends_the_request(semantics: Platform) -> None:
    with semantics.http() as http:
        started = time.monotonic()
        r = http.post(
            "/local/semantics/sleep", json={"n": 10}, headers={"X-Fal-Request-Timeout": "1.5"}
        )
        assert r.status_code == 504 and r.json()["error_type"] == "RequestTimeoutError"
        assert time.monotonic() - started < 6
        bad = http.post(
            "/local/semantics/sleep", json={"n": 0}, headers={"X-Fal-Request-Timeout": "x"}
        )
        assert bad.status_code == 400
        for value in ("nan", "inf", "-1", "0", "1e300", "604801"):
            bad = http.post(
                "/local/semantics/sleep", json={"n": 0}, headers={"X-Fal-Request-Timeout": value}
            )
            assert bad.status_code == 400 and bad.json()["error_type"] == "InvalidRequestError"


def test_segfaulting_runner_fails_the_request_and_is_replaced(semantics: Platform) -> None:
    with semantics.http() as http:
        before = http.post("/local/semantics/pid", json={}).json()["pid"]
        r = http.post("/local/semantics/crash", json={})
        assert r.status_code == 500
        assert r.json()["error_type"] == "RunnerCrashedError"
        assert "signal 11" in r.json()["detail"]
        after = http.post("/local/semantics/pid", json={}).json()["pid"]
        assert after != before


def test_crash_is_retried_when_the_function_allows(semantics: Platform) -> None:
    with semantics.http() as http:
        r = http.post("/local/semantics/crash-once", json={})
        assert r.status_code == 200, r.text
        assert (semantics.home / "crashed-once").exists()


def test_large_payloads_go_through_the_blob_store(semantics: Platform) -> None:
    data = "x" * (300 * 1024)
    with semantics.http() as http:
        r = http.post("/local/semantics/blob", json={"data": data, "repeat": 2})
        assert r.status_code == 200
        assert r.json()["length"] == len(data) and len(r.json()["data"]) == 2 * len(data)
        sub = http.post("/queue/local/semantics/blob", json={"data": data}).json()
        wait_for_status(http, sub["status_url"], "COMPLETED")
        assert http.get(sub["response_url"]).json()["length"] == len(data)
    results = list((semantics.home / "blobs" / "results").iterdir())
    assert results, "large results are stored as blobs"
    assert not list((semantics.home / "blobs" / "payloads").iterdir()), "payload blobs are removed"


def test_async_client(semantics: Platform) -> None:
    async def scenario() -> None:
        async with klieg.AsyncClient(semantics.url, semantics.key) as client:
            assert await client.run("local/semantics/count", {"n": 2}) == {"i": 1}
            items = [item async for item in client.stream("local/semantics/count", {"n": 3})]
            assert items == [{"i": 0}, {"i": 1}, {"i": 2}]
            updates: list[dict[str, Any]] = []
            out = await client.subscribe(
                "local/semantics/count", {"n": 2}, with_logs=True, on_update=updates.append
            )
            assert out == {"i": 1} and updates[-1]["status"] == "COMPLETED"
            handle = await client.submit("local/semantics/sleep", {"n": 60})
            while (await client.status(handle.app_id, handle.request_id))["status"] != (
                "IN_PROGRESS"
            ):
                await asyncio.sleep(0.05)
            await client.cancel(handle.app_id, handle.request_id)
            while True:
                st = await client.status(handle.app_id, handle.request_id, with_logs=True)
                if st["status"] == "COMPLETED":
                    break
                await asyncio.sleep(0.05)
            assert st["error_type"] == "RequestCancelledError"
            with pytest.raises(klieg.KliegError) as info:
                await client.result(handle.app_id, handle.request_id)
            assert info.value.error_type == "RequestCancelledError"
            with pytest.raises(klieg.NotFoundError):
                await client.run("local/nope", {})

    asyncio.run(scenario())
