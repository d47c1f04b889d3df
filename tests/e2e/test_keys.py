"""API keys: scopes (call < deploy < admin), expiry, listing, and revocation that every gateway
honours within a second (a second gateway process on the same Redis and registry)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.platform import Platform, another_gateway
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(180)


def _key(platform: Platform, scope: str, expires_in_s: float | None = None) -> str:
    with platform.admin() as admin:
        made = admin.create_key(label="scoped", scope=scope, expires_in_s=expires_in_s)
    return str(made["key"])


def _status(platform: Platform, key: str, method: str, path: str, body: object = None) -> int:
    with platform.http(key) as http:
        return http.request(method, path, json=body).status_code


def test_scopes_bound_what_a_key_may_do(platform: Platform, echo_deployed: object) -> None:
    call, deploy = _key(platform, scope="call"), _key(platform, scope="deploy")
    hi = {"text": "hi"}
    assert _status(platform, call, "POST", "/local/echo", hi) == 200
    assert _status(platform, call, "POST", "/queue/local/echo", hi) == 200
    with platform.http(call) as http:
        refused = http.get("/apps")
    assert refused.status_code == 403
    assert refused.json()["error_type"] == "PermissionDeniedError"
    assert "'call'" in refused.json()["detail"] and "'deploy'" in refused.json()["detail"]
    assert _status(platform, call, "POST", "/keys", {}) == 403
    assert _status(platform, deploy, "GET", "/apps") == 200
    assert _status(platform, deploy, "POST", "/local/echo", hi) == 200
    assert _status(platform, deploy, "POST", "/keys", {}) == 403
    assert _status(platform, deploy, "GET", "/keys") == 403
    assert _status(platform, deploy, "PUT", "/tenants/local", {}) == 403
    with platform.http() as http:
        bad = http.post("/keys", json={"scope": "root"})
        assert (bad.status_code, bad.json()["error_type"]) == (422, "ValidationError")
        assert bad.json()["detail"][0]["loc"] == ["body", "scope"]
        listed = http.get("/keys").json()["keys"]
    scopes = {k["key_id"]: k["scope"] for k in listed}
    assert scopes[call.split(":")[0]] == "call" and scopes[deploy.split(":")[0]] == "deploy"
    assert not any(call.split(":")[1] in str(k) for k in listed), "a listing shows a secret"


def test_an_expired_key_is_refused(platform: Platform, echo_deployed: object) -> None:
    key = _key(platform, scope="call", expires_in_s=1.0)
    assert _status(platform, key, "POST", "/local/echo", {"text": "x"}) == 200
    time.sleep(1.3)
    with platform.http(key) as http:
        late = http.post("/local/echo", json={"text": "x"})
    assert (late.status_code, late.json()["error_type"]) == (401, "AuthenticationError")
    with platform.http() as http:
        mine = {k["key_id"]: k for k in http.get("/keys").json()["keys"]}
    assert mine[key.split(":")[0]]["active"] is False


@pytest.fixture()
def second_gateway(platform: Platform) -> Iterator[str]:
    """Another gateway process over the platform's Redis and registry."""
    with another_gateway(platform) as other:
        yield other.url


def test_a_revoked_key_fails_within_a_second_on_every_gateway(
    platform: Platform, echo_deployed: object, second_gateway: str
) -> None:
    key = _key(platform, scope="call")
    headers = {"Authorization": f"Key {key}"}
    body = {"text": "cached"}
    for url in (platform.url, second_gateway):  # both gateways now hold the key in their cache
        assert httpx.post(f"{url}/local/echo", json=body, headers=headers).status_code == 200
    out = klieg(platform, "keys", "revoke", key.split(":")[0])
    assert out.returncode == 0 and "revoked" in out.stdout, out.stderr
    revoked_at = time.monotonic()
    while True:
        status = httpx.post(f"{second_gateway}/local/echo", json=body, headers=headers).status_code
        if status == 401:
            break
        assert time.monotonic() - revoked_at < 1.0, "the other gateway still takes the key"
        time.sleep(0.02)
    assert httpx.post(f"{platform.url}/local/echo", json=body, headers=headers).status_code == 401
    listing = klieg(platform, "keys", "list")
    assert listing.returncode == 0
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith(key.split(":")[0]))
    assert "call" in line and "revoked" in line


def test_a_rate_limited_key_gets_429_with_retry_after_across_gateways(
    platform: Platform, echo_deployed: object, second_gateway: str
) -> None:
    with platform.admin() as admin:
        made = admin.create_key(label="limited", scope="call", rate_per_s=0.5, burst=4)
    assert (made["rate_per_s"], made["burst"]) == (0.5, 4)
    headers = {"Authorization": f"Key {made['key']}"}
    body = {"text": "r"}
    statuses = []
    for n in range(6):  # the two gateways draw from one bucket
        url = platform.url if n % 2 else second_gateway
        response = httpx.post(f"{url}/local/echo", json=body, headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error_type"] == "RateLimitedError"
            assert int(response.headers["retry-after"]) >= 1
    assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429], statuses
    time.sleep(2.1)  # a token back
    assert httpx.post(f"{platform.url}/local/echo", json=body, headers=headers).status_code == 200
    with platform.http() as http:  # an unlimited key is never limited
        assert all(http.post("/local/echo", json=body).status_code == 200 for _ in range(8))
        bad = http.post("/keys", json={"rate_per_s": -1})
    assert (bad.status_code, bad.json()["error_type"]) == (422, "ValidationError")
    assert bad.json()["detail"][0]["loc"] == ["body", "rate_per_s"]
