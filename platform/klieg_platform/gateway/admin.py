"""Admin routes: API keys, apps, revisions, aliases, deploy. All scoped to the caller's tenant.

POST /keys                          new key (first call on an empty platform bootstraps a tenant)
GET  /apps                          the caller's apps with their aliases
GET  /apps/{name}/revisions         revisions, newest first
POST /apps/{name}/deploy?alias=A    JSON {spec, archive(base64)} -> NDJSON progress stream
                                    (&reset_scale=1: drop the app's scale overrides)
PUT  /apps/{name}/aliases/{alias}   JSON {revision: id or alias}
POST /apps/{name}/rollback?alias=A  move an alias back one step
PUT  /apps/{name}/visibility        JSON {visibility, tenants} and/or {caller_logs: bool}
PUT  /apps/{name}/limits            JSON {max_inflight}
GET  /apps/{name}/scale             its scale overrides and each function's effective scaling
PUT  /apps/{name}/scale             JSON {function?, keep_alive?, min_concurrency?, ...; reset?}
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from klieg.exceptions import (
    AuthenticationError,
    InvalidRequestError,
    KliegError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from klieg.types import AppSpec
from klieg_platform import keys, vault
from klieg_platform.deploy import DeployResult, deploy
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.contract import accepts, answers, query
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.registry import ALIAS, ApiKey, AppRecord, Revision, Tenant

RESERVED = {
    "queue",
    "apps",
    "keys",
    "health",
    "files",
    "workflows",
    "admin",
    "metrics",
    "requests",
    "tenants",
    "secrets",
    "openapi.json",
    "console",
    "workers",
    "pools",
    "runners",
    "fleet",
    "storage",
}
ALIAS_QUERY = {"type": "string", "pattern": f"^(?:{ALIAS.pattern})$", "default": "latest"}
RESET_SCALE_QUERY = {
    "type": "string",
    "description": "anything but '', 0 or false: drop the app's scale overrides",
}
MAX_DEPLOY_BYTES = 128 * 1024 * 1024


@answers(bodies.KeyCreated, 201)
@accepts(bodies.NewKey)
async def create_key(request: Request, body: bodies.NewKey) -> Response:
    """A new API key, shown once."""
    gw = gateway(request)
    caller = auth.optional_caller(request)
    used = auth.caller_key(request)
    if caller is not None and (used is None or used.scope != "admin"):
        raise PermissionDeniedError("creating keys needs an 'admin' key")
    tier = body.tier or gw.settings.default_tier
    if tier not in gw.tiers:
        raise InvalidRequestError(f"unknown tier {tier!r}; tiers: {', '.join(gw.tiers)}")
    if caller is None:
        if await asyncio.to_thread(gw.registry.count_tenants) > 0:
            raise AuthenticationError("creating a key needs an existing key (KLIEG_KEY)")
        name = body.tenant or "local"
        _check_tenant_name(name)
        tenant = await asyncio.to_thread(gw.registry.create_tenant, name, "enterprise", True)
    elif body.tenant in (None, caller.name):
        tenant = caller
    else:
        if not caller.admin:
            raise PermissionDeniedError("only an admin tenant may create other tenants")
        wanted = str(body.tenant)
        _check_tenant_name(wanted)
        found = await asyncio.to_thread(gw.registry.get_tenant, wanted)
        if found is None:
            found = await asyncio.to_thread(gw.registry.create_tenant, wanted, tier)
        tenant = found
    expires_at = None if body.expires_in_s is None else time.time() + body.expires_in_s
    rate, burst = body.rate_terms()
    key, secret = await asyncio.to_thread(
        functools.partial(
            gw.registry.create_key,
            tenant.id,
            body.label,
            scope=body.scope,
            expires_at=expires_at,
            rate_per_s=rate,
            burst=burst,
        )
    )
    return JSONResponse(
        {**_key_view(key), "secret": secret, "key": f"{key.id}:{secret}", "tenant": tenant.name},
        201,
    )


def _key_view(key: ApiKey) -> dict[str, Any]:
    """A key as the API shows it (never its secret)."""
    return {
        "key_id": key.id,
        "label": key.label,
        "scope": key.scope,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "rate_per_s": key.rate_per_s,
        "burst": key.burst,
        "active": key.live(time.time()),
    }


@answers(bodies.Keys)
async def list_keys(request: Request) -> Response:
    """The caller's tenant's keys (``GET /keys``), revoked and expired ones marked."""
    gw = gateway(request)
    found = await asyncio.to_thread(gw.registry.list_keys, auth.caller(request).id)
    return JSONResponse({"keys": [_key_view(key) for key in found]})


@answers(bodies.KeyRevoked)
async def revoke_key(request: Request) -> Response:
    """``DELETE /keys/{key_id}``: revoke one of the tenant's keys (an admin tenant: any key);
    every gateway drops it from its cache at once."""
    gw = gateway(request)
    caller = auth.caller(request)
    key_id = request.path_params["key_id"]
    key = await asyncio.to_thread(gw.registry.get_key, key_id)
    if key is None or (key.tenant_id != caller.id and not caller.admin):
        raise NotFoundError(f"key {key_id} not found")
    revoked = await asyncio.to_thread(gw.registry.revoke_key, key_id)
    gw.forget_key(key_id)
    await gw.broker.streams.publish(keys.KEYS_CHANNEL, key_id)
    return JSONResponse({"key_id": key_id, "revoked": revoked})


def _check_tenant_name(name: str) -> None:
    if name in RESERVED:
        raise InvalidRequestError(f"{name!r} is reserved and cannot name a tenant")


async def owned_app(gw: GatewayState, tenant: Tenant, name: str) -> AppRecord:
    """The tenant's app ``name``; ``NotFoundError`` when it has none."""
    app = await asyncio.to_thread(gw.registry.get_app, tenant.name, name)
    if app is None:
        raise NotFoundError(f"app {tenant.name}/{name} not found")
    return app


@answers(bodies.Apps)
async def list_apps(request: Request) -> Response:
    """The caller's apps with their aliases."""
    gw = gateway(request)
    tenant = auth.caller(request)

    def load() -> list[dict[str, Any]]:
        return [
            {
                "owner": a.owner,
                "name": a.name,
                "created_at": a.created_at,
                "aliases": gw.registry.list_aliases(a),
            }
            for a in gw.registry.list_apps(tenant.id)
        ]

    return JSONResponse(await asyncio.to_thread(load))


def _revision_json(rev: Revision, aliases: dict[str, str]) -> dict[str, Any]:
    return {
        "id": rev.id,
        "app": rev.app,
        "owner": rev.owner,
        "created_at": rev.created_at,
        "code_hash": rev.code_hash,
        "env_key": rev.env_key,
        "python": rev.python,
        "aliases": sorted(a for a, r in aliases.items() if r == rev.id),
        "hardware": [
            {"function": f.get("name"), "gpu": f.get("gpu"), "num_gpus": f.get("num_gpus", 0)}
            for f in rev.spec.get("functions", [])
        ],
        "preload": list(rev.spec.get("preload") or ()),
        "preload_code": bool(rev.spec.get("preload_code")),
    }


@answers(bodies.Revisions)
async def list_revisions(request: Request) -> Response:
    """An app's revisions, newest first."""
    gw = gateway(request)
    app = await owned_app(gw, auth.caller(request), request.path_params["name"])

    def load() -> list[dict[str, Any]]:
        aliases = gw.registry.list_aliases(app)
        return [_revision_json(r, aliases) for r in gw.registry.list_revisions(app)]

    return JSONResponse(await asyncio.to_thread(load))


async def alias_moved(gw: GatewayState, owner: str, app: str) -> None:
    """Drop ``owner/app`` from this gateway's route cache and tell every other gateway to."""
    gw.forget_app(f"{owner}/{app}")
    await gw.broker.streams.publish(keys.ALIAS_CHANNEL, f"{owner}/{app}")


def alias_name(value: str) -> str:
    """``value`` if it is a valid alias name, else ``InvalidRequestError``."""
    if not ALIAS.fullmatch(value):
        raise InvalidRequestError(f"invalid alias {value!r}")
    return value


async def point_alias(
    gw: GatewayState, tenant: Tenant, app: AppRecord, alias: str, ref: str, label: str
) -> tuple[str, str | None]:
    """Point ``alias`` of ``app`` (an app or a stored workflow, called ``label`` in errors) at
    the revision ``ref`` names; (that revision's id, the alias's previous revision)."""
    rev = await asyncio.to_thread(gw.registry.revision_of, app, ref)
    if rev is None:
        raise NotFoundError(f"{label} has no revision or alias {ref!r}")
    previous = await asyncio.to_thread(gw.registry.set_alias, app, alias, rev.id)
    await alias_moved(gw, tenant.name, app.name)
    return rev.id, previous


async def roll_back(
    gw: GatewayState, tenant: Tenant, app: AppRecord, alias: str
) -> tuple[str, str | None]:
    """Move ``alias`` of ``app`` back to its previous revision; (revision, previous)."""
    previous = await asyncio.to_thread(gw.registry.get_alias, app, alias)
    revision = await asyncio.to_thread(gw.registry.rollback, app, alias)
    await alias_moved(gw, tenant.name, app.name)
    return revision, previous


async def share(
    gw: GatewayState, tenant: Tenant, app: AppRecord, visibility: str, tenants: list[str] | None
) -> tuple[AppRecord, list[str]]:
    """Make ``app`` ``visibility`` (shared with ``tenants``); (the app as it is now, the tenant
    names it is shared with)."""
    names = tenants or []
    app = await asyncio.to_thread(gw.registry.set_visibility, app, visibility, names)
    await alias_moved(gw, tenant.name, app.name)
    return app, names


@answers(bodies.AliasMoved)
@accepts(bodies.AliasTarget)
async def set_alias(request: Request, body: bodies.AliasTarget) -> Response:
    """Point an alias at a revision (by id, or the one another alias names)."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    alias = alias_name(request.path_params["alias"])
    ref = body.revision
    label = f"{tenant.name}/{app.name}"
    revision, previous = await point_alias(gw, tenant, app, alias, ref, label)
    return JSONResponse(
        {"app": app.name, "alias": alias, "revision": revision, "previous": previous}
    )


@answers(bodies.AliasMoved)
@query(alias=ALIAS_QUERY)
async def rollback(request: Request) -> Response:
    """Move an alias (``?alias=``, default ``latest``) back one deploy."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    alias = alias_name(request.query_params.get("alias", "latest"))
    revision, previous = await roll_back(gw, tenant, app, alias)
    return JSONResponse(
        {"app": app.name, "alias": alias, "revision": revision, "previous": previous}
    )


@answers("application/x-ndjson")
@query(alias=ALIAS_QUERY, reset_scale=RESET_SCALE_QUERY)
@accepts(bodies.Deploy, limit=MAX_DEPLOY_BYTES)
async def deploy_app(request: Request, body: bodies.Deploy) -> Response:
    """Deploy a revision (its spec and code archive); its progress as JSON lines."""
    gw = gateway(request)
    tenant = auth.caller(request)
    alias = alias_name(request.query_params.get("alias", "latest"))
    reset_scale = request.query_params.get("reset_scale", "0") not in ("", "0", "false")
    spec, code = deploy_body(request, body)
    return deploy_response(gw, tenant, spec, code, alias=alias, reset_scale=reset_scale)


def deploy_body(request: Request, body: bodies.Deploy) -> tuple[AppSpec, bytes]:
    """A deploy's ``{spec, archive}`` body (validated by ``accepts``): the spec, which must name
    the app of the URL, and the code archive's bytes (422 where it is not base64)."""
    spec = body.spec
    try:
        code = base64.b64decode(body.archive, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise ValidationError(
            [{"loc": ["body", "archive"], "msg": f"not base64: {exc}", "type": "base64_decode"}]
        ) from exc
    if spec.name != request.path_params["name"]:
        raise InvalidRequestError(
            f"spec names app {spec.name!r}, the URL {request.path_params['name']!r}"
        )
    return spec, code


def deploy_response(
    gw: GatewayState,
    tenant: Tenant,
    spec: AppSpec,
    code: bytes,
    *,
    alias: str,
    reset_scale: bool = False,
    dev_ttl_s: float | None = None,
) -> StreamingResponse:
    """Deploy (``deploy.deploy``) in a thread and answer with its NDJSON events as they come:
    ``progress`` lines, then ``done`` (the revision, the alias moved, ``warnings``) or
    ``error``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def progress(line: str) -> None:
        loop.call_soon_threadsafe(events.put_nowait, {"event": "progress", "message": line})

    def work() -> DeployResult:
        return deploy(
            registry=gw.registry,
            packager=gw.packager,
            store=gw.store,
            tenant=tenant,
            spec=spec,
            code=code,
            alias=alias,
            progress=progress,
            reset_scale=reset_scale,
            dev_ttl_s=dev_ttl_s,
        )

    async def run() -> None:
        try:
            res = await asyncio.to_thread(work)
            await alias_moved(gw, tenant.name, spec.name)
            warnings = await hardware_warnings(gw, spec)
            done = {
                "event": "done",
                "revision": res.revision.id,
                "created": res.created,
                "env_built": res.env_built,
                "env_key": res.revision.env_key,
                "alias": res.alias,
                "previous": res.previous,
                "app": spec.name,
                "owner": tenant.name,
                "warnings": warnings,
            }
            events.put_nowait(done)
        except KliegError as exc:
            events.put_nowait({"event": "error", **exc.to_dict()})
        except Exception as exc:
            events.put_nowait(
                {
                    "event": "error",
                    "detail": f"{type(exc).__name__}: {exc}",
                    "error_type": "DeployError",
                }
            )
        finally:
            events.put_nowait(None)

    task = asyncio.create_task(run())

    async def stream() -> AsyncIterator[bytes]:
        while (event := await events.get()) is not None:
            yield (json.dumps(event) + "\n").encode()
        await task

    return StreamingResponse(stream(), media_type="application/x-ndjson")


async def hardware_warnings(gw: GatewayState, spec: AppSpec) -> list[str]:
    """One line per GPU function of ``spec`` whose pool no live worker names (from the
    heartbeats): its requests wait for such a worker, or run on a ``*`` worker without that
    GPU (each then logs so)."""
    live = await gw.broker.workers.live()
    named = {pool for _, doc in live for pool in doc["pools"]}
    anywhere = [wid for wid, doc in live if keys.ALL_POOLS in doc["pools"]]
    out = []
    for fn in spec.functions:
        if not fn.gpu or fn.pool in named:
            continue
        then = (
            f"'*' worker(s) {', '.join(sorted(anywhere))} take its requests without that GPU"
            if anywhere
            else "its requests wait in the queue until one joins"
        )
        out.append(
            f"function {fn.name!r} asks for gpu={fn.gpu!r}, but no live worker serves pool "
            f"{fn.pool}: {then}"
        )
    return out


@answers(bodies.VisibilitySet)
@accepts(bodies.AppVisibility)
async def set_visibility(request: Request, body: bodies.AppVisibility) -> Response:
    """Who may call the app (``visibility``, ``tenants``) and whether those callers see its
    logs and full errors (``caller_logs``); a body with only ``caller_logs`` leaves the
    visibility as it is."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    caller_logs = body.caller_logs
    if body.visibility is not None:
        app, names = await share(gw, tenant, app, body.visibility, body.tenants)
    elif caller_logs is None:
        raise InvalidRequestError("send visibility (and tenants) and/or caller_logs")
    else:
        names = await asyncio.to_thread(gw.registry.shared_with, app)
    if caller_logs is not None:
        app = await asyncio.to_thread(gw.registry.set_caller_logs, app, caller_logs)
        await alias_moved(gw, tenant.name, app.name)
    return JSONResponse(
        {
            "app": app.name,
            "visibility": app.visibility,
            "shared_with": names,
            "caller_logs": app.caller_logs,
        }
    )


@answers(bodies.LimitSet)
@accepts(bodies.AppLimit)
async def set_app_limits(request: Request, body: bodies.AppLimit) -> Response:
    """Cap the app's running requests across the platform (0: no cap)."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    app = await asyncio.to_thread(gw.registry.set_app_limit, app, body.max_inflight)
    await alias_moved(gw, tenant.name, app.name)
    return JSONResponse({"app": app.name, "max_inflight": app.max_inflight})


@answers(bodies.TenantSet)
@accepts(bodies.TenantChange)
async def set_tenant(request: Request, body: bodies.TenantChange) -> Response:
    """Change a tenant's tier and/or in-flight cap (an admin tenant only)."""
    gw = gateway(request)
    caller = auth.caller(request)
    if not caller.admin:
        raise PermissionDeniedError("only an admin tenant may change tenants")
    tier = body.tier
    if tier is not None and tier not in gw.tiers:
        raise InvalidRequestError(f"unknown tier {tier!r}; tiers: {', '.join(gw.tiers)}")
    changed = await asyncio.to_thread(
        gw.registry.set_tenant_limits,
        request.path_params["name"],
        tier=tier,
        max_inflight=body.max_inflight,
    )
    gw.forget_tenant(changed.id)
    return JSONResponse(
        {"tenant": changed.name, "tier": changed.tier, "max_inflight": changed.max_inflight}
    )


# ---- secrets: the API shows names and when they were set, never a value ----


@answers(bodies.Secrets)
async def list_secrets(request: Request) -> Response:
    """The tenant's secrets: names and when each was set, never a value."""
    gw = gateway(request)
    names = await asyncio.to_thread(gw.registry.secret_names, auth.caller(request).id)
    return JSONResponse({"secrets": [{"name": n, "updated_at": at} for n, at in names]})


@answers(bodies.SecretView)
@accepts(bodies.SecretValue, limit=vault.MAX_VALUE_BYTES * 2)
async def set_secret(request: Request, body: bodies.SecretValue) -> Response:
    """``PUT /secrets/{name}`` ``{"value": "..."}``: sealed before it is stored."""
    gw = gateway(request)
    name = vault.check_name(request.path_params["name"])
    sealed = vault.Vault(gw.settings.secrets_key).seal(body.value)
    at = await asyncio.to_thread(gw.registry.set_secret, auth.caller(request).id, name, sealed)
    return JSONResponse({"name": name, "updated_at": at})


@answers(bodies.SecretDeleted)
async def delete_secret(request: Request) -> Response:
    """Delete one of the tenant's secrets."""
    gw = gateway(request)
    name = vault.check_name(request.path_params["name"])
    if not await asyncio.to_thread(gw.registry.delete_secret, auth.caller(request).id, name):
        raise NotFoundError(f"secret {name} not found")
    return JSONResponse({"name": name, "deleted": True})
