"""Admin routes for workflows, scoped to the caller's tenant.

A workflow ``w`` of tenant T is T's app ``workflows/w`` (``registry.workflow_app_name``); each
revision's spec is ``{"kind": "workflow", "document": ...}`` with empty code, env, python and lock,
so aliases, their history, rollback and visibility work exactly as for apps. Revision ids are
content-derived from the owner, the name and the document, so storing the same document again
is a no-op.

GET  /workflows                          the caller's workflows
PUT  /workflows/{name}                   JSON {document: object or YAML/JSON text, alias}
GET  /workflows/{name}                   aliases and revisions (newest first) with documents
PUT  /workflows/{name}/aliases/{alias}   JSON {revision: id or alias}
POST /workflows/{name}/rollback          JSON {alias} (or ?alias=); moves the alias back one step
PUT  /workflows/{name}/visibility        JSON {visibility, tenants}
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import NotFoundError, ValidationError
from klieg.workflow import WorkflowDoc, load_workflow
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.admin import (
    ALIAS_QUERY,
    alias_moved,
    alias_name,
    point_alias,
    roll_back,
    share,
)
from klieg_platform.gateway.contract import accepts, answers, query
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.registry import (
    WORKFLOW_PREFIX,
    AppRecord,
    Registry,
    Revision,
    Tenant,
    workflow_app_name,
)
from klieg_platform.workflows.store import WORKFLOW_KIND, revision_id

MAX_WORKFLOW_BYTES = 1024 * 1024


async def _workflow(gw: GatewayState, tenant: Tenant, name: str) -> AppRecord:
    app = await asyncio.to_thread(gw.registry.get_app, tenant.name, workflow_app_name(name))
    if app is None:
        raise NotFoundError(f"workflow {tenant.name}/{name} not found")
    return app


def _check_apps(registry: Registry, doc: WorkflowDoc, caller: Tenant) -> None:
    """Each node's app exists and the caller may call it; 422 naming the node otherwise."""
    for node_id, node in doc.nodes.items():
        owner, app_name, _, _ = node.target()
        app = registry.get_app(owner, app_name)
        if app is None or not registry.can_call(app, caller):
            raise ValidationError(f"node {node_id!r}: app {owner}/{app_name} not found")


@answers(bodies.Workflows)
async def list_workflows(request: Request) -> Response:
    """The caller's workflows."""
    gw = gateway(request)
    tenant = auth.caller(request)

    def load() -> list[dict[str, Any]]:
        return [
            {
                "name": app.name.removeprefix(WORKFLOW_PREFIX),
                "owner": app.owner,
                "aliases": gw.registry.list_aliases(app),
                "revisions": len(gw.registry.list_revisions(app)),
                "visibility": app.visibility,
                "created_at": app.created_at,
            }
            for app in gw.registry.list_apps(tenant.id, workflows=True)
        ]

    return JSONResponse({"workflows": await asyncio.to_thread(load)})


@answers(bodies.WorkflowStored)
@accepts(bodies.WorkflowPut, limit=MAX_WORKFLOW_BYTES)
async def put_workflow(request: Request, body: bodies.WorkflowPut) -> Response:
    """Store a workflow document as a new revision and point an alias (``latest``) at it."""
    gw = gateway(request)
    tenant = auth.caller(request)
    name = request.path_params["name"]
    stored_name = workflow_app_name(name)
    alias = alias_name(body.alias or "latest")
    doc = load_workflow(body.document)
    doc = doc.model_copy(update={"name": name})
    rid = revision_id(tenant.name, name, doc)

    def store() -> tuple[Revision, bool, str | None]:
        _check_apps(gw.registry, doc, tenant)
        record = gw.registry.ensure_workflow_app(tenant.id, name)
        spec = {"kind": WORKFLOW_KIND, "document": doc.to_dict()}
        revision, created = gw.registry.put_revision(record, rid, spec, "", "", "", "")
        previous = gw.registry.set_alias(record, alias, revision.id)
        return revision, created, previous

    revision, created, previous = await asyncio.to_thread(store)
    await alias_moved(gw, tenant.name, stored_name)
    return JSONResponse(
        {
            "name": name,
            "owner": tenant.name,
            "revision": revision.id,
            "alias": alias,
            "created": created,
            "previous": previous,
        }
    )


@answers(bodies.WorkflowView)
async def get_workflow(request: Request) -> Response:
    """A workflow's aliases and revisions (newest first) with their documents."""
    gw = gateway(request)
    tenant = auth.caller(request)
    name = request.path_params["name"]
    app = await _workflow(gw, tenant, name)

    def load() -> dict[str, Any]:
        aliases = gw.registry.list_aliases(app)
        revisions = [
            {
                "id": rev.id,
                "created_at": rev.created_at,
                "aliases": sorted(a for a, r in aliases.items() if r == rev.id),
                "document": rev.spec.get("document"),
            }
            for rev in gw.registry.list_revisions(app)
        ]
        shared = gw.registry.shared_with(app) if app.visibility == "shared" else []
        return {
            "name": name,
            "owner": app.owner,
            "visibility": app.visibility,
            "shared_with": shared,
            "aliases": aliases,
            "revisions": revisions,
        }

    return JSONResponse(await asyncio.to_thread(load))


@answers(bodies.WorkflowAliasMoved)
@accepts(bodies.AliasTarget)
async def set_workflow_alias(request: Request, body: bodies.AliasTarget) -> Response:
    """Point a workflow's alias at one of its revisions."""
    gw = gateway(request)
    tenant = auth.caller(request)
    name = request.path_params["name"]
    app = await _workflow(gw, tenant, name)
    alias = alias_name(request.path_params["alias"])
    ref = body.revision
    label = f"workflow {tenant.name}/{name}"
    revision, previous = await point_alias(gw, tenant, app, alias, ref, label)
    return JSONResponse({"name": name, "alias": alias, "revision": revision, "previous": previous})


@answers(bodies.WorkflowAliasMoved)
@query(alias=ALIAS_QUERY)
@accepts(bodies.WorkflowAlias)
async def rollback_workflow(request: Request, body: bodies.WorkflowAlias) -> Response:
    """Move a workflow's alias (the body's or ``?alias=``, default ``latest``) back one step."""
    gw = gateway(request)
    tenant = auth.caller(request)
    name = request.path_params["name"]
    app = await _workflow(gw, tenant, name)
    alias = alias_name(body.alias or request.query_params.get("alias", "latest"))
    revision, previous = await roll_back(gw, tenant, app, alias)
    return JSONResponse({"name": name, "alias": alias, "revision": revision, "previous": previous})


@answers(bodies.WorkflowShared)
@accepts(bodies.Sharing)
async def set_workflow_visibility(request: Request, body: bodies.Sharing) -> Response:
    """Who may call the workflow."""
    gw = gateway(request)
    tenant = auth.caller(request)
    name = request.path_params["name"]
    app = await _workflow(gw, tenant, name)
    app, names = await share(gw, tenant, app, body.visibility, body.tenants)
    return JSONResponse({"name": name, "visibility": app.visibility, "shared_with": names})
