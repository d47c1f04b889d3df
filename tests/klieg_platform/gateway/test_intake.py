"""Intake checks on a real gateway with no worker: a body that does not match the endpoint's
input model, or that carries a media URL of a refused scheme, is answered 422 before anything
is queued, on the queue path, the sync path and workflow submits alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from pydantic import BaseModel

import klieg
from klieg_platform import keys
from tests.conftest import MACHINE_REDIS_URL
from tests.klieg_platform.gateway.conftest import Gateway

pytestmark = pytest.mark.timeout(60)

app = klieg.App("checked")


class In(BaseModel):
    text: str
    count: int = 1
    image: klieg.Image | None = None
    mask_url: str = ""


@app.function()
@klieg.endpoint("/")
def run(req: In) -> dict[str, Any]:
    return {}


@app.function()
@klieg.endpoint("/raw")
def raw() -> dict[str, Any]:
    return {}


FLOW = """
input:
  type: object
  properties: {text: {type: string}, image_url: {type: string}}
  required: [text]
nodes:
  a: {app: local/checked, input: {text: $input.text}}
output: $a
"""


@pytest.fixture()
def checked(gateway: Gateway) -> Iterator[httpx.Client]:
    local = gateway.registry.get_tenant("local")
    assert local is not None
    record = gateway.registry.ensure_app(local.id, "checked")
    spec = app.spec().model_dump(mode="json")
    rev, _ = gateway.registry.put_revision(record, "checked-r1", spec, "c0de", "env0", "3.11", "")
    gateway.registry.set_alias(record, "latest", rev.id)
    gateway.admin.put_workflow("flow", FLOW)
    with httpx.Client(base_url=gateway.url, headers=gateway.admin.http.headers, timeout=10) as c:
        yield c


def _request_records() -> set[bytes]:
    client = redis.Redis.from_url(MACHINE_REDIS_URL)
    try:
        return set(client.scan_iter(match=keys.REQUEST_PREFIX + "*"))
    finally:
        client.close()


def _refused(response: httpx.Response, kind: str) -> list[Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "ValidationError"
    errors: list[Any] = body["detail"]
    assert errors and all(e["type"] == kind for e in errors), errors
    return [e["loc"] for e in errors]


def test_queue_submit_not_matching_the_model_is_422_and_queues_nothing(
    checked: httpx.Client,
) -> None:
    before = _request_records()
    assert _refused(checked.post("/queue/local/checked", json={"txt": "x"}), "missing") == [
        ["body", "text"]
    ]
    r = checked.post("/queue/local/checked", json={"text": "x", "count": "many"})
    assert _refused(r, "int_type") == [["body", "count"]]
    assert _request_records() == before


def test_sync_call_not_matching_the_model_is_422_at_once(checked: httpx.Client) -> None:
    r = checked.post("/local/checked", json={"text": ["not", "a", "string"]})  # no worker runs
    assert _refused(r, "string_type") == [["body", "text"]]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://h/1"])
def test_a_media_url_of_another_scheme_is_422_and_queues_nothing(
    checked: httpx.Client, url: str
) -> None:
    before = _request_records()
    r = checked.post("/queue/local/checked", json={"text": "x", "image": {"url": url}})
    assert _refused(r, "url_scheme") == [["body", "image", "url"]]
    r = checked.post("/local/checked", json={"text": "x", "mask_url": url})
    assert _refused(r, "url_scheme") == [["body", "mask_url"]]
    r = checked.post("/queue/workflows/local/flow", json={"text": "x", "image_url": url})
    assert _refused(r, "url_scheme") == [["body", "image_url"]]
    assert _request_records() == before


@pytest.mark.parametrize(
    "hook", ["http://[::1/x", "http://h:99999/x", "http://h:port/x", "http://a\x00b/x", "ftp://h/x"]
)
def test_a_webhook_that_is_no_http_url_is_400_and_queues_nothing(
    checked: httpx.Client, hook: str
) -> None:
    before = _request_records()
    r = checked.post("/queue/local/checked", params={"fal_webhook": hook}, json={"text": "x"})
    assert r.status_code == 400 and r.json()["error_type"] == "InvalidRequestError", r.text
    assert "fal_webhook must be an http(s) URL" in r.json()["detail"]
    assert _request_records() == before


def test_a_valid_body_is_queued(checked: httpx.Client) -> None:
    before = _request_records()
    body = {"text": "x", "count": "2", "image": {"url": "https://example.com/a.png"}}
    sub = checked.post("/queue/local/checked", json=body)
    assert sub.status_code == 200 and sub.json()["status"] == "IN_QUEUE", sub.text
    raw = checked.post("/queue/local/checked/raw", json={"anything": "file:///x"})
    assert raw.status_code == 200, raw.text  # no input model: nothing to check against
    try:
        added = _request_records() - before
        assert added == {keys.request(r.json()["request_id"]).encode() for r in (sub, raw)}
    finally:
        for r in (sub, raw):
            checked.put(r.json()["cancel_url"])


@pytest.mark.parametrize("value", ["urgent", "LOW", "", "high"])
def test_a_bad_queue_priority_is_400_naming_the_header_and_queues_nothing(
    checked: httpx.Client, value: str
) -> None:
    before = _request_records()
    headers = {"X-Fal-Queue-Priority": value}
    for path in ("/queue/local/checked", "/local/checked"):
        r = checked.post(path, json={"text": "x"}, headers=headers)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error_type"] == "InvalidRequestError"
        assert "X-Fal-Queue-Priority" in body["detail"] and repr(value) in body["detail"]
    assert _request_records() == before


def test_a_low_priority_request_is_queued_low(checked: httpx.Client) -> None:
    sub = checked.post(
        "/queue/local/checked", json={"text": "x"}, headers={"X-Fal-Queue-Priority": "low"}
    )
    assert sub.status_code == 200, sub.text
    rid = sub.json()["request_id"]
    client = redis.Redis.from_url(MACHINE_REDIS_URL)
    try:
        assert client.hget(keys.request(rid), "priority") == b"low"
    finally:
        client.close()
        checked.put(sub.json()["cancel_url"])


def test_a_bad_runner_hint_is_400_naming_the_header_and_a_good_one_is_queued(
    checked: httpx.Client,
) -> None:
    before = _request_records()
    for path in ("/queue/local/checked", "/local/checked"):
        r = checked.post(path, json={"text": "x"}, headers={"X-Fal-Runner-Hint": "x" * 257})
        assert r.status_code == 400, r.text
        assert r.json()["error_type"] == "InvalidRequestError"
        assert r.json()["detail"].startswith("X-Fal-Runner-Hint: a runner hint is 1-256")
    assert _request_records() == before
    sub = checked.post(
        "/queue/local/checked", json={"text": "x"}, headers={"X-Fal-Runner-Hint": "lora 7"}
    )
    assert sub.status_code == 200, sub.text
    client = redis.Redis.from_url(MACHINE_REDIS_URL)
    try:
        assert client.hget(keys.request(sub.json()["request_id"]), "hint") == b"lora 7"
    finally:
        client.close()
        checked.put(sub.json()["cancel_url"])
