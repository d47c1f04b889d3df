"""``GET /{owner}/{app}[@alias]/openapi.json`` on a running platform: the document of the
revision the alias names, good enough to call the app from (a generated client would), and
not found for anyone who may not call it."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from tests.e2e.platform import APPS, Platform

pytestmark = pytest.mark.timeout(180)


def test_an_apps_document_describes_and_calls_its_endpoints(platform: Platform) -> None:
    rev = str(platform.deploy(APPS / "echo" / "app.py", alias="docs")["revision"])
    with platform.http() as http:
        doc = http.get("/local/echo@docs/openapi.json")
        assert doc.status_code == 200, doc.text
        body = doc.json()
        validate(body)
        assert body["info"]["version"] == rev == body["x-klieg-revision"]
        op = body["paths"]["/local/echo@docs"]["post"]
        given = op["requestBody"]["content"]["application/json"]["schema"]
        assert given["required"] == ["text"] and given["properties"]["text"]["maxLength"]
        answer = http.post("/local/echo@docs", json={"text": "from the document"})
        assert answer.json()["text"] == "from the document"
        for path in ("/local/echo@nope/openapi.json", "/local/missing/openapi.json"):
            gone = http.get(path)
            assert (gone.status_code, gone.json()["error_type"]) == (404, "NotFoundError")
    with platform.admin() as admin:
        stranger = str(admin.create_key(tenant="doc-stranger")["key"])
    with platform.http(stranger) as http:
        hidden = http.get("/local/echo/openapi.json")
        assert hidden.status_code == 404 and "properties" not in hidden.text
    with platform.http("") as http:
        assert http.get("/local/echo/openapi.json").status_code == 401
