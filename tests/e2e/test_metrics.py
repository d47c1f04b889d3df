"""``GET /metrics`` on a running platform, parsed with the Prometheus parser: counters move by
exactly the traffic sent, per endpoint, every series carries the labels its family declares,
the fleet gauges show the real worker, a second gateway process of the same platform answers
with the same fleet figures (traffic sent through it included), and a tenant other than the
admin sees the series of its own apps only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from klieg_platform.gateway.metrics import LABELS, NAMES
from tests.e2e.platform import Platform, another_gateway

pytestmark = pytest.mark.timeout(180)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def families(platform: Platform) -> set[str]:
    """The metric names of the admin's scrape (counters with ``_total``)."""
    with platform.http() as http:
        text = http.get("/metrics").text
    return {
        f.name + "_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(text)
    }


def scrape(platform: Platform, key: str | None = None) -> Samples:
    with platform.http(key) as http:
        answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def test_counters_move_by_the_traffic_sent(platform: Platform, echo_deployed: Any) -> None:
    with platform.http() as http:
        for path in ("/local/echo", "/local/echo/upper"):
            assert http.post(path, json={"text": "warm"}).status_code == 200
        before = scrape(platform)
        for i in range(5):
            assert http.post("/local/echo", json={"text": f"s{i}"}).status_code == 200
        for i in range(2):
            assert http.post("/local/echo/upper", json={"text": f"u{i}"}).status_code == 200
        assert http.post("/local/echo", json={"nope": 1}).status_code == 422  # refused, not run
        ids = [
            http.post("/queue/local/echo", json={"text": f"q{i}"}).json()["request_id"]
            for i in range(3)
        ]
        for rid in ids:
            deadline = time.monotonic() + 60
            while http.get(f"/queue/local/echo/requests/{rid}/status").json()["status"] != (
                "COMPLETED"
            ):
                assert time.monotonic() < deadline, rid
                time.sleep(0.05)
    after = scrape(platform)
    echo = {"owner": "local", "app": "echo"}
    assert moved(after, before, "klieg_requests_total", status="ok", **echo) == 10
    for endpoint, n in (("/", 8), ("/upper", 2)):
        ok = moved(after, before, "klieg_requests_total", status="ok", endpoint=endpoint, **echo)
        assert ok == n, endpoint
    for hist in ("klieg_request_queue_seconds", "klieg_request_run_seconds"):
        assert moved(after, before, f"{hist}_count", **echo) == 10
        assert moved(after, before, f"{hist}_count", endpoint="/upper", **echo) == 2
        assert total(after, f"{hist}_bucket", le="+Inf", **echo) == total(
            after, f"{hist}_count", **echo
        )
        assert total(after, f"{hist}_sum", **echo) >= total(before, f"{hist}_sum", **echo)
    for (name, labels), _ in after.items():  # each series has its family's labels, no others
        family = next(f for f in NAMES if name in (f, f"{f}_bucket", f"{f}_sum", f"{f}_count"))
        extra = {"le"} if name.endswith("_bucket") else set()
        assert {k for k, _ in labels} == set(LABELS[family]) | extra, (name, labels)
    assert total(after, "klieg_cold_starts_total", **echo) >= 1
    assert total(after, "klieg_cold_start_seconds_count", **echo) == total(
        after, "klieg_cold_starts_total", **echo
    )
    pool = next(dict(ls)["pool"] for n, ls in after if n == "klieg_requests_total")
    deadline = time.monotonic() + 10  # the runner shows from the worker's next heartbeat
    while total(after, "klieg_runners", pool=pool) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = scrape(platform)
    assert total(after, "klieg_workers", pool=pool) >= 1
    assert total(after, "klieg_runners", pool=pool) >= 1
    assert total(after, "klieg_gpu_slots", pool=pool) >= 1
    assert ("klieg_queue_depth", frozenset({("pool", pool), ("tier", "enterprise")})) in after
    ratio = [v for (n, _), v in after.items() if n == "klieg_slo_attainment_ratio"]
    assert ratio and all(0 <= v <= 1 for v in ratio)
    assert not any("request_id" in dict(ls) for _, ls in after), "a series per request"
    assert families(platform) == set(NAMES)


def test_another_tenant_sees_only_its_own_series(platform: Platform, echo_deployed: Any) -> None:
    with platform.admin() as admin:
        other = str(admin.create_key(tenant="metrics-outsider")["key"])
        call = str(admin.create_key(label="metrics-call", scope="call")["key"])
    with platform.http() as http:
        assert http.post("/local/echo", json={"text": "x"}).status_code == 200
    theirs = scrape(platform, other)
    assert not any(dict(ls).get("owner") == "local" for _, ls in theirs), "admin's apps shown"
    fleet_wide = {"klieg_queue_depth", "klieg_workers", "klieg_runners", "klieg_gpu_slots"}
    assert not names(theirs) & fleet_wide
    assert total(scrape(platform), "klieg_requests_total", owner="local") >= 1
    with platform.http(call) as http:
        refused = http.get("/metrics")
    assert (refused.status_code, refused.json()["error_type"]) == (403, "PermissionDeniedError")
    with platform.http("") as anonymous:
        assert anonymous.get("/metrics").status_code == 401


@pytest.fixture(scope="module")
def second_gateway(platform: Platform) -> Iterator[Platform]:
    """Another gateway process of the session's platform: same home, Redis and registry, its
    own port."""
    with another_gateway(platform) as other:
        yield other


def test_every_gateway_answers_for_the_whole_fleet(
    platform: Platform, echo_deployed: Any, second_gateway: Platform
) -> None:
    upper = {"owner": "local", "app": "echo", "endpoint": "/upper", "status": "ok"}
    before = scrape(platform)
    with second_gateway.http() as http:
        for i in range(4):
            assert http.post("/local/echo/upper", json={"text": f"g{i}"}).status_code == 200
    assert moved(scrape(platform), before, "klieg_requests_total", **upper) == 4
    # the same figures from both; a heartbeat or a minute's turn between two scrapes can move a
    # gauge, so scrape again until one pair agrees
    deadline = time.monotonic() + 20
    while True:
        here, there = scrape(platform), scrape(second_gateway)
        if here == there or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert here == there, {k: (here.get(k), there.get(k)) for k in here.keys() ^ there.keys()}
    assert total(there, "klieg_workers") >= 1 and total(there, "klieg_requests_total") >= 4
    assert {n for n, _ in there} >= {"klieg_queue_depth", "klieg_runners", "klieg_gpu_slots"}
