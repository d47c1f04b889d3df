"""Each route declares its access, and ``Authenticate`` enforces it on a real gateway."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from klieg_platform import calltokens
from klieg_platform.gateway.app import ROUTES
from klieg_platform.gateway.auth import Access, Authenticate
from klieg_platform.services import open_store
from klieg_platform.storage import MEDIA
from klieg_platform.storage.signing import signed_url
from tests.klieg_platform.gateway.conftest import Gateway

pytestmark = pytest.mark.timeout(60)

MISSING = {
    "detail": "missing credentials: send 'Authorization: Key <key_id>:<secret>'",
    "error_type": "AuthenticationError",
}
MALFORMED = {
    "detail": "malformed Authorization header; use 'Key <id>:<secret>'",
    "error_type": "AuthenticationError",
}
INVALID_KEY = {
    "detail": "invalid, revoked or expired API key",
    "error_type": "AuthenticationError",
}
INVALID_TOKEN = {"detail": "invalid or expired call token", "error_type": "AuthenticationError"}
NOT_FOR_TOKENS = {
    "detail": "a call token may call apps but not manage them",
    "error_type": "PermissionDeniedError",
}
NOT_CALLER = {
    ("GET", "/health"): Access.PUBLIC,
    ("GET", "/openapi.json"): Access.PUBLIC,
    ("GET", "/console"): Access.PUBLIC,
    ("GET", "/console/assets/{name}"): Access.PUBLIC,
    ("GET", "/fleet/stream"): Access.MANAGE,
    ("GET", "/files/{key:path}"): Access.PUBLIC,
    ("POST", "/keys"): Access.BOOTSTRAP,
    ("GET", "/apps"): Access.MANAGE,
    ("GET", "/apps/{name}/revisions"): Access.MANAGE,
    ("POST", "/apps/{name}/deploy"): Access.MANAGE,
    ("PUT", "/apps/{name}/aliases/{alias}"): Access.MANAGE,
    ("POST", "/apps/{name}/rollback"): Access.MANAGE,
    ("PUT", "/apps/{name}/visibility"): Access.MANAGE,
    ("PUT", "/apps/{name}/limits"): Access.MANAGE,
    ("PUT", "/tenants/{name}"): Access.ADMIN,
    ("GET", "/keys"): Access.ADMIN,
    ("DELETE", "/keys/{key_id}"): Access.ADMIN,
    ("GET", "/secrets"): Access.MANAGE,
    ("PUT", "/secrets/{name}"): Access.MANAGE,
    ("DELETE", "/secrets/{name}"): Access.MANAGE,
    ("GET", "/metrics"): Access.MANAGE,
    ("GET", "/workers"): Access.ADMIN,
    ("GET", "/pools"): Access.ADMIN,
    ("GET", "/runners"): Access.MANAGE,
    ("DELETE", "/apps/{name}"): Access.MANAGE,
    ("POST", "/apps/{name}/dev"): Access.MANAGE,
    ("PUT", "/apps/{name}/dev/{session}"): Access.MANAGE,
    ("DELETE", "/apps/{name}/dev/{session}"): Access.MANAGE,
    ("POST", "/apps/{name}/prune"): Access.MANAGE,
    ("GET", "/apps/{name}/scale"): Access.MANAGE,
    ("PUT", "/apps/{name}/scale"): Access.MANAGE,
    ("GET", "/workflows"): Access.MANAGE,
    ("GET", "/workflows/{name}"): Access.MANAGE,
    ("PUT", "/workflows/{name}"): Access.MANAGE,
    ("PUT", "/workflows/{name}/aliases/{alias}"): Access.MANAGE,
    ("POST", "/workflows/{name}/rollback"): Access.MANAGE,
    ("PUT", "/workflows/{name}/visibility"): Access.MANAGE,
}
"""Every route that is not ``CALLER``: widening or narrowing access is a deliberate change."""


def routes() -> Iterator[tuple[str, str, Access]]:
    """(method, path, access) of each route in ``ROUTES``; fails on a route without a mark."""
    for entry in ROUTES:
        assert isinstance(entry, Route), entry
        assert isinstance(entry.app, Authenticate), f"{entry.path} declares no access"
        methods = sorted((entry.methods or set()) - {"HEAD"})
        assert len(methods) == 1, entry.path
        yield methods[0], entry.path, entry.app.access


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def send(gateway: Gateway, method: str, path: str, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return httpx.request(method, f"{gateway.url}{path}", json={}, headers=headers, timeout=30)


def body(response: httpx.Response) -> Any:
    return response.json()


def test_every_route_declares_its_access() -> None:
    declared = {(method, path): access for method, path, access in routes()}
    assert len(declared) == len(ROUTES), "two routes share a method and path"
    assert {k: v for k, v in declared.items() if v is not Access.CALLER} == NOT_CALLER
    assert declared[("POST", "/{owner}/{app}")] is Access.CALLER


def test_a_call_token_on_a_management_route_is_403(gateway: Gateway) -> None:
    local = gateway.registry.get_tenant("local")
    assert local is not None
    good = calltokens.issue(gateway.settings.signing_key, local.id, 60)
    forged = calltokens.issue("not-the-signing-key", local.id, 60)
    managing = [
        (m, p) for m, p, a in routes() if a in (Access.MANAGE, Access.ADMIN, Access.BOOTSTRAP)
    ]
    assert len(managing) == len([a for a in NOT_CALLER.values() if a is not Access.PUBLIC])
    for method, path in managing:
        for token in (good, forged):
            r = send(gateway, method, concrete(path), f"Bearer {token}")
            assert (r.status_code, body(r)) == (403, NOT_FOR_TOKENS), (method, path)


def test_a_call_token_may_use_a_caller_route(gateway: Gateway) -> None:
    local = gateway.registry.get_tenant("local")
    assert local is not None
    good = calltokens.issue(gateway.settings.signing_key, local.id, 60)
    r = send(gateway, "GET", "/requests/nope/status", f"Bearer {good}")
    assert (r.status_code, body(r)["detail"]) == (404, "request nope not found")
    for bad in (calltokens.issue("not-the-signing-key", local.id, 60), good[:-1] + "x"):
        r = send(gateway, "GET", "/requests/nope/status", f"Bearer {bad}")
        assert (r.status_code, body(r)) == (401, INVALID_TOKEN)


def test_no_key_on_a_caller_or_management_route_is_401(gateway: Gateway) -> None:
    for method, path, access in routes():
        if access in (Access.CALLER, Access.MANAGE, Access.ADMIN):
            r = send(gateway, method, concrete(path), None)
            assert (r.status_code, body(r)) == (401, MISSING), (method, path)
            assert r.headers["content-type"] == "application/json"
    r = send(gateway, "POST", "/local/echo", None)
    assert r.content == (
        b'{"detail":"missing credentials: send \'Authorization: Key <key_id>:<secret>\'",'
        b'"error_type":"AuthenticationError"}'
    )


def test_an_unknown_revoked_or_malformed_key_is_401(gateway: Gateway) -> None:
    created = gateway.admin.create_key(label="to revoke")
    assert gateway.registry.revoke_key(created["key_id"])
    key_id, secret = gateway.admin.http.headers["authorization"].split()[1].split(":")
    cases = [
        (f"Key {key_id}:wrong-secret", INVALID_KEY),
        ("Key no-such-key:secret", INVALID_KEY),
        (f"Key {created['key']}", INVALID_KEY),
        (f"Bearer {created['key']}", INVALID_KEY),
        ("Basic dXNlcjpwYXNz", MALFORMED),
        (f"Key {key_id}", MALFORMED),
        (f"Key :{secret}", MALFORMED),
        ("Key", MALFORMED),
    ]
    for path in ("/apps", "/local/echo", "/keys"):
        method = "GET" if path == "/apps" else "POST"
        for authorization, expected in cases:
            r = send(gateway, method, path, authorization)
            assert (r.status_code, body(r)) == (401, expected), (path, authorization)
    r = send(gateway, "GET", "/apps", f"Bearer {key_id}:{secret}")
    assert r.status_code == 200


def test_public_routes_do_not_read_credentials(gateway: Gateway) -> None:
    key = f"{MEDIA}request/file.png"
    open_store(gateway.settings).put(key, b"not really a png")
    url = signed_url(gateway.url, gateway.settings.signing_key, key, 60)
    for authorization in ("Key no-such-key:secret", "Basic x", "Bearer kc1.forged.0.0"):
        r = send(gateway, "GET", "/health", authorization)
        assert (r.status_code, body(r)["status"]) == (200, "ok")
        r = send(gateway, "GET", url.removeprefix(gateway.url), authorization)
        assert (r.status_code, r.content) == (200, b"not really a png")


def test_routing_comes_before_authentication(gateway: Gateway) -> None:
    r = send(gateway, "GET", "/nowhere", None)
    assert r.status_code == 404
    r = send(gateway, "DELETE", "/apps", "Bearer kc1.forged.0.0")
    assert (r.status_code, body(r)["error_type"]) == (405, "MethodNotAllowedError")


def test_bootstrap_without_a_key_is_refused_once_a_tenant_exists(gateway: Gateway) -> None:
    r = send(gateway, "POST", "/keys", None)
    assert (r.status_code, body(r)) == (
        401,
        {
            "detail": "creating a key needs an existing key (KLIEG_KEY)",
            "error_type": "AuthenticationError",
        },
    )
