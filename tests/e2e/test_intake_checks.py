"""Intake checks through the real platform: a body that does not match the endpoint's model, or
that names a media URL of a refused scheme, is answered 422 at submit naming the field; nothing
is queued and the app never runs. A workflow node whose input carries a ``data:`` URL over the
body limit fails before it is queued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from klieg_platform import keys
from tests.e2e.platform import TEST_APPS, Platform, wait_for_status

pytestmark = pytest.mark.timeout(180)

BODY_LIMIT = 1024 * 1024
"""``KLIEG_MAX_BODY_BYTES`` of the test platform (tests/e2e/platform.py)."""


@pytest.fixture(scope="module")
def checked(platform: Platform) -> Iterator[Platform]:
    platform.deploy(TEST_APPS / "intakecheck" / "app.py")
    with platform.admin() as admin:
        admin.put_workflow(
            "bigurl",
            {
                "input": {"type": "object", "properties": {"size": {"type": "integer"}}},
                "nodes": {
                    "big": {"app": "local/intakecheck/big", "input": {"size": "$input.size"}},
                    "take": {
                        "app": "local/intakecheck",
                        "input": {"text": "from-big", "image": {"url": "$big.url"}},
                    },
                },
                "output": "$take",
            },
        )
    yield platform


def _records(p: Platform) -> set[bytes]:
    client = redis.Redis(unix_socket_path=str(p.home / "run" / "redis.sock"))
    try:
        return set(client.scan_iter(match=keys.REQUEST_PREFIX + "*"))
    finally:
        client.close()


def _calls(p: Platform) -> list[str]:
    counter = p.home / "intakecheck-calls"
    return counter.read_text().splitlines() if counter.exists() else []


def _refused(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "ValidationError", body
    detail: list[dict[str, Any]] = body["detail"]
    return detail


def test_submit_not_matching_the_model_is_422_naming_the_field(checked: Platform) -> None:
    before = _records(checked)
    with checked.http() as http:
        detail = _refused(http.post("/queue/local/intakecheck", json={"txt": "hello"}))
        assert [(e["loc"], e["type"]) for e in detail] == [(["body", "text"], "missing")]
        detail = _refused(http.post("/queue/local/intakecheck", json={"text": 5}))
        assert [e["loc"] for e in detail] == [["body", "text"]]
        sync = _refused(http.post("/local/intakecheck", json={"text": "x", "image": "a.png"}))
        assert [e["loc"] for e in sync] == [["body", "image"]]
    assert _records(checked) == before
    assert _calls(checked) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://h/"])
def test_a_media_url_of_a_refused_scheme_is_422(checked: Platform, url: str) -> None:
    before = _records(checked)
    with checked.http() as http:
        image = {"text": "x", "image": {"url": url}}
        detail = _refused(http.post("/queue/local/intakecheck", json=image))
        assert [(e["loc"], e["type"]) for e in detail] == [(["body", "image", "url"], "url_scheme")]
        detail = _refused(http.post("/local/intakecheck", json={"text": "x", "source_url": url}))
        assert [(e["loc"], e["type"]) for e in detail] == [(["body", "source_url"], "url_scheme")]
    assert _records(checked) == before
    assert _calls(checked) == []


def test_a_valid_body_is_queued_and_runs(checked: Platform) -> None:
    with checked.http() as http:
        body = {"text": "valid", "image": {"url": "data:image/png;base64,AAAA"}}
        sub = http.post("/queue/local/intakecheck", json=body)
        assert sub.status_code == 200 and sub.json()["status"] == "IN_QUEUE", sub.text
        wait_for_status(http, sub.json()["status_url"], "COMPLETED")
        assert http.get(sub.json()["response_url"]).json() == {"text": "valid"}
    assert "valid" in _calls(checked)


def test_a_node_input_with_a_data_url_over_the_body_limit_fails_before_it_runs(
    checked: Platform,
) -> None:
    with checked.http() as http:
        fine = http.post("/workflows/local/bigurl", json={"size": 10})
        assert fine.status_code == 200 and fine.json() == {"text": "from-big"}, fine.text
        big = http.post("/workflows/local/bigurl", json={"size": BODY_LIMIT + 10})
    assert big.status_code == 422, big.text
    body = big.json()
    assert body["error_type"] == "ValidationError"
    assert "node 'take' failed" in body["detail"] and "url_too_long" in body["detail"]
    assert _calls(checked).count("from-big") == 1
