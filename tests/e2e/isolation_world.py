"""The world of tests/e2e/test_isolation.py: three tenants on the session platform, what the
owner tenant owns (apps, revisions, aliases, workflows, keys, an upload, requests and their
files), the other tenants' requests on the owner's apps, and the caller identities of the
matrix; plus the expectation helpers the cases share."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from klieg import archive
from klieg.admin import AdminClient, load_app
from klieg.exceptions import KliegError
from klieg_platform import calltokens
from klieg_platform.config import Settings
from klieg_platform.gateway.auth import Access
from klieg_platform.registry import AppRecord, Registry
from tests.e2e.platform import TEST_APPS, Platform

OWNER, STRANGER, SHAREE, ADMIN = "iso-owner", "iso-stranger", "iso-sharee", "local"
ANYONE = "*"
APP_FILE = TEST_APPS / "isolation" / "app.py"
PRIVATE, SHARED, PUBLIC = "iso-private", "iso-shared", "iso-public"
FLOW, FLOW_SHARED, FLOW_PUBLIC = "iso-flow", "iso-flow-shared", "iso-flow-pub"
ERROR_TYPES = {
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    422: "ValidationError",
}


@dataclass(frozen=True)
class Identity:
    """Who calls: ``tenant`` is the tenant its credentials act for when they hold (``live``)."""

    name: str
    header: str | None
    tenant: str | None
    kind: str  # "key", "token" or "none"
    scope: str = "admin"
    live: bool = True


@dataclass(frozen=True)
class Req:
    """A completed request: ``root`` is its response_url path; ``tenant`` submitted it."""

    label: str
    id: str
    tenant: str
    root: str
    marker: str
    workflow: bool


@dataclass(frozen=True)
class Target:
    """An app or workflow reference of the owner and the tenants that may call it."""

    label: str
    ref: str
    name: str
    callers: frozenset[str]
    denied_detail: str

    def may(self, tenant: str | None) -> bool:
        return tenant is not None and (ANYONE in self.callers or tenant in self.callers)


@dataclass
class World:
    p: Platform
    http: httpx.Client
    registry: Registry
    signing_key: str
    tenant_ids: dict[str, str]
    keys: dict[str, str]
    key_ids: dict[str, set[str]]
    identities: list[Identity]
    revisions: dict[str, str]
    flows: dict[str, str]
    requests: dict[str, Req]
    node_request: Req
    upload_url: str
    upload_body: bytes
    media: dict[str, tuple[str, bytes]]
    deploy_body: dict[str, Any]
    code_hash: str
    stranger_deploy: dict[str, Any]
    owner: AdminClient
    app_targets: list[Target] = field(default_factory=list)
    flow_targets: list[Target] = field(default_factory=list)

    def send(self, who: Identity, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        if who.header is not None:
            headers["Authorization"] = who.header
        return self.http.request(method, path, headers=headers, **kw)

    def app(self, tenant: str, name: str) -> AppRecord | None:
        return self.registry.get_app(tenant, name)

    def has_app(self, tenant: str | None, name: str) -> bool:
        return tenant is not None and self.app(tenant, name) is not None

    def owner_app(self, name: str) -> AppRecord:
        found = self.app(OWNER, name)
        assert found is not None, name
        return found


def gate(access: Access, who: Identity) -> int | None:
    """The status the authentication step answers ``who`` with on a route of ``access``; None
    when it lets the request through to the handler."""
    if access is Access.PUBLIC:
        return None
    if who.kind == "none":
        return 401
    if who.kind == "token":
        if access is not Access.CALLER:
            return 403
        return None if who.live else 401
    if not who.live:
        return 401
    if access in (Access.MANAGE, Access.ADMIN) and who.scope == "call":
        return 403
    if access is Access.ADMIN and who.scope != "admin":
        return 403
    if access is Access.BOOTSTRAP and who.scope != "admin":
        return 403  # the handler: creating keys needs an admin key
    return None


def outcome(access: Access, who: Identity, *, allowed: bool, ok: int, denied: int = 404) -> int:
    gated = gate(access, who)
    if gated is not None:
        return gated
    return ok if allowed else denied


def expect(r: httpx.Response, status: int, what: str) -> Any:
    """Assert the status (and the error type of an error); the JSON body, if any."""
    assert r.status_code == status, f"{what}: {r.status_code}, wanted {status}: {r.text[:300]}"
    if status in ERROR_TYPES:
        assert r.json()["error_type"] == ERROR_TYPES[status], f"{what}: {r.text[:300]}"
    if r.headers.get("content-type", "").startswith("application/json"):
        return r.json()
    return None


def sse_data(r: httpx.Response) -> list[Any]:
    return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# ---------------------------------------------------------------------------------------------
# The platform, its tenants and what they own


def flow_doc(app: str, output: object = "$n") -> dict[str, Any]:
    return {
        "input": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        "nodes": {"n": {"app": f"{OWNER}/{app}", "input": {"text": "$input.text"}}},
        "output": output,
    }


def _deploy(p: Platform, key: str, path: Path, name: str, alias: str = "latest") -> dict:
    app, folder, entry = load_app(path, name)
    with p.admin(key) as admin:
        return admin.deploy(app, folder, entry, alias=alias)


def wait_completed(http: httpx.Client, key: str, status_path: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        r = http.get(status_path, headers={"Authorization": f"Key {key}"})
        if r.status_code == 200 and r.json()["status"] == "COMPLETED":
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)


def _submit(w_http: httpx.Client, key: str, path: str, marker: str) -> dict[str, Any]:
    r = w_http.post(path, json={"text": marker}, headers={"Authorization": f"Key {key}"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    wait_completed(w_http, key, path_of(body["status_url"]))
    return body


def build_world(p: Platform, tmp: Path) -> Iterator[World]:
    """Make the world on platform ``p`` (``tmp``: a folder of its own); yield it, then close
    its clients."""
    made: dict[str, dict[str, Any]] = {}
    with p.admin() as admin:
        for tenant in (OWNER, STRANGER, SHAREE):
            made[tenant] = admin.create_key(tenant, label="isolation")
        made["owner-call"] = admin.create_key(OWNER, label="call", scope="call")
        made["owner-deploy"] = admin.create_key(OWNER, label="deploy", scope="deploy")
        made["revoked"] = admin.create_key(OWNER, label="revoked", scope="call")
        made["expired"] = admin.create_key(OWNER, label="expired", scope="call", expires_in_s=3)
    expired_at = time.monotonic() + 3.0
    keys = {name: str(m["key"]) for name, m in made.items()}
    keys[ADMIN] = p.key
    http = httpx.Client(base_url=p.url, timeout=60)
    for name in ("revoked", "expired"):  # both work before they are revoked or expire
        r = http.get("/requests/nope/status", headers={"Authorization": f"Key {keys[name]}"})
        assert r.status_code == 404, r.text
    with p.admin() as admin:
        admin.revoke_key(str(made["revoked"]["key_id"]))

    settings = Settings.from_env({"KLIEG_HOME": str(p.home)})
    registry = Registry(settings.effective_database_url)
    tenant_ids = {}
    for tenant in (OWNER, STRANGER, SHAREE, ADMIN):
        found = registry.get_tenant(tenant)
        assert found is not None
        tenant_ids[tenant] = found.id
    signing_key = (p.home / "signing-key").read_text().strip()
    assert signing_key == settings.signing_key

    revisions = {
        name: _deploy(p, keys[OWNER], APP_FILE, name)["revision"]
        for name in (PRIVATE, SHARED, PUBLIC)
    }
    second = tmp / "app.py"
    second.write_text(APP_FILE.read_text() + "\n")
    revisions["second"] = _deploy(p, keys[OWNER], second, PRIVATE, alias="second")["revision"]
    assert revisions["second"] != revisions[PRIVATE]
    try:  # the same code under the same name as the owner's app
        stranger_deploy = _deploy(p, keys[STRANGER], APP_FILE, PRIVATE)
    except KliegError as exc:
        pytest.fail(f"another tenant cannot deploy the owner's app as its own: {exc}")

    flows: dict[str, str] = {}
    with p.admin(keys[OWNER]) as owner:
        owner.share(SHARED, "shared", [SHAREE])
        owner.share(PUBLIC, "public")
        owner.set_alias(PRIVATE, "rb", revisions[PRIVATE])  # "rb" has a step to roll back
        owner.set_alias(PRIVATE, "rb", revisions["second"])
        for name, app in ((FLOW, PRIVATE), (FLOW_SHARED, SHARED), (FLOW_PUBLIC, PUBLIC)):
            flows[name] = owner.put_workflow(name, flow_doc(app))["revision"]
        flows["second"] = owner.put_workflow(
            FLOW, flow_doc(PRIVATE, {"second": "$n.text"}), alias="second"
        )["revision"]
        owner.set_workflow_alias(FLOW, "rb", flows[FLOW])
        owner.set_workflow_alias(FLOW, "rb", flows["second"])
        owner.share_workflow(FLOW_SHARED, "shared", [SHAREE])
        owner.share_workflow(FLOW_PUBLIC, "public")
        listed = {str(k["key_id"]) for k in owner.list_keys()}

    requests: dict[str, Req] = {}
    plan = [
        ("owner-private", OWNER, f"/queue/{OWNER}/{PRIVATE}", False),
        ("sharee-shared", SHAREE, f"/queue/{OWNER}/{SHARED}", False),
        ("stranger-public", STRANGER, f"/queue/{OWNER}/{PUBLIC}", False),
        ("owner-flow", OWNER, f"/queue/workflows/{OWNER}/{FLOW}", True),
        ("sharee-flow", SHAREE, f"/queue/workflows/{OWNER}/{FLOW_SHARED}", True),
        ("stranger-flow", STRANGER, f"/queue/workflows/{OWNER}/{FLOW_PUBLIC}", True),
    ]
    for label, tenant, path, is_flow in plan:
        marker = f"secret-{label}-{uuid.uuid4().hex[:8]}"
        body = _submit(http, keys[tenant], path, marker)
        rid = str(body["request_id"])
        requests[label] = Req(label, rid, tenant, path_of(body["response_url"]), marker, is_flow)

    auth = {"Authorization": f"Key {keys[OWNER]}"}
    flow_logs = http.get(requests["owner-flow"].root + "/status?logs=1", headers=auth).json()
    started = [line for line in flow_logs["logs"] if line.get("event") == "started"]
    node_id = str(started[0]["request_id"])
    node = Req(
        "owner-flow-node",
        node_id,
        OWNER,
        f"/requests/{node_id}",
        requests["owner-flow"].marker,
        False,
    )

    media: dict[str, tuple[str, bytes]] = {}
    for label in ("owner-private", "stranger-public"):
        req = requests[label]
        auth = {"Authorization": f"Key {keys[req.tenant]}"}
        out = http.get(req.root, headers=auth).json()
        media[label] = (out["note"]["url"], f"{out['app']}:{req.marker}".encode())
    upload_body = b"uploaded by the owner " + uuid.uuid4().hex.encode()
    with p.admin(keys[OWNER]) as owner:
        upload_url = owner.upload_file(upload_body, "text/plain", "mine.txt").url

    public_app, folder, entry = load_app(APP_FILE, PUBLIC)
    code = archive.pack(folder)
    deploy_body = {
        "spec": public_app.spec(entry).model_dump(mode="json"),
        "archive": base64.b64encode(code).decode(),
    }

    def key_header(name: str) -> str:
        return f"Key {keys[name]}"

    def token_header(tenant: str, signing: str = signing_key, ttl: float = 600) -> str:
        return f"Bearer {calltokens.issue(signing, tenant_ids[tenant], ttl)}"

    identities = [
        Identity("owner", key_header(OWNER), OWNER, "key"),
        Identity("owner-deploy-key", key_header("owner-deploy"), OWNER, "key", scope="deploy"),
        Identity("owner-call-key", key_header("owner-call"), OWNER, "key", scope="call"),
        Identity("owner-token", token_header(OWNER), OWNER, "token"),
        Identity("stranger", key_header(STRANGER), STRANGER, "key"),
        Identity("stranger-token", token_header(STRANGER), STRANGER, "token"),
        Identity("sharee", key_header(SHAREE), SHAREE, "key"),
        Identity("platform-admin", key_header(ADMIN), ADMIN, "key"),
        Identity("no-key", None, None, "none"),
        Identity("revoked-key", key_header("revoked"), OWNER, "key", "call", live=False),
        Identity("expired-key", key_header("expired"), OWNER, "key", "call", live=False),
        Identity("forged-token", token_header(OWNER, "not-the-key"), OWNER, "token", live=False),
        Identity("expired-token", token_header(OWNER, ttl=-60), OWNER, "token", live=False),
    ]
    key_ids = {tenant: {str(made[tenant]["key_id"])} for tenant in (STRANGER, SHAREE)}
    key_ids[OWNER] = listed
    assert {
        str(made[n]["key_id"]) for n in ("owner-call", "owner-deploy", "revoked", "expired")
    } <= listed
    w = World(
        p=p,
        http=http,
        registry=registry,
        signing_key=signing_key,
        tenant_ids=tenant_ids,
        keys=keys,
        key_ids=key_ids,
        identities=identities,
        revisions=revisions,
        flows=flows,
        requests=requests,
        node_request=node,
        upload_url=upload_url,
        upload_body=upload_body,
        media=media,
        deploy_body=deploy_body,
        code_hash=archive.digest(code),
        stranger_deploy=stranger_deploy,
        owner=p.admin(keys[OWNER]),
    )
    missing = f"app {OWNER}/%s not found"
    w.app_targets = [
        Target("private", PRIVATE, PRIVATE, frozenset({OWNER}), missing % PRIVATE),
        Target("shared", SHARED, SHARED, frozenset({OWNER, SHAREE}), missing % SHARED),
        Target("public", PUBLIC, PUBLIC, frozenset({ANYONE}), missing % PUBLIC),
        Target(
            "private at a revision",
            f"{PRIVATE}@{revisions[PRIVATE]}",
            PRIVATE,
            frozenset({OWNER}),
            f"{OWNER}/{PRIVATE}@{revisions[PRIVATE]} not found",
        ),
        Target(
            "public at a private revision",
            f"{PUBLIC}@{revisions[PRIVATE]}",
            PUBLIC,
            frozenset(),
            f"{OWNER}/{PUBLIC}@{revisions[PRIVATE]} not found",
        ),
        Target("missing", "iso-missing", "iso-missing", frozenset(), missing % "iso-missing"),
    ]
    missing = f"workflow {OWNER}/%s not found"
    w.flow_targets = [
        Target("private", FLOW, FLOW, frozenset({OWNER}), missing % FLOW),
        Target(
            "shared", FLOW_SHARED, FLOW_SHARED, frozenset({OWNER, SHAREE}), missing % FLOW_SHARED
        ),
        Target("public", FLOW_PUBLIC, FLOW_PUBLIC, frozenset({ANYONE}), missing % FLOW_PUBLIC),
        Target(
            "private at a revision",
            f"{FLOW}@{flows['second']}",
            FLOW,
            frozenset({OWNER}),
            f"workflow {OWNER}/{FLOW}@{flows['second']} not found",
        ),
        Target("missing", "iso-no-flow", "iso-no-flow", frozenset(), missing % "iso-no-flow"),
    ]
    time.sleep(max(0.0, expired_at - time.monotonic()))
    yield w
    w.owner.close()
    http.close()
    registry.close()
