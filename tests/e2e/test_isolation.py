"""Tenant isolation over every gateway route, on the real platform.

The matrix: each route of ``ROUTES`` (a route without a case below fails) x each caller
identity. The tenant ``iso-owner`` owns three apps (private, shared with ``iso-sharee``,
public), three workflows (the same three visibilities), keys, an upload, and requests; the other
tenants (``iso-stranger``, ``iso-sharee``, and the platform's admin tenant ``local``) own
requests of their own on the owner's apps. The expectations:

- no credentials, a revoked or an expired key, and a forged or expired call token: 401;
- a call token on a route that manages (keys, apps, workflows, tenants): 403; a ``call`` key
  there: 403; a ``deploy`` key on the key and tenant routes: 403;
- keys and tenants: a tenant mints, lists and revokes its own keys only, the platform admin
  any tenant's; changing a tenant and the fleet views (workers, pools) take the platform admin;
- metrics: a tenant sees the series of its own apps only, the platform admin every series;
- an app, workflow, request, status, log, result, revision, alias or key of another tenant
  that the caller may not see: 404 with the same detail as for one that does not exist, never
  403 (existence does not leak), and nothing of it in the answer;
- what the caller may see or change is its own (or shared with it, or public), and what it may
  not change is left as it was.

Signed file URLs are capabilities: any holder reads the file without a key, a key does not
stand in for a signature, and no part of the URL (request id, tenant, name, expiry) can be
changed to reach another file; they expire.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Route

from klieg_platform.gateway.app import ROUTES
from klieg_platform.gateway.auth import Access, Authenticate
from klieg_platform.storage import code_key
from klieg_platform.storage.signing import signature
from tests.e2e.isolation_world import (
    ADMIN,
    FLOW,
    FLOW_PUBLIC,
    FLOW_SHARED,
    OWNER,
    PRIVATE,
    PUBLIC,
    SHARED,
    SHAREE,
    STRANGER,
    Identity,
    Req,
    Target,
    World,
    build_world,
    expect,
    flow_doc,
    outcome,
    path_of,
    sse_data,
    wait_completed,
)
from tests.e2e.platform import Platform

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def world(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from build_world(platform, tmp_path_factory.mktemp("isolation"))


# ---------------------------------------------------------------------------------------------
# One case per route: it sends the route's request(s) as ``who`` and checks the answer.

Case = Callable[[World, Identity, Access], None]
CASES: dict[tuple[str, str], tuple[Access, Case]] = {}


def case(method: str, path: str, access: Access) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert (method, path) not in CASES, (method, path)
        CASES[(method, path)] = (access, fn)
        return fn

    return register


_REQ = "/queue/{owner}/{app}/requests/{request_id}"
_WF_REQ = "/queue/workflows/{owner}/{name}/requests/{request_id}"


@case("GET", "/health", Access.PUBLIC)
def _health(w: World, who: Identity, access: Access) -> None:
    body = expect(w.send(who, "GET", "/health"), 200, "health")
    assert body["status"] == "ok"


@case("GET", "/openapi.json", Access.PUBLIC)
def _openapi(w: World, who: Identity, access: Access) -> None:
    r = w.send(who, "GET", "/openapi.json")
    body = expect(r, 200, "openapi")
    assert "/keys" in body["paths"] and OWNER not in r.text, "the API document names a tenant"


@case("POST", "/keys", Access.BOOTSTRAP)
def _create_key(w: World, who: Identity, access: Access) -> None:
    """Minting a key for the owner's tenant: the owner and the platform admin only."""
    before = {str(k["key_id"]) for k in w.owner.list_keys()}
    r = w.send(who, "POST", "/keys", json={"tenant": OWNER, "scope": "call", "label": "probe"})
    allowed = who.tenant in (OWNER, ADMIN)
    body = expect(r, outcome(access, who, allowed=allowed, ok=201, denied=403), "POST /keys")
    after = {str(k["key_id"]) for k in w.owner.list_keys()}
    if r.status_code == 201:
        assert body["tenant"] == OWNER and after == before | {body["key_id"]}
        w.owner.revoke_key(body["key_id"])
    else:
        assert after == before, "a refused POST /keys made a key"


@case("GET", "/keys", Access.ADMIN)
def _list_keys(w: World, who: Identity, access: Access) -> None:
    r = w.send(who, "GET", "/keys")
    body = expect(r, outcome(access, who, allowed=True, ok=200), "GET /keys")
    if r.status_code != 200:
        return
    listed = {k["key_id"] for k in body["keys"]}
    for tenant, ids in w.key_ids.items():
        if tenant == who.tenant:
            assert ids <= listed, "a tenant's listing lacks its keys"
        else:
            assert not ids & listed, f"{tenant}'s keys listed for {who.tenant}"


@case("DELETE", "/keys/{key_id}", Access.ADMIN)
def _revoke_key(w: World, who: Identity, access: Access) -> None:
    """Revoking one of the owner's keys: the owner and the platform admin only."""
    victim = w.owner.create_key(scope="call", label="victim")
    r = w.send(who, "DELETE", f"/keys/{victim['key_id']}")
    allowed = who.tenant in (OWNER, ADMIN)
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), "DELETE /keys")
    probe = w.http.get("/requests/nope/status", headers={"Authorization": f"Key {victim['key']}"})
    if r.status_code == 200:
        assert body == {"key_id": victim["key_id"], "revoked": True}
        assert probe.status_code == 401
    else:
        assert probe.status_code == 404, "a refused revoke revoked the key"
        w.owner.revoke_key(victim["key_id"])


def _owner_secret(w: World) -> None:
    """The owner holds ISO_OWNER_SECRET (its value is never shown to anyone)."""
    if not any(x["name"] == "ISO_OWNER_SECRET" for x in w.owner.list_secrets()):
        w.owner.set_secret("ISO_OWNER_SECRET", "owner-secret-value")


@case("GET", "/secrets", Access.MANAGE)
def _list_secrets(w: World, who: Identity, access: Access) -> None:
    _owner_secret(w)
    r = w.send(who, "GET", "/secrets")
    body = expect(r, outcome(access, who, allowed=True, ok=200), "GET /secrets")
    assert "owner-secret-value" not in r.text
    if r.status_code == 200:
        names = {x["name"] for x in body["secrets"]}
        assert ("ISO_OWNER_SECRET" in names) == (who.tenant == OWNER), who.name


@case("PUT", "/secrets/{name}", Access.MANAGE)
def _set_secret(w: World, who: Identity, access: Access) -> None:
    """Setting a secret sets the caller's own: the owner's keeps its value."""
    _owner_secret(w)
    if any(x["name"] == "ISO_PROBE" for x in w.owner.list_secrets()):
        w.owner.delete_secret("ISO_PROBE")
    r = w.send(who, "PUT", "/secrets/ISO_PROBE", json={"value": f"by {who.name}"})
    body = expect(r, outcome(access, who, allowed=True, ok=200), "PUT /secrets")
    if r.status_code == 200:
        assert body["name"] == "ISO_PROBE" and "value" not in body
    mine = {x["name"] for x in w.owner.list_secrets()}
    assert "ISO_OWNER_SECRET" in mine
    if who.tenant != OWNER:
        assert "ISO_PROBE" not in mine, f"{who.name} set a secret of the owner"


@case("DELETE", "/secrets/{name}", Access.MANAGE)
def _delete_secret(w: World, who: Identity, access: Access) -> None:
    """Deleting the owner's secret: the owner only; anyone else finds no such secret."""
    _owner_secret(w)
    r = w.send(who, "DELETE", "/secrets/ISO_OWNER_SECRET")
    expect(r, outcome(access, who, allowed=who.tenant == OWNER, ok=200), "DELETE /secrets")
    still = any(x["name"] == "ISO_OWNER_SECRET" for x in w.owner.list_secrets())
    assert still == (r.status_code != 200), who.name


@case("POST", "/files/upload", Access.CALLER)
def _upload(w: World, who: Identity, access: Access) -> None:
    data = f"upload by {who.name}".encode()
    headers = {"content-type": "text/plain", "x-klieg-file-name": "probe.txt"}
    r = w.send(who, "POST", "/files/upload", content=data, headers=headers)
    body = expect(r, outcome(access, who, allowed=True, ok=201), "upload")
    if r.status_code == 201:
        assert who.tenant is not None
        assert f"/files/uploads/{w.tenant_ids[who.tenant]}/" in body["url"]
        assert httpx.get(body["url"]).content == data


@case("POST", "/storage/auth/token", Access.CALLER)
def _upload_token(w: World, who: Identity, access: Access) -> None:
    """fal's upload token is a call token of the caller's own tenant: an upload with it lands
    under that tenant's uploads."""
    r = w.send(who, "POST", "/storage/auth/token", params={"storage_type": "fal-cdn-v3"})
    body = expect(r, outcome(access, who, allowed=True, ok=200), "upload token")
    if r.status_code != 200:
        return
    assert who.tenant is not None and body["token_type"] == "Bearer"
    headers = {"Authorization": f"Bearer {body['token']}", "content-type": "text/plain"}
    up = httpx.post(f"{body['base_url']}/files/upload", content=b"x", headers=headers)
    assert up.status_code == 201, up.text
    assert f"/files/uploads/{w.tenant_ids[who.tenant]}/" in up.json()["url"]


@case("GET", "/files/{key:path}", Access.PUBLIC)
def _download(w: World, who: Identity, access: Access) -> None:
    """A signed URL serves its file whoever sends it; a key does not replace the signature."""
    files = [(w.upload_url, w.upload_body), *w.media.values()]
    for url, data in files:
        r = w.send(who, "GET", path_of(url))
        assert (r.status_code, r.content) == (200, data), (url, r.status_code)
        unsigned = w.send(who, "GET", urlsplit(url).path)
        expect(unsigned, 401, f"unsigned {url}")


@case("GET", "/apps", Access.MANAGE)
def _list_apps(w: World, who: Identity, access: Access) -> None:
    r = w.send(who, "GET", "/apps")
    body = expect(r, outcome(access, who, allowed=True, ok=200), "GET /apps")
    if r.status_code == 200:
        assert {a["owner"] for a in body} <= {who.tenant}, "another tenant's apps listed"
        if who.tenant == OWNER:
            assert {PRIVATE, SHARED, PUBLIC} <= {a["name"] for a in body}


@case("GET", "/apps/{name}/revisions", Access.MANAGE)
def _list_revisions(w: World, who: Identity, access: Access) -> None:
    owner_revisions = {w.revisions[n] for n in (PRIVATE, SHARED, PUBLIC, "second")}
    for name in (PRIVATE, SHARED, PUBLIC):
        r = w.send(who, "GET", f"/apps/{name}/revisions")
        allowed = w.has_app(who.tenant, name)
        body = expect(r, outcome(access, who, allowed=allowed, ok=200), f"revisions of {name}")
        if r.status_code == 200:
            ids = {rev["id"] for rev in body}
            assert {rev["owner"] for rev in body} == {who.tenant}
            if who.tenant == OWNER:
                assert w.revisions[name] in ids
            else:
                assert not ids & owner_revisions, "the owner's revisions listed for another"
        elif r.status_code == 404:
            assert r.json()["detail"] == f"app {who.tenant}/{name} not found"


@case("POST", "/apps/{name}/deploy", Access.MANAGE)
def _deploy_route(w: World, who: Identity, access: Access) -> None:
    """Deploying ``iso-public``: a caller's deploy lands in its own namespace."""
    r = w.send(who, "POST", f"/apps/{PUBLIC}/deploy", json=w.deploy_body)
    expect(r, outcome(access, who, allowed=True, ok=200), "deploy")
    assert w.registry.get_alias(w.owner_app(PUBLIC), "latest") == w.revisions[PUBLIC]
    if r.status_code != 200:
        return
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    done = events[-1]
    assert done["event"] == "done" and done["owner"] == who.tenant, done
    if who.tenant == OWNER:
        assert (done["revision"], done["created"]) == (w.revisions[PUBLIC], False)
    else:
        assert done["revision"] != w.revisions[PUBLIC]


@case("PUT", "/apps/{name}/aliases/{alias}", Access.MANAGE)
def _set_alias(w: World, who: Identity, access: Access) -> None:
    """Pointing an alias of ``iso-private`` at the owner's revision: the owner only (the
    stranger has an ``iso-private`` of its own, and may still not point it there)."""
    target = w.revisions["second"]
    r = w.send(who, "PUT", f"/apps/{PRIVATE}/aliases/probe", json={"revision": target})
    allowed = who.tenant == OWNER
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), "set alias")
    if r.status_code == 200:
        assert body["revision"] == target
    if who.tenant not in (None, OWNER) and w.has_app(who.tenant, PRIVATE):
        own = w.app(str(who.tenant), PRIVATE)
        assert own is not None and w.registry.get_alias(own, "probe") is None


@case("POST", "/apps/{name}/rollback", Access.MANAGE)
def _rollback(w: World, who: Identity, access: Access) -> None:
    app = w.owner_app(PRIVATE)
    w.owner.set_alias(PRIVATE, "rb", w.revisions["second"])
    r = w.send(who, "POST", f"/apps/{PRIVATE}/rollback", params={"alias": "rb"})
    allowed = who.tenant == OWNER
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), "rollback")
    if r.status_code == 200:
        assert body["revision"] == w.revisions[PRIVATE]
    else:
        assert w.registry.get_alias(app, "rb") == w.revisions["second"]


@case("PUT", "/apps/{name}/visibility", Access.MANAGE)
def _set_visibility(w: World, who: Identity, access: Access) -> None:
    """Sharing ``iso-private`` with oneself: only the owner changes the owner's app."""
    body = {"visibility": "shared", "tenants": [who.tenant or STRANGER]}
    r = w.send(who, "PUT", f"/apps/{PRIVATE}/visibility", json=body)
    allowed = w.has_app(who.tenant, PRIVATE)
    expect(r, outcome(access, who, allowed=allowed, ok=200), "visibility")
    if who.tenant == OWNER and r.status_code == 200:
        w.owner.share(PRIVATE, "private")
    assert w.owner_app(PRIVATE).visibility == "private"
    probe = w.http.post(
        f"/{OWNER}/{PRIVATE}",
        json={"text": "x"},
        headers={"Authorization": f"Key {w.keys[STRANGER]}"},
    )
    expect(probe, 404, "the owner's private app after a visibility attempt")


@case("PUT", "/apps/{name}/limits", Access.MANAGE)
def _set_limits(w: World, who: Identity, access: Access) -> None:
    r = w.send(who, "PUT", f"/apps/{PRIVATE}/limits", json={"max_inflight": 7})
    allowed = w.has_app(who.tenant, PRIVATE)
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), "limits")
    if who.tenant == OWNER and r.status_code == 200:
        assert body["max_inflight"] == 7
        w.owner.limit_app(PRIVATE, 0)
    assert w.owner_app(PRIVATE).max_inflight == 0


def _owned_only(
    w: World, who: Identity, access: Access, method: str, name: str, path: str = "", **kw: Any
) -> tuple[httpx.Response, Any]:
    """Send ``method`` to ``/apps/{name}{path}``, a route that acts on the caller's own app
    ``name``: 200 where the caller has one, else 404 naming the caller's tenant (never the
    owner's). The answer and its body."""
    allowed = w.has_app(who.tenant, name)
    r = w.send(who, method, f"/apps/{name}{path}", **kw)
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), f"{method} {name}{path}")
    if r.status_code == 404:
        assert body["detail"] == f"app {who.tenant}/{name} not found", body
    return r, body


@case("GET", "/apps/{name}/scale", Access.MANAGE)
def _get_scale(w: World, who: Identity, access: Access) -> None:
    """An app's scaling: the caller's own app of that name only (the stranger has an
    ``iso-private`` of its own)."""
    r, body = _owned_only(w, who, access, "GET", PRIVATE, "/scale")
    if r.status_code == 200:
        owner_revisions = {w.revisions[PRIVATE], w.revisions["second"]}
        assert (body["revision"] in owner_revisions) == (who.tenant == OWNER), body


@case("PUT", "/apps/{name}/scale", Access.MANAGE)
def _set_scale(w: World, who: Identity, access: Access) -> None:
    """Scaling ``iso-private``: only the owner changes the owner's app."""
    r, body = _owned_only(w, who, access, "PUT", PRIVATE, "/scale", json={"keep_alive": 600})
    if r.status_code == 200:
        assert [(o["function"], o["keep_alive"]) for o in body["overrides"]] == [(None, 600)]
        reset = w.send(who, "PUT", f"/apps/{PRIVATE}/scale", json={"reset": True})
        assert reset.status_code == 200 and reset.json()["overrides"] == [], reset.text
    assert w.registry.scale_overrides(w.owner_app(PRIVATE)) == {}, f"{who.name} scaled it"


@case("POST", "/apps/{name}/prune", Access.MANAGE)
def _prune(w: World, who: Identity, access: Access) -> None:
    """Pruning ``iso-private`` acts on the caller's own app: the owner's revisions (each
    behind an alias) stay, and another tenant's answer names none of them."""
    owner_revisions = {w.revisions[PRIVATE], w.revisions["second"]}
    r, body = _owned_only(w, who, access, "POST", PRIVATE, "/prune", params={"keep": "0"})
    if r.status_code == 200:
        assert body["retired"] == [], body
        assert (owner_revisions <= set(body["kept"])) == (who.tenant == OWNER), body
        assert who.tenant == OWNER or not owner_revisions & set(body["kept"]), body
    live = {rev.id for rev in w.registry.list_revisions(w.owner_app(PRIVATE))}
    assert owner_revisions <= live, f"{who.name} pruned the owner's revisions"


DOOMED = "iso-doomed"


@case("DELETE", "/apps/{name}", Access.MANAGE)
def _delete_app(w: World, who: Identity, access: Access) -> None:
    """Deleting the owner's ``iso-doomed``: the owner only; for anyone else it is not found
    and stays."""
    w.registry.ensure_app(w.tenant_ids[OWNER], DOOMED)
    r, body = _owned_only(w, who, access, "DELETE", DOOMED)
    if r.status_code == 200:
        assert (body["app"], body["deleted"]) == (DOOMED, True)
    assert w.has_app(OWNER, DOOMED) == (r.status_code != 200), who.name


DEV = "iso-dev"


def _dev_start(w: World, header: str | None, session: str) -> httpx.Response:
    """Start (or redeploy) dev session ``session`` of ``iso-dev`` (the isolation app's code)."""
    body = {**w.deploy_body, "spec": {**w.deploy_body["spec"], "name": DEV}}
    headers = {"Authorization": header} if header else {}
    return w.http.post(f"/apps/{DEV}/dev", json=body, params={"session": session}, headers=headers)


def _done(r: httpx.Response) -> dict[str, Any]:
    done: dict[str, Any] = json.loads(r.text.splitlines()[-1])
    assert done["event"] == "done", r.text[-300:]
    return done


@contextlib.contextmanager
def _owner_session(w: World) -> Iterator[tuple[str, str]]:
    """A dev session of the owner's ``iso-dev``: (session, its revision); ended afterwards
    (which deletes ``iso-dev``, the session having made it)."""
    session, owner = f"dev-{uuid.uuid4().hex[:8]}", f"Key {w.keys[OWNER]}"
    r = _dev_start(w, owner, session)
    assert r.status_code == 200, r.text
    try:
        yield session, str(_done(r)["revision"])
    finally:  # a 404 once the case ended it (iso-dev went with it)
        end = w.http.delete(f"/apps/{DEV}/dev/{session}", headers={"Authorization": owner})
        assert end.status_code in (200, 404), end.text


@case("POST", "/apps/{name}/dev", Access.MANAGE)
def _dev_start_route(w: World, who: Identity, access: Access) -> None:
    """A dev session lands in the caller's own namespace: naming the owner's session makes
    the caller's own session of that name, and the owner's stays on its revision."""
    with _owner_session(w) as (session, revision):
        r = _dev_start(w, who.header, session)
        expect(r, outcome(access, who, allowed=True, ok=200), "dev start")
        if r.status_code == 200:
            done = _done(r)
            assert (done["owner"], done["app"], done["alias"]) == (who.tenant, DEV, session)
            assert (done["revision"] == revision) == (who.tenant == OWNER), done
            if who.tenant != OWNER:
                end = w.send(who, "DELETE", f"/apps/{DEV}/dev/{session}")
                assert end.json()["retired"] == [done["revision"]], end.text
        assert w.registry.get_alias(w.owner_app(DEV), session) == revision
        assert not w.has_app(who.tenant, DEV) or who.tenant == OWNER, "a session left an app"


@case("PUT", "/apps/{name}/dev/{session}", Access.MANAGE)
def _dev_renew(w: World, who: Identity, access: Access) -> None:
    """Renewing the owner's dev session: the owner only."""
    with _owner_session(w) as (session, revision):
        r, body = _owned_only(w, who, access, "PUT", DEV, f"/dev/{session}")
        if r.status_code == 200:
            assert (body["session"], body["revision"]) == (session, revision)


@case("DELETE", "/apps/{name}/dev/{session}", Access.MANAGE)
def _dev_end(w: World, who: Identity, access: Access) -> None:
    """Ending the owner's dev session: the owner only; for anyone else it goes on."""
    with _owner_session(w) as (session, revision):
        r, body = _owned_only(w, who, access, "DELETE", DEV, f"/dev/{session}")
        if r.status_code == 200:
            assert (body["session"], body["retired"]) == (session, [revision])
            assert not w.has_app(OWNER, DEV), "the session made iso-dev; it goes with it"
        else:
            assert w.registry.get_alias(w.owner_app(DEV), session) == revision


@case("PUT", "/tenants/{name}", Access.ADMIN)
def _set_tenant(w: World, who: Identity, access: Access) -> None:
    """Changing the owner's tenant: the platform admin only; the owner itself may not."""
    r = w.send(who, "PUT", f"/tenants/{OWNER}", json={"max_inflight": 5})
    allowed = who.tenant == ADMIN
    body = expect(r, outcome(access, who, allowed=allowed, ok=200, denied=403), "tenants")
    tenant = w.registry.get_tenant(OWNER)
    assert tenant is not None
    if r.status_code == 200:
        assert (body["tenant"], tenant.max_inflight) == (OWNER, 5)
        with w.p.admin() as admin:
            admin.set_tenant(OWNER, max_inflight=0)
    else:
        assert tenant.max_inflight == 0


@case("GET", "/requests", Access.CALLER)
def _history(w: World, who: Identity, access: Access) -> None:
    """A request history is its tenant's own; a call token may not read it."""
    r = w.send(who, "GET", "/requests", params={"limit": "1000"})
    allowed = who.kind != "token"
    body = expect(r, outcome(access, who, allowed=allowed, ok=200, denied=403), "GET /requests")
    if r.status_code != 200:
        return
    listed = {x["request_id"] for x in body["requests"]}
    for req in w.requests.values():
        if req.tenant != who.tenant:
            assert req.id not in listed, f"{req.tenant}'s request listed for {who.tenant}"
    own = {req.id for req in w.requests.values() if req.tenant == who.tenant}
    assert own <= listed, "the history lacks the caller's requests"


@case("GET", "/metrics", Access.MANAGE)
def _metrics(w: World, who: Identity, access: Access) -> None:
    """Series of the owner's apps: the owner and the platform admin; nobody else sees a label
    of them (the fleet-wide gauges are the admin's)."""
    r = w.send(who, "GET", "/metrics")
    expect(r, outcome(access, who, allowed=True, ok=200), "GET /metrics")
    if r.status_code != 200:
        return
    shown = f'owner="{OWNER}"' in r.text
    if who.tenant in (OWNER, ADMIN):
        assert shown, "the owner's series are missing"
    else:
        assert not shown and PRIVATE not in r.text, f"{OWNER}'s series shown to {who.tenant}"
    assert ("klieg_queue_depth" in r.text) == (who.tenant == ADMIN)


@case("GET", "/console", Access.PUBLIC)
@case("GET", "/console/assets/{name}", Access.PUBLIC)
def _console(w: World, who: Identity, access: Access) -> None:
    """The console's shell and assets are the same for everyone and name no tenant: what a
    page shows comes from the API with the caller's key (so from the cases above)."""
    for path in ("/console", "/console/assets/console.js", "/console/assets/console.css"):
        r = w.send(who, "GET", path)
        assert r.status_code == 200, (path, r.status_code)
        assert OWNER not in r.text and PRIVATE not in r.text, f"{path} names a tenant or app"
    expect(w.send(who, "GET", "/console/assets/x.js"), 404, "an unknown asset")


@case("GET", "/fleet/stream", Access.MANAGE)
def _fleet_stream(w: World, who: Identity, access: Access) -> None:
    """The live fleet: a tenant's own runners; pools and queues for the platform admin only."""
    r = w.send(who, "GET", "/fleet/stream", params={"for_s": "1"})
    expect_status = outcome(access, who, allowed=True, ok=200)
    assert r.status_code == expect_status, (r.status_code, r.text)
    if r.status_code != 200:
        return
    docs = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert docs, "no fleet event"
    if who.tenant != ADMIN:  # the last hour: its own figures only, no queue depth
        assert all("queued" not in s for s in docs[0]["history"]), "fleet history shown"
    for doc in docs:
        owners = {x["app"].partition("/")[0] for x in doc["runners"]}
        if who.tenant != ADMIN:
            assert owners <= {who.tenant} and doc["pools"] is None, f"fleet shown to {who.tenant}"
        else:
            assert isinstance(doc["pools"], list)


@case("GET", "/workers", Access.ADMIN)
@case("GET", "/pools", Access.ADMIN)
def _fleet(w: World, who: Identity, access: Access) -> None:
    """The fleet views show every tenant's runners: the platform admin only."""
    for path, field in (("/workers", "workers"), ("/pools", "pools")):
        r = w.send(who, "GET", path)
        allowed = who.tenant == ADMIN
        body = expect(r, outcome(access, who, allowed=allowed, ok=200, denied=403), path)
        if r.status_code == 200:
            assert isinstance(body[field], list)
        else:
            assert "runners" not in r.text and "function" not in r.text


@case("GET", "/runners", Access.MANAGE)
def _runners(w: World, who: Identity, access: Access) -> None:
    """A tenant sees the runners of its own apps; the platform admin sees all."""
    r = w.send(who, "GET", "/runners")
    body = expect(r, outcome(access, who, allowed=True, ok=200), "GET /runners")
    if r.status_code != 200:
        return
    owners = {x["app"].partition("/")[0] for x in body["runners"]}
    if who.tenant != ADMIN:
        assert owners <= {who.tenant}, f"another tenant's runners shown to {who.tenant}"
    if who.tenant in (OWNER, ADMIN):
        assert OWNER in owners, "the owner's runners are missing"


@case("GET", "/workflows", Access.MANAGE)
def _list_workflows(w: World, who: Identity, access: Access) -> None:
    r = w.send(who, "GET", "/workflows")
    body = expect(r, outcome(access, who, allowed=True, ok=200), "GET /workflows")
    if r.status_code == 200:
        found = body["workflows"]
        assert {f["owner"] for f in found} <= {who.tenant}, "another tenant's workflows listed"
        if who.tenant == OWNER:
            assert {FLOW, FLOW_SHARED, FLOW_PUBLIC} <= {f["name"] for f in found}


@case("GET", "/workflows/{name}", Access.MANAGE)
def _get_workflow(w: World, who: Identity, access: Access) -> None:
    for name in (FLOW, FLOW_SHARED, FLOW_PUBLIC):
        r = w.send(who, "GET", f"/workflows/{name}")
        allowed = who.tenant == OWNER
        body = expect(r, outcome(access, who, allowed=allowed, ok=200), f"workflow {name}")
        if r.status_code == 200:
            assert body["owner"] == OWNER
            assert w.flows[name] in {rev["id"] for rev in body["revisions"]}
        elif r.status_code == 404:
            assert r.json()["detail"] == f"workflow {who.tenant}/{name} not found"
            assert w.flows[name] not in r.text


@case("PUT", "/workflows/{name}", Access.MANAGE)
def _put_workflow(w: World, who: Identity, access: Access) -> None:
    """Storing a workflow over the owner's private app: the owner only; for anyone else the
    app is not found (422 naming the node)."""
    r = w.send(who, "PUT", f"/workflows/{FLOW}", json={"document": flow_doc(PRIVATE)})
    allowed = who.tenant == OWNER
    body = expect(r, outcome(access, who, allowed=allowed, ok=200, denied=422), "put workflow")
    if r.status_code == 200:
        assert (body["revision"], body["created"]) == (w.flows[FLOW], False)
    elif r.status_code == 422:
        assert body["detail"] == f"node 'n': app {OWNER}/{PRIVATE} not found"
    if who.tenant is not None and who.tenant != OWNER:
        assert not w.has_app(who.tenant, f"workflows/{FLOW}")


@case("PUT", "/workflows/{name}/aliases/{alias}", Access.MANAGE)
def _set_workflow_alias(w: World, who: Identity, access: Access) -> None:
    target = w.flows["second"]
    r = w.send(who, "PUT", f"/workflows/{FLOW}/aliases/probe", json={"revision": target})
    allowed = who.tenant == OWNER
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), "workflow alias")
    if r.status_code == 200:
        assert body["revision"] == target
    elif r.status_code == 404:
        assert body["detail"] == f"workflow {who.tenant}/{FLOW} not found"


@case("POST", "/workflows/{name}/rollback", Access.MANAGE)
def _rollback_workflow(w: World, who: Identity, access: Access) -> None:
    app = w.owner_app(f"workflows/{FLOW}")
    w.owner.set_workflow_alias(FLOW, "rb", w.flows["second"])
    r = w.send(who, "POST", f"/workflows/{FLOW}/rollback", json={"alias": "rb"})
    allowed = who.tenant == OWNER
    body = expect(r, outcome(access, who, allowed=allowed, ok=200), "workflow rollback")
    if r.status_code == 200:
        assert body["revision"] == w.flows[FLOW]
    else:
        assert w.registry.get_alias(app, "rb") == w.flows["second"]


@case("PUT", "/workflows/{name}/visibility", Access.MANAGE)
def _set_workflow_visibility(w: World, who: Identity, access: Access) -> None:
    body = {"visibility": "shared", "tenants": [who.tenant or STRANGER]}
    r = w.send(who, "PUT", f"/workflows/{FLOW}/visibility", json=body)
    allowed = who.tenant == OWNER
    expect(r, outcome(access, who, allowed=allowed, ok=200), "workflow visibility")
    if r.status_code == 200:
        w.owner.share_workflow(FLOW, "private")
    assert w.owner_app(f"workflows/{FLOW}").visibility == "private"


NOT_JSON = b"{not json"
"""A body the gateway refuses for any app (422)."""
BAD_TEXT = b'{"text": 5}'
"""A body the gateway refuses for these workflows, checking it against their input schema."""


def _call_targets(
    w: World,
    who: Identity,
    access: Access,
    targets: list[Target],
    path: Callable[[str], str],
    check: Callable[[Target, str, httpx.Response], None],
    invalid: bytes,
) -> None:
    """Call each target with a good body, then with ``invalid`` (which the gateway refuses
    with 422, but only once the caller may call the target: a caller that may not learns
    nothing of the target's input)."""
    for t in targets:
        marker = f"{who.name}-{t.label}-{uuid.uuid4().hex[:6]}"
        r = w.send(who, "POST", path(t.ref), json={"text": marker})
        status = outcome(access, who, allowed=t.may(who.tenant), ok=200)
        body = expect(r, status, f"{t.label} ({path(t.ref)})")
        if r.status_code == 200:
            check(t, marker, r)
        elif r.status_code == 404:
            assert body["detail"] == t.denied_detail, body
        headers = {"content-type": "application/json"}
        r = w.send(who, "POST", path(t.ref), content=invalid, headers=headers)
        status = outcome(access, who, allowed=t.may(who.tenant), ok=422)
        body = expect(r, status, f"{t.label} ({path(t.ref)}) with {invalid!r}")
        if r.status_code == 404:
            assert body["detail"] == t.denied_detail, body


def _ran(path: str) -> Callable[[Target, str, httpx.Response], None]:
    def check(t: Target, marker: str, r: httpx.Response) -> None:
        out = r.json()
        assert (out["app"], out["path"], out["text"]) == (t.name, path, marker), out
        assert httpx.get(out["note"]["url"]).content == f"{t.name}:{marker}".encode()

    return check


def _queued(root: str) -> Callable[[Target, str, httpx.Response], None]:
    def check(t: Target, marker: str, r: httpx.Response) -> None:
        body = r.json()
        assert body["status"] == "IN_QUEUE", body
        assert f"{root}/{t.name}/requests/{body['request_id']}/status" in body["status_url"]

    return check


@case("GET", "/{owner}/{app}/openapi.json", Access.CALLER)
def _app_openapi(w: World, who: Identity, access: Access) -> None:
    """An app's document: whoever may call it (an app it may not call is not found)."""
    for t in w.app_targets:
        r = w.send(who, "GET", f"/{OWNER}/{t.ref}/openapi.json")
        body = expect(r, outcome(access, who, allowed=t.may(who.tenant), ok=200), t.label)
        if r.status_code == 200:
            assert body["info"]["title"] == f"{OWNER}/{t.name}"
            assert f"/{OWNER}/{t.ref}" in body["paths"]
        elif r.status_code == 404:
            assert body["detail"] == t.denied_detail, body


@case("POST", "/{owner}/{app}", Access.CALLER)
def _run(w: World, who: Identity, access: Access) -> None:
    path = f"/{OWNER}/%s"
    _call_targets(w, who, access, w.app_targets, lambda ref: path % ref, _ran("/"), NOT_JSON)


@case("POST", "/{owner}/{app}/{path:path}", Access.CALLER)
def _run_path(w: World, who: Identity, access: Access) -> None:
    path = f"/{OWNER}/%s/again"
    _call_targets(w, who, access, w.app_targets, lambda ref: path % ref, _ran("/again"), NOT_JSON)


@case("POST", "/queue/{owner}/{app}", Access.CALLER)
def _submit_route(w: World, who: Identity, access: Access) -> None:
    root = f"/queue/{OWNER}"
    _call_targets(
        w, who, access, w.app_targets, lambda ref: f"{root}/{ref}", _queued(root), NOT_JSON
    )


@case("POST", "/queue/{owner}/{app}/{path:path}", Access.CALLER)
def _submit_path(w: World, who: Identity, access: Access) -> None:
    root = f"/queue/{OWNER}"
    _call_targets(
        w, who, access, w.app_targets, lambda ref: f"{root}/{ref}/again", _queued(root), NOT_JSON
    )


def _flow_ran(t: Target, marker: str, r: httpx.Response) -> None:
    out = r.json()
    app = {FLOW: PRIVATE, FLOW_SHARED: SHARED, FLOW_PUBLIC: PUBLIC}[t.name]
    expected = {"second": marker} if "@" in t.ref else {"app": app, "text": marker}
    assert expected.items() <= out.items(), out


def _flow_streamed(t: Target, marker: str, r: httpx.Response) -> None:
    data = sse_data(r)
    assert data and data[-1]["event"] == "output", r.text[:300]
    assert marker in json.dumps(data[-1]["output"])


@case("POST", "/workflows/{owner}/{name}", Access.CALLER)
def _run_workflow(w: World, who: Identity, access: Access) -> None:
    path = f"/workflows/{OWNER}/%s"
    _call_targets(w, who, access, w.flow_targets, lambda ref: path % ref, _flow_ran, BAD_TEXT)


@case("POST", "/workflows/{owner}/{name}/stream", Access.CALLER)
def _stream_workflow(w: World, who: Identity, access: Access) -> None:
    path = f"/workflows/{OWNER}/%s/stream"
    _call_targets(w, who, access, w.flow_targets, lambda ref: path % ref, _flow_streamed, BAD_TEXT)


@case("POST", "/queue/workflows/{owner}/{name}", Access.CALLER)
def _submit_workflow(w: World, who: Identity, access: Access) -> None:
    root = f"/queue/workflows/{OWNER}"
    _call_targets(
        w, who, access, w.flow_targets, lambda ref: f"{root}/{ref}", _queued(root), BAD_TEXT
    )


def _readers(w: World, workflow: bool) -> list[tuple[Req, str]]:
    """(request, its root path as this route names it): each of the kind's requests at its own
    path, and one of them at the path of another app or workflow (which must not find it)."""
    own = [(r, r.root) for r in w.requests.values() if r.workflow == workflow]
    req = w.requests["owner-flow" if workflow else "owner-private"]
    other = FLOW_PUBLIC if workflow else PUBLIC
    wrong = re.sub(r"/[^/]+/requests/", f"/{other}/requests/", req.root)
    crossed = w.requests["owner-private" if workflow else "owner-flow"]
    kind = f"/queue/workflows/{OWNER}/{FLOW}" if workflow else f"/queue/{OWNER}/{PRIVATE}"
    return [*own, (req, wrong), (crossed, f"{kind}/requests/{crossed.id}")]


def _read_requests(
    w: World,
    who: Identity,
    access: Access,
    workflow: bool,
    suffix: str,
    method: str,
    ok: int,
    check: Callable[[Req, httpx.Response], None],
) -> None:
    for req, root in _readers(w, workflow):
        r = w.send(who, method, root + suffix)
        allowed = who.tenant == req.tenant and root == req.root
        body = expect(r, outcome(access, who, allowed=allowed, ok=ok), f"{req.label} {root}")
        if r.status_code == ok:
            check(req, r)
        else:
            assert req.marker not in r.text
            if r.status_code == 404:
                assert body["detail"] == f"request {req.id} not found", body


def _status_ok(req: Req, r: httpx.Response) -> None:
    body = r.json()
    assert (body["request_id"], body["status"]) == (req.id, "COMPLETED"), body
    logs = json.dumps(body["logs"])
    if req.workflow or req.tenant == OWNER:
        assert req.marker in logs, "the logs lack the request's own lines"
    else:  # a caller of another tenant's app sees none of the app's log lines
        assert req.marker not in logs, "an app's log lines reached a caller that does not own it"


def _stream_ok(req: Req, r: httpx.Response) -> None:
    data = sse_data(r)
    assert data and data[-1]["status"] == "COMPLETED", r.text[:300]
    assert {d["request_id"] for d in data} == {req.id}
    logs = json.dumps([d["logs"] for d in data])
    assert (req.marker in logs) == (req.workflow or req.tenant == OWNER), "logs shown as in status"


def _result_ok(req: Req, r: httpx.Response) -> None:
    assert req.marker in r.text and r.headers["x-fal-request-id"] == req.id


def _cancel_done(req: Req, r: httpx.Response) -> None:
    assert r.json()["status"] == "ALREADY_COMPLETED"


@case("GET", f"{_REQ}/status", Access.CALLER)
def _status(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, False, "/status?logs=1", "GET", 200, _status_ok)


@case("GET", f"{_REQ}/status/stream", Access.CALLER)
def _status_stream(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, False, "/status/stream?logs=1", "GET", 200, _stream_ok)


@case("GET", _REQ, Access.CALLER)
def _result(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, False, "", "GET", 200, _result_ok)


@case("PUT", f"{_REQ}/cancel", Access.CALLER)
def _cancel(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, False, "/cancel", "PUT", 400, _cancel_done)


@case("GET", f"{_WF_REQ}/status", Access.CALLER)
def _wf_status(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, True, "/status?logs=1", "GET", 200, _status_ok)


@case("GET", f"{_WF_REQ}/status/stream", Access.CALLER)
def _wf_status_stream(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, True, "/status/stream?logs=1", "GET", 200, _stream_ok)


@case("GET", _WF_REQ, Access.CALLER)
def _wf_result(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, True, "", "GET", 200, _result_ok)


@case("PUT", f"{_WF_REQ}/cancel", Access.CALLER)
def _wf_cancel(w: World, who: Identity, access: Access) -> None:
    _read_requests(w, who, access, True, "/cancel", "PUT", 400, _cancel_done)


@case("GET", "/requests/{request_id}", Access.CALLER)
def _one_request(w: World, who: Identity, access: Access) -> None:
    """One request with its input: its tenant's API keys only (a call token: 403)."""
    for req in w.requests.values():
        r = w.send(who, "GET", f"/requests/{req.id}")
        if who.kind == "token" and who.live:
            expect(r, 403, req.label)
            continue
        allowed = who.tenant == req.tenant
        body = expect(r, outcome(access, who, allowed=allowed, ok=200), req.label)
        if r.status_code == 200:
            assert body["request_id"] == req.id and body["status"] == "COMPLETED"
        else:
            assert req.marker not in r.text


@case("GET", "/requests/{request_id}/status", Access.CALLER)
def _status_by_id(w: World, who: Identity, access: Access) -> None:
    for req in [*w.requests.values(), w.node_request]:
        r = w.send(who, "GET", f"/requests/{req.id}/status", params={"logs": "1"})
        allowed = who.tenant == req.tenant
        body = expect(r, outcome(access, who, allowed=allowed, ok=200), req.label)
        if r.status_code == 200:
            _status_ok(req, r)
        else:
            assert req.marker not in r.text
            if r.status_code == 404:
                assert body["detail"] == f"request {req.id} not found"


# ---------------------------------------------------------------------------------------------
# The matrix


def _routes() -> list[tuple[str, str, Access]]:
    found = []
    for entry in ROUTES:
        assert isinstance(entry, Route) and isinstance(entry.app, Authenticate), entry
        methods = sorted((entry.methods or set()) - {"HEAD"})
        assert len(methods) == 1, entry.path
        found.append((methods[0], entry.path, entry.app.access))
    return found


ROUTE_LIST = _routes()


def test_every_case_is_a_route() -> None:
    assert set(CASES) == {(m, p) for m, p, _ in ROUTE_LIST}, "a case for a route that is gone"


@pytest.mark.parametrize(
    ("method", "path", "access"), ROUTE_LIST, ids=[f"{m} {p}" for m, p, _ in ROUTE_LIST]
)
def test_route_isolation(world: World, method: str, path: str, access: Access) -> None:
    assert (method, path) in CASES, f"no isolation case for {method} {path}: add one"
    declared, check = CASES[(method, path)]
    assert access is declared, f"{method} {path} is now {access}, the case says {declared}"
    failures = []
    for who in world.identities:
        try:
            check(world, who, access)
        except AssertionError as exc:
            failures.append(f"{who.name}: {exc}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Beyond the matrix


def test_two_tenants_deploying_the_same_app_each_get_their_own(world: World) -> None:
    """The stranger deployed the owner's ``iso-private`` code under the same name."""
    done = world.stranger_deploy
    assert done["owner"] == STRANGER and done["revision"] != world.revisions[PRIVATE]
    stranger = {"Authorization": f"Key {world.keys[STRANGER]}"}
    own = world.http.post(f"/{STRANGER}/{PRIVATE}", json={"text": "mine"}, headers=stranger)
    assert own.status_code == 200 and own.json()["text"] == "mine"
    theirs = world.http.post(f"/{OWNER}/{PRIVATE}", json={"text": "x"}, headers=stranger)
    expect(theirs, 404, "the owner's app")
    revisions = {rev["id"] for rev in world.owner.revisions(PRIVATE)}
    assert done["revision"] not in revisions
    assert revisions == {world.revisions[PRIVATE], world.revisions["second"]}
    via = world.http.post(
        f"/{OWNER}/{PRIVATE}@{done['revision']}",
        json={"text": "x"},
        headers={"Authorization": f"Key {world.keys[OWNER]}"},
    )
    expect(via, 404, "the owner's app at the stranger's revision")


def test_a_running_request_is_not_cancelled_by_another_tenant(world: World) -> None:
    owner = {"Authorization": f"Key {world.keys[OWNER]}"}
    r = world.http.post(
        f"/queue/{OWNER}/{PRIVATE}", json={"text": "keep", "seconds": 3}, headers=owner
    )
    body = r.json()
    root = path_of(body["response_url"])
    others = [w for w in world.identities if w.live and w.tenant not in (None, OWNER)]
    assert {w.tenant for w in others} == {STRANGER, SHAREE, ADMIN}
    for who in others:
        elsewhere = f"/queue/{who.tenant}/{PRIVATE}/requests/{body['request_id']}/cancel"
        for path in (f"{root}/cancel", elsewhere):
            expect(world.send(who, "PUT", path), 404, f"{who.name} cancels")
    during = world.http.get(root + "/status", headers=owner).json()["status"]
    assert during in ("IN_QUEUE", "IN_PROGRESS"), "the attempts came after the request ended"
    wait_completed(world.http, world.keys[OWNER], root + "/status")
    status = world.http.get(root + "/status", headers=owner).json()
    assert "cancel_requested" not in status and "error" not in status, status
    assert world.http.get(root, headers=owner).json()["text"] == "keep"


def _parts(url: str) -> tuple[str, int, str]:
    """(key, expires, sig) of a signed file URL."""
    parts = urlsplit(url)
    query = dict(pair.split("=", 1) for pair in parts.query.split("&"))
    return parts.path.removeprefix("/files/"), int(query["expires"]), query["sig"]


def _url(key: str, expires: int, sig: str) -> str:
    return f"/files/{key}?expires={expires}&sig={sig}"


def test_signed_urls_cannot_be_widened(world: World) -> None:
    """Every part of a signed URL is covered by its signature."""
    owner_media, _ = world.media["owner-private"]
    stranger_media, _ = world.media["stranger-public"]
    key, expires, sig = _parts(owner_media)
    _, request_id, name = key.split("/", 2)
    upload_key, upload_expires, upload_sig = _parts(world.upload_url)
    _, tenant_id, rest = upload_key.split("/", 2)
    assert tenant_id == world.tenant_ids[OWNER]
    widened = {
        "another request's id": _url(
            f"media/{world.requests['stranger-public'].id}/{name}", expires, sig
        ),
        "a made-up request id": _url(f"media/{uuid.uuid4().hex}/{name}", expires, sig),
        "the request's folder": _url(f"media/{request_id}", expires, sig),
        "another name": _url(f"media/{request_id}/x{name}", expires, sig),
        "a later expiry": _url(key, expires + 3600, sig),
        "no expiry": f"/files/{key}?sig={sig}",
        "another URL's signature": _url(key, expires, _parts(stranger_media)[2]),
        "another tenant's uploads": _url(
            f"uploads/{world.tenant_ids[STRANGER]}/{rest}", upload_expires, upload_sig
        ),
        "the tenant's upload folder": _url(f"uploads/{tenant_id}", upload_expires, upload_sig),
        "an upload with a later expiry": _url(upload_key, upload_expires + 1, upload_sig),
    }
    for what, path in widened.items():
        r = world.http.get(path)
        assert r.status_code == 401, (what, r.status_code, r.text[:200])
        assert r.json()["error_type"] == "AuthenticationError", what
    assert world.http.get(path_of(owner_media)).status_code == 200
    # Signed with the platform's own key, a blob outside media/ and uploads/ is still not served
    # (a code archive, a request's stored payload).
    far = int(time.time()) + 600
    for blob in (code_key(world.code_hash), f"payloads/{request_id}.json"):
        r = world.http.get(_url(blob, far, signature(world.signing_key, blob, far)))
        expect(r, 404, blob)


def test_signed_urls_expire(world: World) -> None:
    """An issued URL lasts the result TTL (a day by default), and a well-signed URL past its
    expiry is refused."""
    key, expires, _ = _parts(world.upload_url)
    assert abs(expires - (time.time() + 24 * 3600)) < 600
    past = int(time.time()) - 1
    r = world.http.get(_url(key, past, signature(world.signing_key, key, past)))
    assert (r.status_code, r.json()["detail"]) == (401, "the file URL has expired")
    soon = int(time.time()) + 3
    url = _url(key, soon, signature(world.signing_key, key, soon))
    assert world.http.get(url).content == world.upload_body
    time.sleep(max(0.0, soon + 1.1 - time.time()))
    r = world.http.get(url)
    assert (r.status_code, r.json()["detail"]) == (401, "the file URL has expired")


def test_a_public_workflow_does_not_lend_its_owners_private_apps(world: World) -> None:
    """A workflow the owner made public whose node calls the owner's private app: the owner's
    run works; another tenant's run fails at that node, and nothing of the app answers."""
    world.owner.put_workflow("iso-flow-leaky", flow_doc(PRIVATE))
    world.owner.share_workflow("iso-flow-leaky", "public")
    path = f"/workflows/{OWNER}/iso-flow-leaky"
    mine = world.http.post(
        path, json={"text": "own"}, headers={"Authorization": f"Key {world.keys[OWNER]}"}
    )
    assert mine.status_code == 200 and mine.json()["text"] == "own", mine.text
    for tenant in (STRANGER, SHAREE):
        r = world.http.post(
            path, json={"text": "borrowed"}, headers={"Authorization": f"Key {world.keys[tenant]}"}
        )
        body = expect(r, 404, f"{tenant} runs the workflow")
        assert body["detail"] == f"node 'n' failed: app {OWNER}/{PRIVATE} not found", body
