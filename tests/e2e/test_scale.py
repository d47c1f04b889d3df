"""``klieg apps scale`` on a live app, with real workers and runners: runners appear and go per
the new settings without a redeploy; a redeploy keeps the overrides, ``--reset-scale`` drops
them; bad settings are refused naming what is wrong."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.platform import TEST_APPS, Platform, running_platform, until
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(300)

APP = TEST_APPS / "scaled" / "app.py"


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("scale")) as p:
        p.bootstrap()
        p.deploy(APP)
        yield p


def runners(p: Platform) -> list[dict[str, object]]:
    with p.admin() as admin:
        return [r for r in admin.runners("scaled") if r["state"] != "stopping"]


def scale(p: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    out = klieg(p, "apps", "scale", "scaled", *args)
    assert out.returncode == 0, out.stderr
    return out


def test_runners_follow_the_scaling_without_a_redeploy(scaled: Platform) -> None:
    until("no runner while nothing asks for one", lambda: runners(scaled) == [])
    shown = scale(scaled, "--min-concurrency", "2")
    assert "min 2" in shown.stdout and "overridden for the whole app" in shown.stdout
    until("two runners kept warm", lambda: len(runners(scaled)) == 2)
    scale(scaled, "--min-concurrency", "0")
    until("the idle runners stopped after keep_alive", lambda: runners(scaled) == [])

    scale(scaled, "--function", "work", "--concurrency-buffer", "1", "--keep-alive", "1")
    until("one spare runner", lambda: len(runners(scaled)) == 1)
    with scaled.http() as http:
        slow = threading.Thread(target=lambda: http.post("/local/scaled", json={"seconds": 6}))
        slow.start()
        until("a spare beside the busy one", lambda: len(runners(scaled)) == 2, 20)
        slow.join()
    until("back to one spare once idle", lambda: len(runners(scaled)) == 1)


def test_a_redeploy_keeps_the_overrides_unless_reset(scaled: Platform) -> None:
    scale(scaled, "--reset")
    scale(scaled, "--keep-alive", "30", "--min-concurrency", "1")
    redeployed = klieg(scaled, "deploy", str(APP))
    assert redeployed.returncode == 0, redeployed.stderr
    kept = json.loads(scale(scaled, "--json").stdout)
    assert [(o["function"], o["min_concurrency"]) for o in kept["overrides"]] == [(None, 1)]
    assert kept["functions"][0]["keep_alive"] == 30
    until("its runner", lambda: len(runners(scaled)) == 1)
    reset = klieg(scaled, "deploy", str(APP), "--reset-scale")
    assert reset.returncode == 0 and "scale overrides reset" in reset.stderr
    dropped = json.loads(scale(scaled, "--json").stdout)
    assert dropped["overrides"] == []
    assert dropped["functions"][0]["keep_alive"] == 2  # the decorator's again
    until("no runner once the decorator's keep_alive passed", lambda: runners(scaled) == [])


def test_bad_scaling_is_refused_and_changes_nothing(scaled: Platform) -> None:
    scale(scaled, "--reset")
    above = klieg(scaled, "apps", "scale", "scaled", "--min-concurrency", "3")
    assert above.returncode == 1
    assert "InvalidRequestError" in above.stderr and "max_concurrency 2" in above.stderr
    nobody = klieg(scaled, "apps", "scale", "scaled", "--function", "nope", "--keep-alive", "3")
    assert nobody.returncode == 1 and "NotFoundError" in nobody.stderr
    negative = klieg(scaled, "apps", "scale", "scaled", "--concurrency-buffer", "-1")
    assert negative.returncode == 1 and "concurrency_buffer" in negative.stderr
    elsewhere = klieg(scaled, "apps", "scale", "nosuchapp", "--keep-alive", "3")
    assert elsewhere.returncode == 1 and "NotFoundError" in elsewhere.stderr
    assert json.loads(scale(scaled, "--json").stdout)["overrides"] == []
    with scaled.http() as http:
        r = http.put("/apps/scaled/scale", json={"min_concurrency": "2"})
        assert r.status_code == 422 and r.json()["error_type"] == "ValidationError"
        assert r.json()["detail"][0]["loc"] == ["body", "min_concurrency"]
        r = http.put("/apps/scaled/scale", json={})
        assert r.status_code == 400 and "nothing to change" in r.json()["detail"]
