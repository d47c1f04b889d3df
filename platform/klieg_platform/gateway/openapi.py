"""``GET /openapi.json``: the platform API itself, described from ``ROUTES`` (OpenAPI 3.1).

Every route is an operation: its path parameters, the access it needs (``x-klieg-access`` and the
``Key`` security scheme), a JSON object body where it takes one (bytes for uploads), its success
answer, and every error as ``{"detail", "error_type"}`` (``gateway/errors.py``), so clients and
fuzzers can check each answer against it. App endpoints are described per app elsewhere; here
``/{owner}/{app}`` takes any JSON object.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Route

from klieg_platform.gateway.auth import Access, Authenticate

ERROR = {
    "type": "object",
    "required": ["detail", "error_type"],
    "properties": {"detail": {}, "error_type": {"type": "string"}},
}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
_QUERY: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {
    ("POST", "/apps/{name}/deploy"): [("alias", {"type": "string"})],
    ("GET", "/requests"): [
        ("app", {"type": "string"}),
        ("status", {"type": "string"}),
        ("since", {"type": "string"}),
        ("limit", {"type": "string"}),
        ("after", {"type": "string"}),
    ],
    ("GET", "/requests/{request_id}/status"): [
        ("logs", {"type": "string", "enum": ["0", "1"]}),
        ("wait_s", {"type": "number", "minimum": 0}),
    ],
}
_CREATED = {("POST", "/keys")}
_STREAMS = ("/stream",)


def _operation(method: str, path: str, route: Route, access: Access) -> dict[str, Any]:
    doc = (getattr(route.endpoint, "__doc__", None) or "").strip().splitlines()
    name = re.sub(r"\W+", "_", path).strip("_") or "root"
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{name}",
        "summary": doc[0] if doc else f"{method} {path}",
        "x-klieg-access": access.value,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(route.path)
        ],
        "responses": {
            "4XX": _json("a refused request", ERROR),
            "5XX": _json("the platform could not serve it (503: retry after Retry-After)", ERROR),
        },
    }
    if access is not Access.PUBLIC:
        op["security"] = [{"key": []}] if access is not Access.BOOTSTRAP else [{"key": []}, {}]
    query = _QUERY.get((method, path.replace("/queue/{owner}/{app}/requests", "/requests")), [])
    op["parameters"] += [{"name": n, "in": "query", "schema": s} for n, s in query]
    if method in ("POST", "PUT"):
        content: dict[str, Any]
        if path == "/files/upload":
            content = {"application/octet-stream": {"schema": {}}}
        else:
            content = {"application/json": {"schema": {"type": "object"}}}
        op["requestBody"] = {"required": False, "content": content}
    ok = "201" if (method, path) in _CREATED else "2XX"
    if path.endswith(_STREAMS) or path.startswith("/files/"):
        op["responses"][ok] = {"description": "a stream or a file"}
    else:
        op["responses"][ok] = _json("done", {})
    return op


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def platform_openapi(routes: list[Any], version: str) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (``app.ROUTES``)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        assert isinstance(route, Route) and isinstance(route.app, Authenticate), route
        for method in sorted((route.methods or set()) - {"HEAD"}):
            path = _PARAM.sub(r"{\1}", route.path)
            paths.setdefault(path, {})[method.lower()] = _operation(
                method, path, route, route.app.access
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Klieg platform API", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Key <key_id>:<secret>",
                }
            }
        },
    }
