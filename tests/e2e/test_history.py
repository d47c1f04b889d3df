"""Request history on a running platform: ``GET /requests`` and ``klieg requests`` list the
caller's own requests newest first, filtered by app, status and time, paged by cursor, with
their timings (cold start included); ``GET /requests/{id}`` and ``klieg request ID`` show one
with its input, output and logs; another tenant's requests never appear, and a call token is
refused."""

from __future__ import annotations

import time
from typing import Any

import pytest

from klieg import Client
from tests.e2e.platform import APPS, Platform
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> str:
    """A tenant of its own with echo deployed and 5 requests: 3 sync, 2 through the queue."""
    with platform.admin() as admin:
        key = str(admin.create_key(tenant="historian")["key"])
    platform.deploy(APPS / "echo" / "app.py", key=key)
    with Client(platform.url, key) as c:
        for i in range(3):
            c.run("historian/echo", {"text": f"sync {i}"})
        for i in range(2):
            c.wait(c.submit("historian/echo", {"text": f"queued {i}"}), timeout=60)
    return key


def page(platform: Platform, key: str, **params: Any) -> dict[str, Any]:
    with platform.http(key) as http:
        answer = http.get("/requests", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_history_lists_own_requests_newest_first(platform: Platform, tenant: str) -> None:
    found = page(platform, tenant)["requests"]
    assert len(found) == 5
    created = [r["created_at"] for r in found]
    assert created == sorted(created, reverse=True)
    for r in found:
        assert r["app"] == "historian/echo" and r["status"] == "COMPLETED" and r["outcome"] == "ok"
        assert r["revision"] and r["endpoint"] is not None and r["error_type"] is None
        assert r["queue_s"] >= 0 and r["run_s"] >= 0 and r["attempts"] >= 1
        assert abs(r["created_at"] - time.time()) < 300
    # the first request waited for the runner started for it; warm ones after it did not
    assert 0 < found[-1]["cold_start_s"] <= found[-1]["run_s"]
    assert 0 <= found[-1]["setup_s"] <= found[-1]["cold_start_s"]  # echo has no setup()
    assert len([r for r in found if r["cold_start_s"] is None]) >= 3
    assert page(platform, tenant, app="echo")["requests"] == found
    assert page(platform, tenant, app="historian/echo", status="ok")["requests"] == found
    assert page(platform, tenant, status="error")["requests"] == []
    assert page(platform, tenant, app="other")["requests"] == []
    assert page(platform, tenant, since=str(time.time() + 60))["requests"] == []


def test_pages_follow_the_cursor_without_gaps_or_repeats(platform: Platform, tenant: str) -> None:
    ids, cursor, pages = [], None, 0
    while True:
        params = {"limit": "2", **({"after": cursor} if cursor else {})}
        body = page(platform, tenant, **params)
        ids += [r["request_id"] for r in body["requests"]]
        pages, cursor = pages + 1, body["next"]
        if not cursor:
            break
    assert pages == 3 and len(ids) == len(set(ids)) == 5
    assert ids == [r["request_id"] for r in page(platform, tenant)["requests"]]


def test_no_one_else_sees_them(platform: Platform, tenant: str) -> None:
    mine = {r["request_id"] for r in page(platform, tenant)["requests"]}
    admins = {r["request_id"] for r in page(platform, platform.key, limit="1000")["requests"]}
    assert mine and not mine & admins


def test_bad_queries_are_typed_and_a_call_token_is_refused(platform: Platform, tenant: str) -> None:
    from klieg_platform import calltokens
    from klieg_platform.config import Settings
    from klieg_platform.registry import Registry

    with platform.http(tenant) as http:
        for params in ({"limit": "0"}, {"limit": "x"}, {"status": "DONE"}, {"since": "soon"}):
            bad = http.get("/requests", params=params)
            assert (bad.status_code, bad.json()["error_type"]) == (400, "InvalidRequestError")
    settings = Settings.from_env({"KLIEG_HOME": str(platform.home)})
    registry = Registry(settings.effective_database_url)
    try:
        found = registry.get_tenant("historian")
    finally:
        registry.close()
    assert found is not None
    token = calltokens.issue(settings.signing_key, found.id, 60)
    with platform.http("") as http:
        refused = http.get("/requests", headers={"Authorization": f"Bearer {token}"})
        assert (
            http.get(
                "/requests/nope/status", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 404
        )
    assert (refused.status_code, refused.json()["error_type"]) == (403, "PermissionDeniedError")


def test_one_request_shows_its_input_output_and_logs(platform: Platform, tenant: str) -> None:
    newest = page(platform, tenant, limit="1")["requests"][0]
    with Client(platform.url, tenant) as c:
        found = c.request(newest["request_id"], with_output=True)
    assert {k: found[k] for k in newest} == newest
    assert found["input"] == {"text": "queued 1"} and found["input_stored"] is False
    assert found["output"] == {"text": "queued 1", "length": 8}
    assert found["error"] is None and isinstance(found["logs"], list)
    assert found["response_url"].endswith(f"/queue/historian/echo/requests/{found['request_id']}")
    with platform.http(platform.key) as other:
        hidden = other.get(f"/requests/{found['request_id']}")
    assert (hidden.status_code, hidden.json()["error_type"]) == (404, "NotFoundError")
    shown = klieg(platform, "request", found["request_id"], key=tenant)
    assert shown.returncode == 0, shown.stderr
    assert f"{found['request_id']}  historian/echo  revision " in shown.stdout
    assert 'input: {"text": "queued 1"}' in shown.stdout
    assert 'output: {"text": "queued 1", "length": 8}' in shown.stdout
    gone = klieg(platform, "request", "nope", key=tenant)
    assert gone.returncode != 0 and gone.stderr.count("\n") == 1 and "not found" in gone.stderr


def test_klieg_requests_prints_them(platform: Platform, tenant: str) -> None:
    shown = klieg(platform, "requests", "echo", "--limit", "2", key=tenant)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and all("  historian/echo  ok" in line for line in lines)  # root: "/"
    assert "--after " in shown.stderr
    cursor = shown.stderr.split("--after ")[1].split()[0]
    rest = klieg(platform, "requests", "--after", cursor, "--since", "1h", key=tenant)
    assert rest.returncode == 0 and len(rest.stdout.splitlines()) == 3
    none = klieg(platform, "requests", "--status", "cancelled", key=tenant)
    assert none.returncode == 0 and none.stdout == "" and "no requests" in none.stderr
