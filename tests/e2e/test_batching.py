"""Dynamic batching through the real platform: requests of a batched endpoint are gathered into
one runner call, results go back to their own requests in order, and errors stay with the
request that caused them (an invalid input, an item returned as an error, a call that raises).
Cancelling one request of a running batch leaves the others to complete."""

from __future__ import annotations

import time
from typing import Any

import pytest

import klieg
from tests.e2e.platform import TEST_APPS, Platform

pytestmark = pytest.mark.timeout(180)

APP = "local/batcher"


@pytest.fixture(scope="module")
def client(platform: Platform) -> Any:
    platform.deploy(TEST_APPS / "batcher" / "app.py")
    with klieg.Client(platform.url, platform.key) as c:
        c.run(f"{APP}/single", {"value": 0})  # a warm runner: batches form without a cold start
        yield c


def _outcome(c: klieg.Client, handle: klieg.RequestHandle) -> dict[str, Any]:
    try:
        return {"ok": c.wait(handle, timeout=60)}
    except klieg.KliegError as exc:
        return {"error_type": exc.error_type, "detail": str(exc.detail), "status": exc.status_code}


def _submit_all(c: klieg.Client, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    handles = [c.submit(APP, body) for body in bodies]
    return [_outcome(c, h) for h in handles]


def test_requests_are_gathered_into_batches_and_results_split_in_order(
    client: Any, platform: Platform
) -> None:
    batches_before = _batch_sizes(platform)
    outcomes = _submit_all(client, [{"value": v} for v in range(8)])
    results = [o["ok"] for o in outcomes]
    assert [r["doubled"] for r in results] == [2 * v for v in range(8)]
    sizes = [r["batch_size"] for r in results]
    assert max(sizes) > 1 and all(1 <= s <= 4 for s in sizes)
    assert len({r["pid"] for r in results}) == 1  # one runner served every batch
    # klieg_batch_size counts each batch run: its _sum moves by the 8 requests, its _count by
    # the batches (recorded off the request path: wait for it)
    deadline, after = time.monotonic() + 10, _batch_sizes(platform)
    while after[0] - batches_before[0] < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _batch_sizes(platform)
    assert after[0] - batches_before[0] == 8
    assert after[1] - batches_before[1] == round(sum(1 / r["batch_size"] for r in results))


def _batch_sizes(platform: Platform) -> tuple[float, float]:
    """(sum, count) of the batcher app's ``klieg_batch_size`` in ``GET /metrics``."""
    from tests.e2e.test_metrics import scrape, total

    seen = scrape(platform)
    labels = {"owner": "local", "app": "batcher"}
    return total(seen, "klieg_batch_size_sum", **labels), total(
        seen, "klieg_batch_size_count", **labels
    )


def test_an_item_returned_as_an_error_fails_only_its_request(client: Any) -> None:
    outcomes = _submit_all(client, [{"value": 1}, {"value": 2, "fail": True}, {"value": 3}])
    assert outcomes[1]["error_type"] == "AppError" and outcomes[1]["status"] == 500
    assert "value 2 refused" in outcomes[1]["detail"]
    assert [o["ok"]["doubled"] for o in (outcomes[0], outcomes[2])] == [2, 6]
    assert outcomes[0]["ok"]["batch_size"] == 3  # the failing item was in the same call


def test_an_invalid_input_fails_alone_with_422(client: Any) -> None:
    with pytest.raises(klieg.ValidationError):  # plainly invalid: refused at submit
        client.submit(APP, {"value": "nine"})
    # "1e3" passes the gateway's lax check (a number) but the model refuses it: the runner does
    outcomes = _submit_all(client, [{"value": 1}, {"value": "1e3"}, {"value": 3}])
    assert outcomes[1]["error_type"] == "ValidationError" and outcomes[1]["status"] == 422
    assert "value" in outcomes[1]["detail"]
    assert [o["ok"]["doubled"] for o in (outcomes[0], outcomes[2])] == [2, 6]
    assert outcomes[0]["ok"]["batch_size"] == 2


def test_a_raising_call_is_retried_per_request(client: Any) -> None:
    outcomes = _submit_all(client, [{"value": 1}, {"value": 2, "boom": True}, {"value": 3}])
    assert outcomes[1]["error_type"] == "AppError" and "boom" in outcomes[1]["detail"]
    assert [o["ok"]["doubled"] for o in (outcomes[0], outcomes[2])] == [2, 6]
    assert [o["ok"]["batch_size"] for o in (outcomes[0], outcomes[2])] == [1, 1]


def test_each_request_gets_the_batch_logs(client: Any) -> None:
    handles = [client.submit(APP, {"value": v}) for v in (5, 6)]
    for handle in handles:
        client.wait(handle, timeout=60)
        status = client.status(handle.app_id, handle.request_id, with_logs=True)
        messages = " ".join(line["message"] for line in status["logs"] or [])
        assert "batch of" in messages and str(5) in messages


def test_cancelling_one_request_of_a_running_batch(client: Any) -> None:
    handles = [client.submit(APP, {"value": v, "sleep": 4.0}) for v in (1, 2, 3)]
    deadline = time.monotonic() + 30
    while client.status(APP, handles[1].request_id)["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # the batch is running in the runner now
    started = time.monotonic()
    client.cancel(APP, handles[1].request_id)
    cancelled = _outcome(client, handles[1])
    assert cancelled["error_type"] == "RequestCancelledError"
    assert time.monotonic() - started < 2.5  # completed at once, not when the batch ended
    others = [_outcome(client, h) for h in (handles[0], handles[2])]
    assert [o["ok"]["doubled"] for o in others] == [2, 6]
    assert others[0]["ok"]["batch_size"] == 3


def test_a_runner_crash_fails_the_whole_batch_and_the_next_batch_runs(client: Any) -> None:
    outcomes = _submit_all(client, [{"value": 1}, {"value": 2, "crash": True}])
    assert [o.get("error_type") for o in outcomes] == ["RunnerCrashedError"] * 2
    assert client.run(APP, {"value": 4})["doubled"] == 8


def test_the_next_batch_is_leased_while_a_full_batch_runs(client: Any) -> None:
    """A full batch running makes the batcher lease the next one as it queues (prefill): those
    requests are taken (IN_PROGRESS) before the running batch ends, run together right after
    it, and one of them cancelled while it waits completes at once, the others unharmed."""
    running = [client.submit(APP, {"value": v, "sleep": 4.0}) for v in range(4)]
    deadline = time.monotonic() + 30
    while any(client.status(APP, h.request_id)["status"] != "IN_PROGRESS" for h in running):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ahead = [client.submit(APP, {"value": v}) for v in (10, 11, 12, 13)]
    while any(client.status(APP, h.request_id)["status"] != "IN_PROGRESS" for h in ahead):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert all(client.status(APP, h.request_id)["status"] == "IN_PROGRESS" for h in running)
    started = time.monotonic()
    client.cancel(APP, ahead[0].request_id)
    assert _outcome(client, ahead[0])["error_type"] == "RequestCancelledError"
    assert time.monotonic() - started < 1.5  # not when the running batch ended
    first = [_outcome(client, h)["ok"] for h in running]
    assert [r["batch_size"] for r in first] == [4] * 4
    rest = [_outcome(client, h)["ok"] for h in ahead[1:]]
    assert [r["doubled"] for r in rest] == [22, 24, 26]
    assert [r["batch_size"] for r in rest] == [3] * 3
