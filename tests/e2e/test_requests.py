"""Calling deployed apps over HTTP: sync, queue, status transitions, auth, and bad input."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.platform import TEST_APPS, Platform

pytestmark = pytest.mark.timeout(180)


def _err(r: httpx.Response, status: int, error_type: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    body: dict[str, object] = r.json()
    assert body["error_type"] == error_type
    assert body["detail"]
    return body


def test_health(platform: Platform) -> None:
    r = httpx.get(f"{platform.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert len(r.json()["instance"]) == 16  # the token klieg up gave this gateway


def test_sync_call_returns_endpoint_output(platform: Platform, echo_deployed: object) -> None:
    with platform.http() as http:
        r = http.post("/local/echo", json={"text": "héllo"})
        assert r.status_code == 200, r.text
        assert r.json() == {"text": "héllo", "length": 5}
        r = http.post("/local/echo/upper/", json={"text": "abc"})
        assert r.json() == {"text": "ABC", "length": 3}


def test_queue_submit_status_result(platform: Platform, echo_deployed: object) -> None:
    with platform.http() as http:
        r = http.post("/queue/local/echo/upper", json={"text": "queued"})
        assert r.status_code == 200, r.text
        sub = r.json()
        assert {"request_id", "status_url", "response_url", "cancel_url"} <= set(sub)
        rid = sub["request_id"]
        assert sub["status_url"].endswith(f"/queue/local/echo/requests/{rid}/status")
        deadline = time.monotonic() + 60
        while True:
            st = http.get(sub["status_url"], params={"logs": "1"})
            body = st.json()
            assert "logs" in body
            if body["status"] == "COMPLETED":
                break
            assert st.status_code == 202 and body["status"] in ("IN_QUEUE", "IN_PROGRESS")
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert any("upper-casing 6 characters" in line["message"] for line in body["logs"])
        assert http.get(sub["status_url"]).json()["logs"] is None
        res = http.get(sub["response_url"])
        assert res.status_code == 200 and res.json() == {"text": "QUEUED", "length": 6}


def test_status_moves_through_queue_states(platform: Platform) -> None:
    platform.deploy(TEST_APPS / "slow" / "app.py")
    with platform.http() as http:
        subs = [http.post("/queue/local/slow", json={"seconds": 1.5}).json() for _ in range(6)]
        last = subs[-1]
        first = http.get(last["status_url"]).json()
        assert first["status"] == "IN_QUEUE"
        assert isinstance(first["queue_position"], int) and first["queue_position"] >= 0
        seen = [first["status"]]
        deadline = time.monotonic() + 60
        while seen[-1] != "COMPLETED":
            assert time.monotonic() < deadline
            status = http.get(last["status_url"]).json()["status"]
            if status != seen[-1]:
                seen.append(status)
            time.sleep(0.02)
        assert seen == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
        results = [http.get(s["response_url"]).json() for s in subs]
        assert all(r["slept"] == 1.5 for r in results)


def test_status_long_poll_answers_when_the_request_completes(platform: Platform) -> None:
    platform.deploy(TEST_APPS / "slow" / "app.py")
    with platform.http() as http:
        sub = http.post("/queue/local/slow", json={"seconds": 1.0}).json()
        started = time.monotonic()
        st = http.get(sub["status_url"], params={"wait_s": "20", "logs": "1"}, timeout=60)
        waited = time.monotonic() - started
        assert st.status_code == 200 and st.json()["status"] == "COMPLETED", st.text
        assert 0.8 < waited < 10, waited  # answered at completion, not at the 20 s limit
        assert http.get(sub["response_url"]).json()["slept"] == 1.0
        again = time.monotonic()  # already completed: at once
        assert http.get(sub["status_url"], params={"wait_s": "20"}).status_code == 200
        assert time.monotonic() - again < 2

        running = http.post("/queue/local/slow", json={"seconds": 3.0}).json()
        started = time.monotonic()
        st = http.get(running["status_url"], params={"wait_s": "0.5"})
        assert st.status_code == 202 and st.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
        assert 0.4 < time.monotonic() - started < 3
        for bad in ("-1", "61", "soon", "nan", "inf"):
            r = http.get(running["status_url"], params={"wait_s": bad})
            _err(r, 400, "InvalidRequestError")
        unknown = running["status_url"].replace(running["request_id"], "0" * 32)
        _err(http.get(unknown, params={"wait_s": "5"}), 404, "NotFoundError")


def test_missing_or_bad_key_is_401(platform: Platform, echo_deployed: object) -> None:
    with platform.http(key="") as anon:
        _err(anon.post("/local/echo", json={"text": "x"}), 401, "AuthenticationError")
        _err(anon.get("/apps"), 401, "AuthenticationError")
    with platform.http(key="k_0000000000000000:nope") as bad:
        _err(bad.post("/local/echo", json={"text": "x"}), 401, "AuthenticationError")
    with platform.http(key="garbage") as bad:
        _err(bad.post("/local/echo", json={"text": "x"}), 401, "AuthenticationError")


def test_unknown_app_alias_path_are_404(platform: Platform, echo_deployed: object) -> None:
    with platform.http() as http:
        _err(http.post("/local/nope", json={}), 404, "NotFoundError")
        _err(http.post("/local/echo@nope", json={"text": "x"}), 404, "NotFoundError")
        body = _err(http.post("/local/echo/nope", json={"text": "x"}), 404, "NotFoundError")
        assert "/nope" in str(body["detail"])
        _err(http.post("/queue/local/nope", json={}), 404, "NotFoundError")
        _err(http.get("/queue/local/echo/requests/0123/status"), 404, "NotFoundError")


def test_body_not_matching_model_is_422_naming_the_field(
    platform: Platform, echo_deployed: object
) -> None:
    with platform.http() as http:
        body = _err(http.post("/local/echo", json={"txt": "x"}), 422, "ValidationError")
        assert body["detail"][0]["loc"] == ["body", "text"]  # type: ignore[index]
        body = _err(http.post("/local/echo", json={"text": 5}), 422, "ValidationError")
        assert body["detail"][0]["loc"] == ["body", "text"]  # type: ignore[index]
        _err(
            http.post("/local/echo", content=b"{not json", headers={"content-type": "x"}),
            422,
            "ValidationError",
        )
        body = _err(http.post("/queue/local/echo", json={"nope": 1}), 422, "ValidationError")
        assert body["detail"][0]["loc"] == ["body", "text"]  # type: ignore[index]


def test_body_over_limit_is_413(platform: Platform, echo_deployed: object) -> None:
    with platform.http() as http:
        big = {"text": "x" * (1024 * 1024 + 10)}
        _err(http.post("/local/echo", json=big), 413, "PayloadTooLargeError")
        _err(http.post("/queue/local/echo", json=big), 413, "PayloadTooLargeError")


def test_other_tenants_app_is_404(platform: Platform, echo_deployed: object) -> None:
    other = platform.admin().create_key("other-team", tier="free")
    assert other["tenant"] == "other-team"
    with platform.http(key=other["key"]) as http:
        _err(http.post("/local/echo", json={"text": "x"}), 404, "NotFoundError")
        assert http.get("/apps").json() == []
    with platform.http(key=other["key"]) as http:
        r = http.post("/keys", json={"tenant": "third"})
        _err(r, 403, "PermissionDeniedError")


def test_function_made_by_a_factory_travels_by_value(platform: Platform) -> None:
    platform.deploy(TEST_APPS / "byvalue" / "app.py")
    with platform.http() as http:
        assert http.post("/local/byvalue", json={"n": 1}).json() == {"sum": 11}
        assert http.post("/local/byvalue/five", json={"n": 1}).json() == {"sum": 6}
        body = _err(http.post("/local/byvalue", json={"n": "x"}), 422, "ValidationError")
        assert body["detail"][0]["loc"] == ["body", "n"]  # type: ignore[index]
