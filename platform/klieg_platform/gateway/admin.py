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
import binascii
import functools
import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pydantic
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
from klieg_platform.gateway import auth
from klieg_platform.gateway.intake import read_json_object
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.registry import SCOPES, ApiKey, AppRecord, Revision, Tenant

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
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_DEPLOY_BYTES = 128 * 1024 * 1024


async def create_key(request: Request) -> Response:
    gw = gateway(request)
    data = await read_json_object(request, 64 * 1024)
    caller = auth.optional_caller(request)
    used = auth.caller_key(request)
    if caller is not None and (used is None or used.scope != "admin"):
        raise PermissionDeniedError("creating keys needs an 'admin' key")
    wanted = data.get("tenant")
    tier = str(data.get("tier") or gw.settings.default_tier)
    if tier not in gw.tiers:
        raise InvalidRequestError(f"unknown tier {tier!r}; tiers: {', '.join(gw.tiers)}")
    if caller is None:
        if await asyncio.to_thread(gw.registry.count_tenants) > 0:
            raise AuthenticationError("creating a key needs an existing key (KLIEG_KEY)")
        name = str(wanted or "local")
        _check_tenant_name(name)
        tenant = await asyncio.to_thread(gw.registry.create_tenant, name, "enterprise", True)
    elif wanted in (None, caller.name):
        tenant = caller
    else:
        if not caller.admin:
            raise PermissionDeniedError("only an admin tenant may create other tenants")
        _check_tenant_name(str(wanted))
        found = await asyncio.to_thread(gw.registry.get_tenant, str(wanted))
        if found is None:
            found = await asyncio.to_thread(gw.registry.create_tenant, str(wanted), tier)
        tenant = found
    scope, expires_at = _key_terms(data)
    rate, burst = _rate_terms(data)
    key, secret = await asyncio.to_thread(
        functools.partial(
            gw.registry.create_key,
            tenant.id,
            data.get("label"),
            scope=scope,
            expires_at=expires_at,
            rate_per_s=rate,
            burst=burst,
        )
    )
    return JSONResponse(
        {**_key_view(key), "secret": secret, "key": f"{key.id}:{secret}", "tenant": tenant.name},
        201,
    )


MAX_KEY_LIFETIME_S = 10 * 365 * 24 * 3600


def _key_terms(data: dict[str, Any]) -> tuple[str, float | None]:
    """The new key's scope (default ``admin``) and expiry (``expires_in_s`` from now)."""
    scope = data.get("scope", "admin")
    if scope not in SCOPES:
        raise InvalidRequestError(f"unknown key scope {scope!r}; scopes: {', '.join(SCOPES)}")
    ttl = data.get("expires_in_s")
    if ttl is None:
        return scope, None
    if not _number(ttl) or not 0 < ttl <= MAX_KEY_LIFETIME_S:
        raise InvalidRequestError(
            f"expires_in_s must be a number of seconds in (0, {MAX_KEY_LIFETIME_S}]"
        )
    return scope, time.time() + float(ttl)


MAX_RATE_PER_S = 100_000


def _rate_terms(data: dict[str, Any]) -> tuple[float, int]:
    """``rate_per_s`` (0: none) and ``burst`` (default: one second's worth, at least 1)."""
    rate, burst = data.get("rate_per_s", 0), data.get("burst")
    if not _number(rate) or not 0 <= rate <= MAX_RATE_PER_S:
        raise InvalidRequestError(f"rate_per_s must be a number in [0, {MAX_RATE_PER_S}]")
    if burst is None:
        return float(rate), max(1, math.ceil(rate)) if rate else 0
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_RATE_PER_S:
        raise InvalidRequestError(f"burst must be an integer in [1, {MAX_RATE_PER_S}]")
    return float(rate), burst


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


async def list_keys(request: Request) -> Response:
    """The caller's tenant's keys (``GET /keys``), revoked and expired ones marked."""
    gw = gateway(request)
    found = await asyncio.to_thread(gw.registry.list_keys, auth.caller(request).id)
    return JSONResponse({"keys": [_key_view(key) for key in found]})


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


async def list_apps(request: Request) -> Response:
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
    }


async def list_revisions(request: Request) -> Response:
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
    if not _ALIAS.match(value) or "@" in value:
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
    gw: GatewayState, tenant: Tenant, app: AppRecord, data: dict[str, Any]
) -> tuple[AppRecord, list[str]]:
    """Set who may call ``app`` from a ``{"visibility", "tenants"}`` body; (the app as it is
    now, the tenant names it is shared with)."""
    names = data.get("tenants") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationError(
            [{"loc": ["body", "tenants"], "msg": "a list of tenant names", "type": "list_type"}]
        )
    visibility = str(data.get("visibility") or "")
    app = await asyncio.to_thread(gw.registry.set_visibility, app, visibility, names)
    await alias_moved(gw, tenant.name, app.name)
    return app, names


async def set_alias(request: Request) -> Response:
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    alias = alias_name(request.path_params["alias"])
    ref = str((await read_json_object(request, 64 * 1024)).get("revision") or "")
    label = f"{tenant.name}/{app.name}"
    revision, previous = await point_alias(gw, tenant, app, alias, ref, label)
    return JSONResponse(
        {"app": app.name, "alias": alias, "revision": revision, "previous": previous}
    )


async def rollback(request: Request) -> Response:
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    alias = alias_name(request.query_params.get("alias", "latest"))
    revision, previous = await roll_back(gw, tenant, app, alias)
    return JSONResponse(
        {"app": app.name, "alias": alias, "revision": revision, "previous": previous}
    )


async def deploy_app(request: Request) -> Response:
    gw = gateway(request)
    tenant = auth.caller(request)
    alias = alias_name(request.query_params.get("alias", "latest"))
    reset_scale = request.query_params.get("reset_scale", "0") not in ("", "0", "false")
    spec, code = await read_deploy(request)
    return deploy_response(gw, tenant, spec, code, alias=alias, reset_scale=reset_scale)


async def read_deploy(request: Request) -> tuple[AppSpec, bytes]:
    """The ``{spec, archive}`` body of a deploy: the spec (naming the app of the URL) and the
    code archive's bytes."""
    data = await read_json_object(request, MAX_DEPLOY_BYTES)
    try:
        spec = AppSpec.model_validate(data.get("spec"))
        code = base64.b64decode(str(data.get("archive") or ""), validate=True)
    except (pydantic.ValidationError, binascii.Error) as exc:
        raise ValidationError(f"invalid deploy body: {exc}") from exc
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


def _caller_logs(data: dict[str, Any]) -> bool | None:
    """The body's ``caller_logs`` (a boolean), None when it has none."""
    value = data.get("caller_logs")
    if value is not None and not isinstance(value, bool):
        raise ValidationError(
            [{"loc": ["body", "caller_logs"], "msg": "true or false", "type": "bool_type"}]
        )
    return value


async def set_visibility(request: Request) -> Response:
    """Who may call the app (``visibility``, ``tenants``) and whether those callers see its
    logs and full errors (``caller_logs``); a body with only ``caller_logs`` leaves the
    visibility as it is."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    data = await read_json_object(request, 64 * 1024)
    caller_logs = _caller_logs(data)
    if "visibility" in data or caller_logs is None:
        app, names = await share(gw, tenant, app, data)
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


def _limit(data: dict[str, Any]) -> int:
    value = data.get("max_inflight")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(
            [{"loc": ["body", "max_inflight"], "msg": "a whole number >= 0", "type": "int_type"}]
        )
    return value


async def set_app_limits(request: Request) -> Response:
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    limit = _limit(await read_json_object(request, 64 * 1024))
    app = await asyncio.to_thread(gw.registry.set_app_limit, app, limit)
    await alias_moved(gw, tenant.name, app.name)
    return JSONResponse({"app": app.name, "max_inflight": app.max_inflight})


async def set_tenant(request: Request) -> Response:
    gw = gateway(request)
    caller = auth.caller(request)
    if not caller.admin:
        raise PermissionDeniedError("only an admin tenant may change tenants")
    data = await read_json_object(request, 64 * 1024)
    tier = data.get("tier")
    if tier is not None and str(tier) not in gw.tiers:
        raise InvalidRequestError(f"unknown tier {tier!r}; tiers: {', '.join(gw.tiers)}")
    limit = _limit(data) if "max_inflight" in data else None
    changed = await asyncio.to_thread(
        gw.registry.set_tenant_limits,
        request.path_params["name"],
        tier=None if tier is None else str(tier),
        max_inflight=limit,
    )
    gw.forget_tenant(changed.id)
    return JSONResponse(
        {"tenant": changed.name, "tier": changed.tier, "max_inflight": changed.max_inflight}
    )


# ---- secrets: the API shows names and when they were set, never a value ----


async def list_secrets(request: Request) -> Response:
    gw = gateway(request)
    names = await asyncio.to_thread(gw.registry.secret_names, auth.caller(request).id)
    return JSONResponse({"secrets": [{"name": n, "updated_at": at} for n, at in names]})


async def set_secret(request: Request) -> Response:
    """``PUT /secrets/{name}`` ``{"value": "..."}``: sealed before it is stored."""
    gw = gateway(request)
    name = vault.check_name(request.path_params["name"])
    data = await read_json_object(request, vault.MAX_VALUE_BYTES * 2)
    value = data.get("value")
    if not isinstance(value, str) or not value:
        raise InvalidRequestError('send the secret as {"value": "..."} (a non-empty string)')
    sealed = vault.Vault(gw.settings.secrets_key).seal(value)
    at = await asyncio.to_thread(gw.registry.set_secret, auth.caller(request).id, name, sealed)
    return JSONResponse({"name": name, "updated_at": at})


async def delete_secret(request: Request) -> Response:
    gw = gateway(request)
    name = vault.check_name(request.path_params["name"])
    if not await asyncio.to_thread(gw.registry.delete_secret, auth.caller(request).id, name):
        raise NotFoundError(f"secret {name} not found")
    return JSONResponse({"name": name, "deleted": True})
