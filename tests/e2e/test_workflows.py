"""Workflows through the real platform: stored with the admin API, called like apps (sync, SSE
and the queue), run as ordinary requests over the same queue by the workflow executor. Checks:
outputs flow between nodes, independent nodes run in parallel, every node's events appear in the
workflow's logs, a failing node fails the workflow naming it, cancel cancels the running nodes,
and bad input is rejected before anything runs."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

import klieg
from klieg.workflow import Workflow
from tests.e2e.platform import APPS, TEST_APPS, Platform
from tests.e2e.webhook_receiver import receiving

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def flows(platform: Platform) -> Platform:
    for app in ("echo2", "slow", "raises"):
        platform.deploy(TEST_APPS / app / "app.py")
    with platform.admin() as admin:
        wf = Workflow("chain", input={"text": "string"})
        first = wf.node("first", "local/echo2", {"text": wf.input.text})
        again = wf.node("again", "local/echo2", {"text": first.text})
        wf.output({"reversed": first.text, "restored": again.text})
        admin.put_workflow("chain", wf.to_dict())
        admin.put_workflow(
            "parallel",
            {
                "input": {"type": "object", "properties": {"seconds": {"type": "number"}}},
                "nodes": {
                    "left": {"app": "local/slow", "input": {"seconds": "$input.seconds"}},
                    "right": {"app": "local/slow", "input": {"seconds": "$input.seconds"}},
                    "join": {"app": "local/echo2", "input": {"text": "joined"}},
                },
                "output": {"left": "$left.pid", "right": "$right.pid", "join": "$join.text"},
            },
        )
        admin.put_workflow(
            "failing",
            "nodes:\n"
            "  ok: {app: local/echo2, input: {text: fine}}\n"
            "  bad: {app: local/raises, input: {text: $ok.text}}\n"
            "  after: {app: local/echo2, input: {text: $bad.text}}\n"
            "output: $after\n",
        )
        admin.put_workflow(
            "long",
            {
                "nodes": {"nap": {"app": "local/slow", "input": {"seconds": 30}}},
                "output": "$nap",
            },
        )
    return platform


def _run(p: Platform, name: str, body: dict[str, Any]) -> httpx.Response:
    with p.http() as http:
        return http.post(f"/workflows/local/{name}", json=body)


def test_outputs_flow_from_node_to_node(flows: Platform) -> None:
    r = _run(flows, "chain", {"text": "klieg"})
    assert r.status_code == 200, r.text
    assert r.json() == {"reversed": "geilk", "restored": "klieg"}


def test_independent_nodes_run_in_parallel(flows: Platform) -> None:
    _run(flows, "parallel", {"seconds": 0.1})  # warm runners
    started = time.monotonic()
    r = _run(flows, "parallel", {"seconds": 2.5})
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["join"] == "denioj" and out["left"] != out["right"]  # two runners at once
    assert elapsed < 4.5, f"two 2.5 s nodes took {elapsed:.1f}s: not in parallel"


def test_queue_status_carries_per_node_events(flows: Platform) -> None:
    with klieg.Client(flows.url, flows.key) as client:
        handle = client.submit("workflows/local/chain", {"text": "abc"})
        assert "/queue/workflows/local/chain/requests/" in handle.status_url
        assert client.wait(handle, timeout=60) == {"reversed": "cba", "restored": "abc"}
        status = client.status(handle.app_id, handle.request_id, with_logs=True)
    events = [(line.get("node"), line.get("event")) for line in status["logs"]]
    assert events == [
        ("first", "started"),
        ("first", "completed"),
        ("again", "started"),
        ("again", "completed"),
        (None, "output"),
    ]
    completed = [line for line in status["logs"] if line.get("event") == "completed"]
    assert completed[0]["output"] == {"text": "cba"}
    node_id = completed[0]["request_id"]
    with flows.http() as http:  # each node is an ordinary request of the caller
        node = http.get(f"/requests/{node_id}/status").json()
    assert node["status"] == "COMPLETED"


def test_queued_workflows_deliver_their_webhook(flows: Platform) -> None:
    with receiving() as receiver, flows.http() as http:
        subs = {
            name: http.post(
                f"/queue/workflows/local/{name}",
                params={"fal_webhook": receiver.url},
                json=body,
            ).json()
            for name, body in (("chain", {"text": "hook"}), ("failing", {}))
        }
        deadline = time.monotonic() + 60
        while any(not receiver.accepted(s["request_id"]) for s in subs.values()):
            assert time.monotonic() < deadline, receiver.deliveries
            time.sleep(0.05)
    [ok] = receiver.accepted(subs["chain"]["request_id"])
    assert ok.body["status"] == "OK"
    assert ok.body["payload"] == {"reversed": "kooh", "restored": "hook"}
    [failed] = receiver.accepted(subs["failing"]["request_id"])
    assert failed.body["status"] == "ERROR" and "node 'bad' failed" in failed.body["error"]


def test_streamed_workflow_sends_node_events_then_the_output(flows: Platform) -> None:
    with (
        flows.http() as http,
        http.stream("POST", "/workflows/local/chain/stream", json={"text": "xy"}) as r,
    ):
        assert r.status_code == 200
        data = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert [(d["node"], d["event"]) for d in data][-1] == (None, "output")
    assert data[-1]["output"] == {"reversed": "yx", "restored": "xy"}
    assert ("again", "completed") in [(d["node"], d["event"]) for d in data]


def test_a_failing_node_fails_the_workflow_naming_it(flows: Platform) -> None:
    r = _run(flows, "failing", {})
    assert r.status_code == 500
    body = r.json()
    assert body["error_type"] == "AppError"
    assert "node 'bad' failed" in body["detail"]


def test_cancel_cancels_the_running_nodes(flows: Platform) -> None:
    with klieg.Client(flows.url, flows.key) as client:
        handle = client.submit("workflows/local/long", {})
        deadline = time.monotonic() + 60
        node_id = None
        while node_id is None:
            assert time.monotonic() < deadline
            status = client.status(handle.app_id, handle.request_id, with_logs=True)
            started = [line for line in status["logs"] or [] if line.get("event") == "started"]
            node_id = started[0]["request_id"] if started else None
            time.sleep(0.05)
        with flows.http() as http:
            while http.get(f"/requests/{node_id}/status").json()["status"] != "IN_PROGRESS":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.cancel(handle.app_id, handle.request_id)
            with pytest.raises(klieg.KliegError) as info:
                client.wait(handle, timeout=20)
            assert info.value.error_type == "RequestCancelledError"
            while (node := http.get(f"/requests/{node_id}/status").json())["status"] != (
                "COMPLETED"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert node["error_type"] == "RequestCancelledError"


def test_bad_input_and_unknown_workflows_are_rejected_up_front(flows: Platform) -> None:
    r = _run(flows, "chain", {"text": 5})
    assert r.status_code == 422 and r.json()["error_type"] == "ValidationError"
    assert "text" in json.dumps(r.json()["detail"])
    r = _run(flows, "chain", {})
    assert r.status_code == 422
    r = _run(flows, "nope", {})
    assert r.status_code == 404 and r.json()["error_type"] == "NotFoundError"


def test_the_demo_workflow_makes_a_strip_and_a_video_of_the_digits(platform: Platform) -> None:
    import io

    import av
    from PIL import Image as PILImage

    for app in ("digits", "imagetools", "video"):
        platform.deploy(APPS / app / "app.py")
    with platform.admin() as admin:
        admin.put_workflow("digits-movie", APPS / "workflows" / "digits-movie.yaml")
    r = _run(platform, "digits-movie", {"digits": "2026"})
    assert r.status_code == 200, r.text
    out = r.json()
    strip = PILImage.open(io.BytesIO(httpx.get(out["image"]["url"]).content))
    assert strip.size == (4 * 64 + 3 * 8, 64)  # four 64-px digits, 8 px apart
    video = httpx.get(out["video"]["url"]).content
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert len(frames) == 4 + 4  # one frame per digit shown, then 4 held
    assert (frames[0].width, frames[0].height) == (strip.width, strip.height)
    first, last = frames[0].to_image().convert("L"), frames[-1].to_image().convert("L")
    right = (3 * 72, 0, strip.width, 64)  # the last digit's cell: dark, then drawn
    assert first.crop(right).getextrema()[1] < 40 < last.crop(right).getextrema()[1]
