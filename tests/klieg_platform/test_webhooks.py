"""Webhook delivery against real Redis servers and a real HTTP receiver: claims, retries, body."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from klieg_platform import keys
from klieg_platform.broker import Broker, NewRequest, Outcome
from klieg_platform.config import Settings
from klieg_platform.storage.local import LocalBlobStore
from klieg_platform.webhooks import (
    FullView,
    WebhookSender,
    backoff_s,
    refused_target,
    webhook_body,
)
from tests.e2e.platform import free_port
from tests.e2e.webhook_receiver import receiving

pytestmark = pytest.mark.timeout(30)

Body = Callable[[Broker], Awaitable[None]]


def run(url: str, body: Body) -> None:
    async def main() -> None:
        broker = Broker.from_url(url, result_ttl_s=120, max_attempts=3)
        try:
            await body(broker)
        finally:
            await broker.close()

    asyncio.run(main())


def sender(
    broker: Broker,
    tmp_path: Path,
    *,
    max_attempts: int = 3,
    allow_private: bool = True,
    full_view: FullView | None = None,
) -> WebhookSender:
    settings = Settings(
        home=tmp_path,
        webhook_max_attempts=max_attempts,
        webhook_backoff_s=0.05,
        webhook_allow_private=allow_private,
    )
    store = LocalBlobStore(tmp_path / "blobs")
    return WebhookSender(broker, store, settings, poll_s=0.02, full_view=full_view)


async def completed(broker: Broker, webhook: str, outcome: Outcome) -> str:
    """A request with ``webhook`` that has completed with ``outcome``."""
    rid = uuid.uuid4().hex
    await broker.queue.enqueue(
        NewRequest(
            id=rid, owner="alice", tenant="t", app="echo", revision="r", function="echo",
            endpoint="/", pool="CPU-" + rid, payload=b"{}", timeout_s=30, webhook=webhook,
        )
    )  # fmt: skip
    job = await broker.queue.dispatch(["CPU-" + rid], "w1", lease_s=30)
    assert job is not None and job.id == rid
    assert await broker.queue.complete(rid, "w1", outcome)
    return rid


async def record(broker: Broker, rid: str) -> dict[str, str]:
    state = await broker.queue.get(rid)
    assert state is not None
    return {
        "webhook_status": state.webhook_status,
        "webhook_attempts": str(state.webhook_attempts or ""),
        "webhook_last_error": state.webhook_last_error,
    }


async def until(broker: Broker, rid: str, status: str, timeout_s: float = 10) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        rec = await record(broker, rid)
        if rec["webhook_status"] == status:
            return rec
        assert time.monotonic() < deadline, f"webhook_status stayed {rec}"
        await asyncio.sleep(0.02)


# ---- the schedule and the body ----------------------------------------------------------------
def test_backoff_doubles_from_base_and_is_capped() -> None:
    exact = [backoff_s(n, 2.0, rand=lambda: 0.0) for n in range(1, 11)]
    assert exact == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_s(10_000, 2.0, rand=lambda: 0.0) == 300
    assert backoff_s(3, 0.2, cap_s=10, rand=lambda: 0.0) == pytest.approx(0.8)


def test_backoff_jitter_only_shortens_by_at_most_the_fraction() -> None:
    assert backoff_s(2, 1.0, jitter=0.1, rand=lambda: 1.0) == pytest.approx(1.8)
    samples = [backoff_s(4, 1.0) for _ in range(200)]
    assert all(7.2 <= s <= 8.0 for s in samples)
    assert len(set(samples)) > 1


def test_body_ok_error_and_unreadable_payload() -> None:
    ok = webhook_body("r1", Outcome(ok=True), b'{"a": [1, 2]}')
    assert ok == {
        "request_id": "r1", "gateway_request_id": "r1", "status": "OK",
        "payload": {"a": [1, 2]}, "error": None, "payload_error": None,
    }  # fmt: skip
    err = webhook_body(
        "r2", Outcome(ok=False, error={"detail": "boom", "error_type": "AppError"}), b""
    )
    assert err["status"] == "ERROR"
    assert err["payload"] == {"detail": "boom", "error_type": "AppError"}
    assert (err["error"], err["error_type"]) == ("boom", "AppError")
    listed = webhook_body("r3", Outcome(ok=False, error={"detail": [{"msg": "x"}]}), b"")
    assert json.loads(listed["error"]) == [{"msg": "x"}] and listed["error_type"] == "KliegError"
    bad = webhook_body("r4", Outcome(ok=True), b"not json")
    assert bad["payload"] is None and "not JSON" in bad["payload_error"]


# ---- delivery against Redis -----------------------------------------------------------------
def test_retries_until_accepted_then_delivered(redis_url: str, tmp_path: Path) -> None:
    async def body(b: Broker) -> None:
        with receiving(fail_first=2) as receiver:
            rid = await completed(b, receiver.url, Outcome(ok=True, result=b'{"n": 7}'))
            s = sender(b, tmp_path)
            await s.start()
            try:
                rec = await until(b, rid, "delivered")
            finally:
                await s.stop()
            assert rec["webhook_attempts"] == "3"
            assert rec["webhook_last_error"].startswith("HTTP 500")
            assert [d.answered for d in receiver.of(rid)] == [500, 500, 200]
            hit = receiver.accepted(rid)[0]
            assert hit.body["payload"] == {"n": 7} and hit.body["status"] == "OK"
            assert hit.headers["content-type"] == "application/json"
            assert hit.headers["x-klieg-request-id"] == rid
            assert await b.redis.zscore(keys.WEBHOOKS, rid) is None
            outcome = await b.queue.outcome(rid)
            assert outcome is not None and outcome.result == b'{"n": 7}'

    run(redis_url, body)


def test_a_caller_that_is_not_the_owner_gets_the_error_it_may_see(
    redis_url: str, tmp_path: Path
) -> None:
    detail = 'Traceback (most recent call last):\n  File "/srv/code/app.py", line 1\n'
    detail += "OSError: cannot open /srv/code/w.bin"
    asked: list[tuple[str, str, str]] = []
    sees = [False]

    async def full_view(tenant: str, owner: str, app: str) -> bool:
        asked.append((tenant, owner, app))
        return sees[0]

    async def body(b: Broker) -> None:
        with receiving() as receiver:
            delivered = {}
            for owner_sees in (False, True):
                sees[0] = owner_sees
                error = {"detail": detail, "error_type": "AppError"}
                rid = await completed(b, receiver.url, Outcome(ok=False, error=error))
                s = sender(b, tmp_path, full_view=full_view)
                await s.start()
                try:
                    await until(b, rid, "delivered")
                finally:
                    await s.stop()
                delivered[owner_sees] = receiver.accepted(rid)[0].body
            assert delivered[False]["error"] == "OSError: cannot open .../w.bin"
            assert delivered[False]["payload"]["detail"] == "OSError: cannot open .../w.bin"
            assert delivered[True]["error"] == detail
            assert asked == [("t", "alice", "echo")] * 2

    run(redis_url, body)


def test_payload_is_read_from_the_blob_store(redis_url: str, tmp_path: Path) -> None:
    async def body(b: Broker) -> None:
        LocalBlobStore(tmp_path / "blobs").put("results/big.json", b'{"big": true}')
        with receiving() as receiver:
            rid = await completed(b, receiver.url, Outcome(ok=True, result_ref="results/big.json"))
            s = sender(b, tmp_path)
            await s.start()
            try:
                await until(b, rid, "delivered")
            finally:
                await s.stop()
            assert receiver.accepted(rid)[0].body["payload"] == {"big": True}

    run(redis_url, body)


def test_gives_up_after_max_attempts(redis_url: str, tmp_path: Path) -> None:
    async def body(b: Broker) -> None:
        down = f"http://127.0.0.1:{free_port()}/hook"
        rid = await completed(b, down, Outcome(ok=True, result=b"{}"))
        s = sender(b, tmp_path, max_attempts=3)
        await s.start()
        try:
            rec = await until(b, rid, "failed")
        finally:
            await s.stop()
        assert rec["webhook_attempts"] == "3"
        assert "ConnectError" in rec["webhook_last_error"]
        assert await b.redis.zscore(keys.WEBHOOKS, rid) is None

    run(redis_url, body)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.7:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://no-such-host.invalid/hook",
    ],
)
def test_non_public_targets_are_refused(url: str) -> None:
    assert asyncio.run(refused_target(url)) is not None


def test_public_addresses_are_accepted() -> None:
    for url in ("https://93.184.216.34/hook", "http://[2606:4700:4700::1111]:8443/x"):
        assert asyncio.run(refused_target(url)) is None


def test_a_private_target_is_refused_at_delivery_where_only_public_ones_are_allowed(
    redis_url: str, tmp_path: Path
) -> None:
    async def body(b: Broker) -> None:
        with receiving() as receiver:
            rid = await completed(b, receiver.url, Outcome(ok=True, result=b"{}"))
            s = sender(b, tmp_path, max_attempts=2, allow_private=False)
            await s.start()
            try:
                rec = await until(b, rid, "failed")
            finally:
                await s.stop()
            assert receiver.deliveries == []
        assert rec["webhook_attempts"] == "2"
        assert rec["webhook_last_error"].startswith("refused: its host '127.0.0.1' is at")

    run(redis_url, body)


def test_claims_are_exclusive_and_expired_records_are_dropped(
    redis_url: str, tmp_path: Path
) -> None:
    async def body(b: Broker) -> None:
        ids = {await completed(b, "http://127.0.0.1:9/x", Outcome(ok=True)) for _ in range(30)}
        gone = uuid.uuid4().hex
        await b.redis.zadd(keys.WEBHOOKS, {gone: 0})
        one, two = sender(b, tmp_path), sender(b, tmp_path)
        try:
            batches = await asyncio.gather(*(s.claim(10) for s in (one, two, one, two)))
            claimed = [i for batch in batches for i in batch]
            assert len(claimed) == len(set(claimed)) == 30 and set(claimed) == ids
            assert await one.claim(10) == []
            assert await b.redis.zscore(keys.WEBHOOKS, gone) is None
            assert await b.redis.exists(keys.request(gone)) == 0
            assert {(await record(b, i))["webhook_status"] for i in ids} == {"pending"}
        finally:
            await one.stop()
            await two.stop()

    run(redis_url, body)
