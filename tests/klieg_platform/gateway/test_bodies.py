"""The management routes' bodies and paths, checked before anything runs: each bad value is a
typed 4xx naming the field (once a 500 each), on SQLite and on PostgreSQL, whose text holds no
NUL; every route declares what it takes and answers (``contract.py``), and ``GET /openapi.json``
says exactly that."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from klieg_platform.broker.limits import MIN_RATE_PER_S
from klieg_platform.gateway.app import ROUTES, _openapi
from klieg_platform.gateway.contract import contract_of
from klieg_platform.registry import MAX_INFLIGHT
from tests.klieg_platform.gateway.conftest import Gateway, serve_gateway
from tests.postgres import registry_url

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
def on_each_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    if request.param == "sqlite":
        yield request.getfixturevalue("gateway")
        return
    with contextlib.ExitStack() as stack:
        url = registry_url(request.param, tmp_path, stack, "klieg_bodies")
        yield stack.enter_context(serve_gateway(tmp_path, url))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def refusing(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One gateway per registry for the tests that only send what must be refused (nothing
    they send is written, so they share it)."""
    home = tmp_path_factory.mktemp("refusing")
    with contextlib.ExitStack() as stack:
        url = registry_url(request.param, home, stack, "klieg_bodies")
        yield stack.enter_context(serve_gateway(home, url))


def _send(gw: Gateway, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
    """``body`` as JSON (bytes as they are: Python's JSON, NaN and Infinity included)."""
    headers = {"Authorization": f"Key {key or gw.admin.key}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as http:
        if isinstance(body, bytes):
            return http.request(method, path, content=body)
        return http.request(method, path, json=body)


def _refused(response: httpx.Response, status: int, error_type: str, field: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type, body
    if field:
        assert body["detail"] and {tuple(e["loc"][:2]) for e in body["detail"]} == {("body", field)}


@pytest.mark.parametrize("label", [5, [1, "a"], {"a": 1}, True, "x" * 201, "tab\there"])
def test_a_key_label_that_is_no_short_line_of_text_is_a_422(gateway: Gateway, label: Any) -> None:
    _refused(_send(gateway, "POST", "/keys", {"label": label}), 422, "ValidationError", "label")


@pytest.mark.parametrize("cap", [2**63, 2**64, 2**31, MAX_INFLIGHT + 1, -1, 1.5, True, "3"])
def test_an_in_flight_cap_out_of_bounds_is_a_422(gateway: Gateway, cap: Any) -> None:
    for path in ("/tenants/other", "/apps/digits/limits"):
        _refused(_send(gateway, "PUT", path, {"max_inflight": cap}), 422, "ValidationError")
    assert _send(gateway, "PUT", "/apps/digits/limits", {"max_inflight": MAX_INFLIGHT}).json() == {
        "app": "digits",
        "max_inflight": MAX_INFLIGHT,
    }


@pytest.mark.parametrize("rate", [1e-300, MIN_RATE_PER_S / 2, -1, 1e6])
def test_a_rate_out_of_bounds_is_a_422(gateway: Gateway, rate: float) -> None:
    refused = _send(gateway, "POST", "/keys", {"rate_per_s": rate})
    _refused(refused, 422, "ValidationError", "rate_per_s")
    slowest = _send(gateway, "POST", "/keys", {"rate_per_s": MIN_RATE_PER_S})
    assert slowest.status_code == 201 and slowest.json()["burst"] == 1


def test_a_key_stored_with_a_tiny_rate_is_served_at_the_slowest(gateway: Gateway) -> None:
    """A key stored before the bounds, 1e-300/s: its first request is served, the next waits
    (429 with the wait a day-long refill gives), none is a 500."""
    local = gateway.registry.get_tenant("local")
    assert local is not None
    key, secret = gateway.registry.create_key(local.id, "old", rate_per_s=1e-300, burst=1)
    first = _send(gateway, "GET", "/apps", key=f"{key.id}:{secret}")
    assert first.status_code == 200, first.text
    second = _send(gateway, "GET", "/apps", key=f"{key.id}:{secret}")
    _refused(second, 429, "RateLimitedError")
    assert int(second.headers["retry-after"]) > 3600


NUL_PATHS = [
    ("POST", "/local%00/digits"),
    ("POST", "/local/dig%00its"),
    ("POST", "/local/digits@lat%00est"),
    ("POST", "/queue/local%00/digits"),
    ("POST", "/queue/local/digits%00/x"),
    ("GET", "/queue/local/digits/requests/ab%00/status"),
    ("GET", "/local/digits%00/openapi.json"),
    ("PUT", "/apps/digits%00/limits"),
    ("GET", "/apps/digits%00/revisions"),
    ("PUT", "/apps/digits/aliases/prod%00"),
    ("PUT", "/tenants/other%00"),
    ("DELETE", "/keys/k_%00"),
    ("GET", "/workflows/w%00"),
    ("POST", "/workflows/local%00/w"),
    ("POST", "/queue/workflows/local/w%00"),
    ("GET", "/requests/ab%01cd"),
    ("GET", "/files/media/x%00.png"),
    ("PUT", "/apps/digits%00/scale"),
    ("DELETE", "/apps/digits%00"),
    ("POST", "/apps/digits%00/prune"),
    ("PUT", "/apps/digits/dev/dev-0000000%00"),
]


@pytest.mark.parametrize(("method", "path"), NUL_PATHS)
def test_a_control_character_in_a_path_is_a_400(refusing: Gateway, method: str, path: str) -> None:
    response = _send(refusing, method, path, {"max_inflight": 1, "revision": "latest"})
    _refused(response, 400, "InvalidRequestError")
    assert "control characters" in response.json()["detail"]


def test_a_nul_in_a_body_name_is_a_422_and_the_registry_never_sees_it(
    on_each_registry: Gateway,
) -> None:
    gw = on_each_registry
    _refused(_send(gw, "POST", "/keys", {"label": "a\x00b"}), 422, "ValidationError", "label")
    _refused(_send(gw, "POST", "/keys", {"tenant": "bob\x00"}), 422, "ValidationError", "tenant")
    shared = {"visibility": "shared", "tenants": ["other\x00"]}
    _refused(_send(gw, "PUT", "/apps/digits/visibility", shared), 422, "ValidationError", "tenants")
    alias = _send(gw, "PUT", "/apps/digits/aliases/prod", {"revision": "r\x00"})
    _refused(alias, 422, "ValidationError", "revision")
    document = {"nodes": {"a": {"app": "local\x00/digits", "input": {}}}, "output": "$a"}
    stored = _send(gw, "PUT", "/workflows/w", {"document": document})
    assert stored.status_code in (400, 422) and stored.json()["error_type"], stored.text
    # lookups of text that cannot be stored find nothing, typed, on either database
    assert gw.registry.get_app("local\x00", "digits") is None
    assert gw.registry.get_tenant("other\x00") is None
    assert gw.registry.get_key("k\x00") is None
    assert gw.registry.authenticate("k\x00", "s") is None


def test_a_deploy_archive_that_is_not_base64_is_a_422(gateway: Gateway) -> None:
    spec = {"name": "digits"}
    for archive in ("ÂgÃ", "abc", "@@@@"):
        response = _send(gateway, "POST", "/apps/digits/deploy", {"spec": spec, "archive": archive})
        _refused(response, 422, "ValidationError", "archive")


def test_a_body_of_the_wrong_kind_is_a_422_naming_the_field(gateway: Gateway) -> None:
    for path, body, field in [
        ("/apps/digits/visibility", {"visibility": "everyone"}, "visibility"),
        ("/apps/digits/visibility", {"caller_logs": 1}, "caller_logs"),
        ("/tenants/other", {"tier": 3}, "tier"),
        ("/secrets/TOKEN", {"value": ""}, "value"),
        ("/workflows/w", {"document": 7}, "document"),
    ]:
        _refused(_send(gateway, "PUT", path, body), 422, "ValidationError", field)
    for number in (b"Infinity", b"NaN"):
        forever = _send(gateway, "POST", "/keys", b'{"expires_in_s": %s}' % number)
        _refused(forever, 422, "ValidationError", "expires_in_s")
    refused = _send(gateway, "POST", "/keys", {"scope": "root", "burst": 0})
    assert {e["loc"][1] for e in refused.json()["detail"]} == {"scope", "burst"}
    # a body without visibility or caller_logs changes nothing and says what it wants
    _refused(_send(gateway, "PUT", "/apps/digits/visibility", {}), 400, "InvalidRequestError")


@pytest.mark.parametrize(
    "values",
    [{"keep_alive": -1}, {"keep_alive": "5"}, {"min_concurrency": 1.5},
     {"max_concurrency": 0}, {"concurrency_buffer": -2}, {"concurrency_buffer": True},
     {"min_concurrency": 10_001}, {"replicas": 3}, {"function": ""}, {"reset": 1}],
)  # fmt: skip
def test_a_bad_scale_setting_is_a_422_naming_it(gateway: Gateway, values: dict[str, Any]) -> None:
    refused = _send(gateway, "PUT", "/apps/digits/scale", values)
    _refused(refused, 422, "ValidationError", next(iter(values)))
    assert _send(gateway, "GET", "/apps/digits/scale").json()["overrides"] == []


def test_a_scale_change_sets_and_stops_overriding_what_it_names(gateway: Gateway) -> None:
    body = {"keep_alive": 30, "min_concurrency": 0, "max_concurrency": 3}
    changed = _send(gateway, "PUT", "/apps/digits/scale", body)
    assert changed.status_code == 200, changed.text
    (override,) = changed.json()["overrides"]
    assert (override["function"], override["keep_alive"], override["max_concurrency"]) == (
        None, 30.0, 3
    )  # fmt: skip
    stopped = _send(gateway, "PUT", "/apps/digits/scale", {"max_concurrency": None})
    assert stopped.json()["overrides"][0]["max_concurrency"] is None
    assert stopped.json()["overrides"][0]["keep_alive"] == 30.0
    both = _send(gateway, "PUT", "/apps/digits/scale", {"reset": True, "keep_alive": None})
    _refused(both, 400, "InvalidRequestError")
    _refused(_send(gateway, "PUT", "/apps/digits/scale", {}), 400, "InvalidRequestError")
    reset = _send(gateway, "PUT", "/apps/digits/scale", {"reset": True})
    assert reset.json()["overrides"] == []


@pytest.mark.parametrize("keep", ["\N{SUPERSCRIPT TWO}", "-1", "1.5", "x"])
def test_a_prune_keep_that_is_no_whole_number_is_a_400(gateway: Gateway, keep: str) -> None:
    _refused(_send(gateway, "POST", f"/apps/digits/prune?keep={keep}"), 400, "InvalidRequestError")


def test_every_route_declares_what_it_takes_and_answers() -> None:
    doc = _openapi()
    for route in ROUTES:
        declared = contract_of(route.endpoint)
        assert declared is not None and declared.replies, route.path
        for method in route.methods or ():
            if method == "HEAD":
                continue
            op = doc["paths"][route.path.replace(":path", "")][method.lower()]
            assert {str(s) for s in declared.replies} <= op["responses"].keys(), route.path
            if declared.body is not None:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref == f"#/components/schemas/{declared.body.__name__}"


def test_the_document_is_the_validation() -> None:
    """Each body model's schema in the document is the model's own (one definition)."""
    doc = _openapi()
    schemas = doc["components"]["schemas"]
    for route in ROUTES:
        declared = contract_of(route.endpoint)
        if declared is not None and declared.body is not None:
            own = declared.body.model_json_schema(ref_template="#/components/schemas/{model}")
            own.pop("$defs", None)
            assert schemas[declared.body.__name__] == own, declared.body.__name__
