"""OpenAPI 3.1 documents: ``GET /openapi.json``, the platform API itself, described from
``ROUTES``; and ``GET /{owner}/{app}[@ref]/openapi.json``, one app's endpoints (``app_openapi``).

Every route is an operation: its path parameters (no control characters: ``auth.Authenticate``
refuses them), its query parameters, the access it needs (``x-klieg-access`` and the ``Key``
security scheme), and what its handler declared (``contract.py``): the body it takes, from the
model that validates it (``bodies.py``), and each success answer's document; every error is
``{"detail", "error_type"}`` (``gateway/errors.py``), so clients and fuzzers can check each
answer against it. In the platform document ``/{owner}/{app}`` takes any JSON value; an app's own
document gives each endpoint's input and output schemas.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import Route

from klieg_platform.gateway import bodies
from klieg_platform.gateway.auth import Access, Authenticate
from klieg_platform.gateway.contract import Contract, contract_of

ERROR = {
    "type": "object",
    "required": ["detail", "error_type"],
    "properties": {"detail": {}, "error_type": {"type": "string"}},
}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
SEGMENT = {"type": "string", "minLength": 1, "pattern": r"^[^\x00-\x1f\x7f-\x9f]*$"}
"""A path parameter: any text without control characters (``Authenticate`` refuses those)."""
_REFS = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _operation(
    method: str, path: str, route: Route, access: Access, found: Contract, refs: dict[Any, Any]
) -> dict[str, Any]:
    doc = (getattr(route.endpoint, "__doc__", None) or "").strip().splitlines()
    name = re.sub(r"\W+", "_", path).strip("_") or "root"
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{name}",
        "summary": doc[0] if doc else f"{method} {path}",
        "x-klieg-access": access.value,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": SEGMENT}
            for name in _PARAM.findall(route.path)
        ],
        "responses": {
            "4XX": _json("a refused request (422: the body, naming the field)", _ERROR_REF),
            "5XX": _json(
                "the platform could not serve it (503: retry after Retry-After)", _ERROR_REF
            ),
        },
    }
    if access is not Access.PUBLIC:
        op["security"] = [{"key": []}] if access is not Access.BOOTSTRAP else [{"key": []}, {}]
    op["parameters"] += [
        {"name": n, "in": "query", "schema": dict(s)} for n, s in found.queries.items()
    ]
    if found.body is not None:
        schema = refs[(found.body, "validation")]
        op["requestBody"] = {"required": False, "content": {found.media: {"schema": schema}}}
    elif found.schema is not None:
        body = {
            "description": found.about,
            "content": {found.media: {"schema": dict(found.schema)}},
        }
        op["requestBody"] = {"required": False, **body}
    for status, reply in sorted(found.replies.items()):
        if isinstance(reply, str):
            media: dict[str, Any] = {m: {} for m in reply.split(", ")}  # one or several
            op["responses"][str(status)] = {"description": reply, "content": media}
        else:
            op["responses"][str(status)] = _json(_first_line(reply), refs[(reply, "validation")])
    return op


def _first_line(model: type[BaseModel]) -> str:
    return (model.__doc__ or "done").strip().splitlines()[0]


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def platform_openapi(routes: list[Any], version: str) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (``app.ROUTES``); every route's handler must declare
    its contract (``contract.py``)."""
    found: list[tuple[Route, str, Access, Contract]] = []
    models: set[type[BaseModel]] = set()
    for route in routes:
        assert isinstance(route, Route) and isinstance(route.app, Authenticate), route
        declared = contract_of(route.endpoint)
        assert declared is not None and declared.replies, f"{route.path}: no contract"
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((route, method, route.app.access, declared))
        for model in (declared.body, *declared.replies.values()):
            if isinstance(model, type) and issubclass(model, BaseModel):
                models.add(model)
    refs, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=_REFS,
    )
    paths: dict[str, dict[str, Any]] = {}
    for route, method, access, declared in found:
        path = _PARAM.sub(r"{\1}", route.path)
        paths.setdefault(path, {})[method.lower()] = _operation(
            method, path, route, access, declared, refs
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Klieg platform API", "version": version},
        "paths": paths,
        "components": {
            "schemas": {**defs.get("$defs", {}), "Error": ERROR},
            "securitySchemes": {
                "key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Key <key_id>:<secret>",
                }
            },
        },
    }


# ---- one app: GET /{owner}/{app}[@ref]/openapi.json -------------------------------------------

SUBMITTED = bodies.Submitted.model_json_schema()
STATUS = bodies.RequestStatus.model_json_schema()
"""The queue's submit and status answers (the models of ``bodies.py``), for each app's
document."""


def is_media(schema: dict[str, Any]) -> bool:
    """fal's rule: an object with ``url`` and ``content_type`` is a media file."""
    props = schema.get("properties") or {}
    return schema.get("type", "object") == "object" and {"url", "content_type"} <= props.keys()


def _lift(schema: dict[str, Any] | None, defs: dict[str, Any], rename: dict[str, str]) -> Any:
    """``schema`` with its ``$defs`` moved into ``defs`` (components), refs pointed there and
    media objects marked ``x-klieg-media``; names taken by a different schema get a suffix."""
    if schema is None:
        return {}
    local = dict(schema.get("$defs") or {})
    for name, sub in local.items():
        target, n = name, 1
        while target in defs and defs[target] != sub:
            n += 1
            target = f"{name}{n}"
        rename[name] = target

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items() if k != "$defs"}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = "#/components/schemas/" + rename.get(ref[8:], ref[8:])
        if is_media(out):
            out["x-klieg-media"] = True
        return out

    for name, sub in local.items():
        defs[rename[name]] = walk(sub)
    return walk(schema)


def app_openapi(owner: str, app_ref: str, spec: Any, revision: str) -> dict[str, Any]:
    """The OpenAPI document of one app revision (``spec``: its ``AppSpec``): per endpoint the
    sync call, its ``/stream`` form where it streams, and the queue's submit, status and result,
    with the endpoint's input and output schemas; media objects carry ``x-klieg-media``."""
    paths: dict[str, dict[str, Any]] = {}
    defs: dict[str, Any] = {}
    root = f"/{owner}/{app_ref}"
    errors = {
        "4XX": _json("a refused request (422: the input, naming the field)", ERROR),
        "5XX": _json("the platform could not serve it (503: retry after Retry-After)", ERROR),
    }
    base = app_ref.partition("@")[0]
    for fn in spec.functions:
        for ep in fn.endpoints:
            suffix = "" if ep.path in ("", "/") else "/" + ep.path.strip("/")
            name = re.sub(r"\W+", "_", suffix).strip("_") or "root"
            given = _lift(ep.input_schema, defs, {})
            answer = _lift(ep.output_schema, defs, {})
            body = {"required": True, "content": {"application/json": {"schema": given}}}
            common = {"security": [{"key": []}], "x-klieg-function": fn.name}
            paths[f"{root}{suffix}"] = {"post": {
                **common, "operationId": f"run_{name}", "summary": f"call {suffix or '/'}",
                "requestBody": body,
                "responses": {"200": _json("the result", answer), **errors},
                "x-klieg-batched": ep.batched, "x-klieg-streaming": ep.streaming,
            }}  # fmt: skip
            if ep.streaming:
                paths[f"{root}{suffix}/stream"] = {"post": {
                    **common, "operationId": f"stream_{name}", "requestBody": body,
                    "summary": f"call {suffix or '/'}, its items as server-sent events",
                    "responses": {"200": {"description": "text/event-stream"}, **errors},
                }}  # fmt: skip
            paths[f"/queue{root}{suffix}"] = {"post": {
                **common, "operationId": f"submit_{name}", "summary": f"queue {suffix or '/'}",
                "requestBody": body,
                "responses": {"200": _json("queued", _lift(SUBMITTED, defs, {})), **errors},
            }}  # fmt: skip
    rid = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    requests = f"/queue/{owner}/{base}/requests/{{request_id}}"
    paths[f"{requests}/status"] = {"get": {
        "operationId": "status", "security": [{"key": []}], "parameters": [rid],
        "responses": {"2XX": _json("the status", _lift(STATUS, defs, {})), **errors},
    }}  # fmt: skip
    paths[requests] = {"get": {
        "operationId": "result", "security": [{"key": []}], "parameters": [rid],
        "responses": {"200": _json("the result of its endpoint", {}), **errors},
    }}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{owner}/{base}", "version": revision},
        "x-klieg-revision": revision,
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "Authorization",
                        "description": "Key <key_id>:<secret>"},
            },
        },
    }  # fmt: skip
