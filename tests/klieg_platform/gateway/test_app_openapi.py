"""An app's OpenAPI document, built from the specs of the shipped apps: a valid OpenAPI 3.1
document whose paths are the app's sync, stream and queue forms, whose schemas are the
endpoints' own (refs resolved into components) and whose media objects are marked."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from klieg.admin import load_app
from klieg.types import AppSpec
from klieg_platform.gateway.openapi import app_openapi, is_media
from tests.e2e.platform import APPS


def spec_of(name: str) -> AppSpec:
    app, _, _ = load_app(APPS / name / "app.py")
    return AppSpec.model_validate(app.spec().model_dump())


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


@pytest.mark.parametrize("name", ["echo", "digits", "imagetools", "markdown", "ocr", "video"])
def test_every_shipped_app_has_a_valid_document(name: str) -> None:
    spec = spec_of(name)
    doc = app_openapi("alice", f"{name}@prod", spec, "rev1")
    validate(doc)
    assert doc["info"] == {"title": f"alice/{name}", "version": "rev1"}
    endpoints = [(fn, ep) for fn in spec.functions for ep in fn.endpoints]
    for fn, ep in endpoints:
        suffix = "" if ep.path in ("", "/") else "/" + ep.path.strip("/")
        op = doc["paths"][f"/alice/{name}@prod{suffix}"]["post"]
        assert op["x-klieg-function"] == fn.name and op["x-klieg-batched"] == ep.batched
        assert f"/queue/alice/{name}@prod{suffix}" in doc["paths"]
        assert (f"/alice/{name}@prod{suffix}/stream" in doc["paths"]) == ep.streaming
        given = op["requestBody"]["content"]["application/json"]["schema"]
        if ep.input_schema is not None:
            assert set(resolve(doc, given)["properties"]) == set(ep.input_schema["properties"])
    assert "/queue/alice/" + name + "/requests/{request_id}/status" in doc["paths"]
    assert "$defs" not in str(doc)


def test_media_fields_are_marked() -> None:
    doc = app_openapi("alice", "digits", spec_of("digits"), "r")
    out = doc["paths"]["/alice/digits"]["post"]["responses"]["200"]["content"]
    schema = resolve(doc, out["application/json"]["schema"])
    image = resolve(doc, schema["properties"]["image"])
    assert image["x-klieg-media"] is True and is_media(image)
    listed = schema["properties"]["digits"]["items"]
    assert resolve(doc, listed)["x-klieg-media"] is True
    given = resolve(doc, doc["paths"]["/alice/digits"]["post"]["requestBody"]["content"][
        "application/json"]["schema"])  # fmt: skip
    assert given["properties"]["steps"]["maximum"] == 200
    assert not any(is_media(p) for p in given["properties"].values())


def test_a_name_two_endpoints_use_differently_is_kept_apart() -> None:
    spec = spec_of("echo")
    fn = spec.functions[0]
    first = {"$defs": {"Item": {"type": "string"}}, "$ref": "#/$defs/Item"}
    second = {"$defs": {"Item": {"type": "integer"}}, "$ref": "#/$defs/Item"}
    eps = [
        fn.endpoints[0].model_copy(update={"path": "/a", "input_schema": first}),
        fn.endpoints[0].model_copy(update={"path": "/b", "input_schema": second}),
    ]
    two = spec.model_copy(update={"functions": [fn.model_copy(update={"endpoints": eps})]})
    doc = app_openapi("alice", "echo", two, "r")
    validate(doc)
    a = doc["paths"]["/alice/echo/a"]["post"]["requestBody"]["content"]["application/json"]
    b = doc["paths"]["/alice/echo/b"]["post"]["requestBody"]["content"]["application/json"]
    assert resolve(doc, a["schema"]) == {"type": "string"}
    assert resolve(doc, b["schema"]) == {"type": "integer"}
