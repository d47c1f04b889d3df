"""Webhooks (``?fal_webhook=``) end to end: a real platform POSTs to a real receiver.

The platform runs with a 0.2 s backoff and 4 tries, so retries and giving up take seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from klieg_platform import keys
from klieg_platform.config import Settings
from tests.e2e.platform import (
    APPS,
    TEST_APPS,
    Platform,
    free_port,
    running_platform,
    wait_for_status,
)
from tests.e2e.webhook_receiver import receiving

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("klieg-webhooks")
    env = {"KLIEG_WEBHOOK_BACKOFF_S": "0.2", "KLIEG_WEBHOOK_MAX_ATTEMPTS": "4"}
    with running_platform(home, extra_env=env) as p:
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        p.deploy(TEST_APPS / "raises" / "app.py")
        yield p


def submit(http: httpx.Client, app: str, body: dict[str, Any], webhook: str) -> dict[str, Any]:
    r = http.post(f"/queue/local/{app}", params={"fal_webhook": webhook}, json=body)
    assert r.status_code == 200, r.text
    sub: dict[str, Any] = r.json()
    return sub


def wait_for_webhook(
    http: httpx.Client, status_url: str, want: str, timeout: float = 20
) -> tuple[dict[str, Any], list[int]]:
    """Poll the status route until its ``webhook.status`` is ``want``; that webhook document and
    every attempts count seen on the way."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while True:
        hook: dict[str, Any] = http.get(status_url).json()["webhook"]
        seen.append(hook["attempts"])
        if hook["status"] == want:
            return hook, seen
        assert time.monotonic() < deadline, f"webhook stayed {hook}, wanted {want!r}"
        time.sleep(0.05)


def due_score(p: Platform, request_id: str) -> float | None:
    """The id's score in the webhook zset (None: not there)."""
    client = redis.Redis.from_url(Settings(home=p.home).effective_redis_url)
    try:
        score: float | None = client.zscore(keys.WEBHOOKS, request_id)
        return score
    finally:
        client.close()


def test_failed_deliveries_are_retried_without_holding_back_the_result(hooks: Platform) -> None:
    with receiving(fail_first=2) as receiver, hooks.http() as http:
        sub = submit(http, "echo", {"text": "hook"}, receiver.url)
        rid = sub["request_id"]
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=30)
        res = http.get(sub["response_url"])
        accepted_when_fetched = receiver.accepted(rid)
        assert res.status_code == 200 and res.json() == {"text": "hook", "length": 4}
        assert accepted_when_fetched == []

        hook, _ = wait_for_webhook(http, sub["status_url"], "delivered")
        assert hook["url"] == receiver.url and hook["attempts"] == 3
        assert hook["last_error"].startswith("HTTP 500")
        time.sleep(0.6)
        assert [d.answered for d in receiver.of(rid)] == [500, 500, 200]
        delivery = receiver.accepted(rid)[0]
        assert delivery.body == {
            "request_id": rid,
            "gateway_request_id": rid,
            "status": "OK",
            "payload": {"text": "hook", "length": 4},
            "error": None,
            "payload_error": None,
        }
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers["x-klieg-request-id"] == rid
        assert due_score(hooks, rid) is None
        assert http.get(sub["response_url"]).json() == {"text": "hook", "length": 4}


def test_unreachable_receiver_fails_after_max_attempts(hooks: Platform) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"
    with hooks.http() as http:
        sub = submit(http, "echo", {"text": "nobody"}, down)
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=30)
        assert http.get(sub["response_url"]).json() == {"text": "nobody", "length": 6}
        hook, seen = wait_for_webhook(http, sub["status_url"], "failed")
        assert hook["attempts"] == 4 and "ConnectError" in hook["last_error"]
        assert seen == sorted(seen) and len(set(seen)) >= 2
        assert due_score(hooks, sub["request_id"]) is None
        assert http.get(sub["response_url"]).json() == {"text": "nobody", "length": 6}


def test_app_error_is_delivered_as_error(hooks: Platform) -> None:
    with receiving() as receiver, hooks.http() as http:
        sub = submit(http, "raises", {"text": "x"}, receiver.url)
        status = wait_for_status(http, sub["status_url"], "COMPLETED", timeout=30)
        wait_for_webhook(http, sub["status_url"], "delivered")
        [delivery] = receiver.of(sub["request_id"])
        body = delivery.body
        assert body["status"] == "ERROR"
        assert body["payload"] == {"detail": status["error"], "error_type": "AppError"}
        assert body["error"] == status["error"] and "cannot handle 'x'" in body["error"]
        assert body["error_type"] == status["error_type"] == "AppError"
        assert body["request_id"] == body["gateway_request_id"] == sub["request_id"]


def test_deliveries_of_different_requests_do_not_mix(hooks: Platform) -> None:
    with receiving() as receiver, hooks.http() as http:
        subs = {
            text: submit(http, "echo", {"text": text}, f"{receiver.url}?for={text}")
            for text in ("one", "three")
        }
        plain = http.post("/queue/local/echo", json={"text": "none"}).json()
        for sub in subs.values():
            wait_for_webhook(http, sub["status_url"], "delivered")
        for text, sub in subs.items():
            [delivery] = receiver.of(sub["request_id"])
            assert delivery.path == f"/hook?for={text}"
            assert delivery.body["payload"] == {"text": text, "length": len(text)}
            assert delivery.headers["x-klieg-request-id"] == sub["request_id"]
        assert "webhook" not in wait_for_status(http, plain["status_url"], "COMPLETED")
        assert len(receiver.deliveries) == 2


@pytest.fixture(scope="module")
def public_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("klieg-public-hooks")
    with running_platform(home, extra_env={"KLIEG_WEBHOOK_ALLOW_PRIVATE": "0"}) as p:
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        with p.admin() as admin:
            admin.put_workflow("once", {"nodes": {"a": {"app": "local/echo"}}, "output": "$a"})
        yield p


@pytest.mark.parametrize("route", ["/queue/local/echo", "/queue/workflows/local/once"])
@pytest.mark.parametrize("hook", ["http://127.0.0.1:9/hook", "http://169.254.169.254/x"])
def test_a_gateway_for_public_receivers_refuses_private_ones_at_submit(
    public_only: Platform, route: str, hook: str
) -> None:
    with public_only.http() as http:
        r = http.post(route, params={"fal_webhook": hook}, json={"text": "x"})
        assert r.status_code == 400, r.text
        assert r.json()["error_type"] == "InvalidRequestError"
        assert "is refused" in r.json()["detail"] and "public addresses only" in r.json()["detail"]
        queued = http.post(route, json={"text": "x"})  # no webhook: accepted as usual
        assert queued.status_code == 200, queued.text
