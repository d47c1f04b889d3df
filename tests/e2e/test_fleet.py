"""The fleet views on a running platform: ``GET /workers`` and ``GET /pools`` (and ``klieg
workers`` / ``klieg pools``) show the real worker, its runners by state and the queue per tier
while requests wait, and are refused to anyone but an admin tenant's admin key; ``GET /runners``
(``klieg runners APP``) shows a tenant its own apps' runners only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.platform import Platform
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(180)
SLOW = Path(__file__).parent / "apps" / "slow" / "app.py"


def _until(read: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = read()
        if ok(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def test_fleet_views_show_workers_runners_and_queue_depth(platform: Platform) -> None:
    rev = str(platform.deploy(SLOW)["revision"])
    fn = f"{rev}/sleep"
    with platform.http() as http:
        ids = [
            http.post("/queue/local/slow", json={"seconds": 1.5}).json()["request_id"]
            for _ in range(7)
        ]

        def pools() -> list[dict[str, Any]]:
            answer = http.get("/pools")
            assert answer.status_code == 200, answer.text
            found: list[dict[str, Any]] = answer.json()["pools"]
            return found

        def workers() -> list[dict[str, Any]]:
            answer = http.get("/workers")
            assert answer.status_code == 200, answer.text
            found: list[dict[str, Any]] = answer.json()["workers"]
            return found

        def busy_here(ws: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for w in ws for r in w["runners"] if r["function"] == fn]

        # the app has max_concurrency=4: 4 run, 3 wait in the queue
        def running(p: dict[str, Any]) -> int:
            return int(p["runners"]["busy"] + p["runners"]["starting"])

        seen = _until(pools, lambda ps: any(p["queued"] >= 1 and running(p) for p in ps))
        waiting = [p for p in seen if p["queued"] >= 1]
        assert waiting, f"no pool shows the waiting requests: {seen}"
        pool = waiting[0]
        assert pool["workers"] >= 1 and pool["slots"]["total"] >= 1
        tiers = {q["tier"]: q for q in pool["queue"]}
        assert sum(q["queued"] for q in tiers.values()) == pool["queued"]
        assert any(q["queued"] and q["oldest_wait_s"] >= 0 for q in tiers.values())
        assert running(pool) >= 1, pool

        ws = _until(workers, lambda ws: len(busy_here(ws)) >= 1)
        worker = next(w for w in ws if any(r["function"] == fn for r in w["runners"]))
        assert worker["seen_s_ago"] < 15 and worker["slots_held"] >= 1 and not worker["draining"]
        assert {r["state"] for r in busy_here(ws)} <= {"starting", "busy"}

        for rid in ids:
            _until(
                lambda rid=rid: http.get(f"/queue/local/slow/requests/{rid}/status").json(),
                lambda st: st["status"] == "COMPLETED",
                timeout_s=60,
            )
        ws = _until(workers, lambda ws: busy_here(ws) and all(
            r["state"] == "idle" for r in busy_here(ws)
        ))  # fmt: skip
        idle = busy_here(ws)
        assert idle and all(r["state"] == "idle" and r["idle_s"] >= 0 for r in idle), idle
        later = next(w for w in ws if w["id"] == worker["id"])
        assert 1 <= worker["cold_starts"] <= later["cold_starts"]
        assert _until(pools, lambda ps: all(p["queued"] == 0 for p in ps))[0]["queued"] == 0

    with platform.http() as http:
        runners = http.get("/runners", params={"app": "slow"}).json()["runners"]
    assert runners and {(r["app"], r["revision"], r["function"]) for r in runners} == {
        ("local/slow", rev, "sleep")
    }
    assert all(r["worker"] and r["state"] == "idle" for r in runners), runners
    by_app = klieg(platform, "runners", "slow")
    assert by_app.returncode == 0, by_app.stderr
    assert f"local/slow  revision {rev}" in by_app.stdout and "sleep  idle" in by_app.stdout

    shown = klieg(platform, "workers")
    assert shown.returncode == 0, shown.stderr
    assert worker["id"] in shown.stdout and fn in shown.stdout and "idle" in shown.stdout
    listed = klieg(platform, "pools", "--json")
    assert listed.returncode == 0, listed.stderr
    assert pool["pool"] in {p["pool"] for p in json.loads(listed.stdout)}
    table = klieg(platform, "pools")
    assert table.returncode == 0 and table.stdout.startswith(tuple(p["pool"] for p in seen))


def test_fleet_views_are_for_an_admin_tenant_only(platform: Platform) -> None:
    with platform.admin() as admin:
        call = admin.create_key(label="fleet-call", scope="call")["key"]
        other = admin.create_key(tenant="fleet-outsider")["key"]
    for key in (call, other):
        with platform.http(key) as http:
            for path in ("/workers", "/pools"):
                refused = http.get(path)
                assert refused.status_code == 403, (path, refused.text)
                assert refused.json()["error_type"] == "PermissionDeniedError"
    with platform.http(str(other)) as http:
        assert http.get("/runners").json()["runners"] == [], "another tenant's runners shown"
    with platform.http("") as anonymous:
        assert anonymous.get("/pools").status_code == 401
    out = klieg(platform, "workers", key=str(other))
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and "admin tenant" in out.stderr


def _history(platform: Platform, key: str | None = None) -> list[dict[str, Any]]:
    with platform.http(key) as http:
        r = http.get("/fleet/stream", params={"for_s": "1"})
    assert r.status_code == 200, r.text
    first = next(line for line in r.text.splitlines() if line.startswith("data: "))
    history: list[dict[str, Any]] = json.loads(first[6:])["history"]
    return history


def test_the_last_hour_is_sampled_for_the_charts(
    platform: Platform, echo_deployed: dict[str, object]
) -> None:
    """One gateway samples the fleet (every 3 s here, 10 s by default); the console's charts
    are the differences."""
    with platform.http() as http:
        http.post("/local/echo", json={"text": "sampled"}).raise_for_status()
    started = time.time()
    seen = _until(lambda: _history(platform), lambda h: h and h[-1]["at"] > started, 25)
    assert seen and seen[-1]["at"] > started, seen[-3:]
    last = seen[-1]
    assert last["done"] >= 1 and last["run_s"] > 0 and "queued" in last and last["cold"] >= 1
    assert [s["at"] for s in seen] == sorted(s["at"] for s in seen)
    with platform.admin() as admin:
        stranger = str(admin.create_key(tenant="fleet-sampled-stranger")["key"])
    theirs = _history(platform, stranger)
    assert theirs and all(set(s) == {"at"} for s in theirs), theirs[-3:]
