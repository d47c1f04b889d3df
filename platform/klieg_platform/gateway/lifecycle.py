"""App lifecycle routes: scaling a live app without a redeploy, deleting an app, pruning its
revisions. All scoped to the caller's tenant (``MANAGE``).

GET    /apps/{name}/scale        its scale overrides and each function's effective scaling
PUT    /apps/{name}/scale        JSON {function?, keep_alive?, min_concurrency?,
                                 max_concurrency?, concurrency_buffer?} (null: stop overriding
                                 it), or {function?, reset: true} (drop the overrides)
DELETE /apps/{name}              aliases gone, new requests 404, every revision retired
POST   /apps/{name}/prune?keep=N retire the revisions no alias points to, past the newest N

A change is published on the alias channel, so every gateway and worker re-reads the app at
once (workers start or stop runners within a housekeeping round, gateways drop their routes).
Retired revisions serve the requests already queued or running; ``collector.py`` drops them,
with their code and envs when nothing else uses them, once nothing needs them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import InvalidRequestError, NotFoundError
from klieg.types import AppSpec
from klieg_platform import scaling
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.admin import alias_moved, owned_app
from klieg_platform.gateway.contract import accepts, answers, query
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.registry import AppRecord, Revision


def _current(gw: GatewayState, app: AppRecord) -> tuple[list[Revision], Revision | None]:
    """The app's aliased revisions, and the one ``latest`` names (else the newest)."""
    aliases = gw.registry.list_aliases(app)
    revisions = gw.registry.list_revisions(app)
    aliased = [rev for rev in revisions if rev.id in aliases.values()]
    shown = next((rev for rev in revisions if rev.id == aliases.get("latest")), None)
    return aliased, shown or (revisions[0] if revisions else None)


def _scale_view(
    app: AppRecord, overrides: list[scaling.ScaleOverride], shown: Revision | None
) -> dict[str, Any]:
    functions = []
    if shown is not None:
        spec = scaling.effective_app(AppSpec.model_validate(shown.spec), overrides)
        functions = [scaling.scaling_view(fn) for fn in spec.functions]
    return {
        "app": app.name,
        "revision": shown.id if shown else None,
        "overrides": [scaling.override_view(o) for o in overrides],
        "functions": functions,
    }


@answers(bodies.ScaleView)
async def get_scale(request: Request) -> Response:
    """The app's scale overrides and each function's effective scaling."""
    gw = gateway(request)
    app = await owned_app(gw, auth.caller(request), request.path_params["name"])

    def load() -> dict[str, Any]:
        overrides = gw.registry.scale_overrides(app).get(app.id, [])
        return _scale_view(app, overrides, _current(gw, app)[1])

    return JSONResponse(await asyncio.to_thread(load))


@answers(bodies.ScaleView)
@accepts(bodies.ScaleChange)
async def set_scale(request: Request, body: bodies.ScaleChange) -> Response:
    """Override settings (a null value stops overriding it) or, with ``reset``, drop the
    overrides of the app or of one function. The result is checked against every aliased
    revision first: a function left with ``min_concurrency`` above ``max_concurrency`` is a
    400 and nothing changes."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    function = body.function or ""
    reset = body.reset
    checked = body.settings()
    if reset and checked:
        raise InvalidRequestError("reset drops overrides; send settings in another request")
    if not reset and not checked:
        raise InvalidRequestError(f"nothing to change: send one of {', '.join(scaling.SETTINGS)}")

    def change() -> dict[str, Any]:
        aliased, shown = _current(gw, app)
        names = {fn["name"] for rev in gw.registry.list_revisions(app)
                 for fn in rev.spec.get("functions", [])}  # fmt: skip
        if function and function not in names:
            raise NotFoundError(f"app {tenant.name}/{app.name} has no function {function!r}")
        if reset:
            gw.registry.reset_scaling(app, function or None)
        else:
            before = gw.registry.scale_overrides(app).get(app.id, [])
            proposed = [o for o in before if o.function != function]
            mine = next((o for o in before if o.function == function), None)
            merged = {**(mine.values() if mine else {}), **checked}
            settings: dict[str, Any] = {k: v for k, v in merged.items() if v is not None}
            proposed.append(scaling.ScaleOverride(function, **settings))
            for rev in aliased:
                scaling.check_effective(AppSpec.model_validate(rev.spec), proposed)
            gw.registry.set_scaling(app, function, checked)
        return _scale_view(app, gw.registry.scale_overrides(app).get(app.id, []), shown)

    out = await asyncio.to_thread(change)
    await alias_moved(gw, tenant.name, app.name)
    return JSONResponse(out)


DEFAULT_KEEP = 5
"""Revisions a prune keeps besides the aliased ones, newest first, unless told."""


@answers(bodies.AppDeleted)
async def delete_app(request: Request) -> Response:
    """Delete the app: see the module's contract. Requests already queued or running finish."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    retired = await asyncio.to_thread(gw.registry.delete_app, app)
    await alias_moved(gw, tenant.name, app.name)
    return JSONResponse({"app": app.name, "deleted": True, "retired": retired})


@answers(bodies.Pruned)
@query(keep={"type": "integer", "minimum": 0, "default": DEFAULT_KEEP})
async def prune_revisions(request: Request) -> Response:
    """Retire the app's revisions that no alias points to and are not among the newest
    ``keep`` (default ``DEFAULT_KEEP``); the ids retired, and those left."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    raw = request.query_params.get("keep", str(DEFAULT_KEEP))
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequestError(f"keep must be a whole number >= 0, got {raw!r}")
    retired = await asyncio.to_thread(gw.registry.prune_revisions, app, int(raw))
    await alias_moved(gw, tenant.name, app.name)
    left = await asyncio.to_thread(gw.registry.list_revisions, app)
    return JSONResponse({"app": app.name, "retired": retired, "kept": [rev.id for rev in left]})
