"""Deleting an app and pruning revisions on a live platform: aliases and routes go at once,
what was queued or running finishes, and then the revisions' code archives and envs are
collected where no other revision uses them."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klieg.admin import load_app
from tests.e2e.platform import TEST_APPS, Platform, running_platform, until, wait_for_status
from tests.e2e.test_cli import klieg

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("life")) as p:
        p.bootstrap()
        yield p


def code_file(p: Platform, code_hash: str) -> Path:
    return p.home / "blobs" / "code" / f"{code_hash}.tar.gz"


def env_dir(p: Platform, key: str) -> Path:
    return p.home / "envs" / key


def revision(p: Platform, app: str, rid: str) -> dict[str, Any]:
    with p.admin() as admin:
        return next(r for r in admin.revisions(app) if r["id"] == rid)


def test_delete_finishes_what_runs_and_waits_then_collects_code_and_env(life: Platform) -> None:
    keeper = life.deploy(TEST_APPS / "scaled" / "app.py")  # another app, another env
    doomed = life.deploy(TEST_APPS / "doomed" / "app.py")
    kept = revision(life, "scaled", str(keeper["revision"]))
    gone = revision(life, "doomed", str(doomed["revision"]))
    assert gone["env_key"] != kept["env_key"]
    results: list[Any] = []
    with life.http() as http:
        running = threading.Thread(
            target=lambda: results.append(http.post("/local/doomed", json={"seconds": 4}))
        )
        running.start()
        until("the first request runs", lambda: len(running_requests(life)) == 1, 60)
        queued = http.post("/queue/local/doomed", json={"text": "*queued*"}).json()

        refused = klieg(life, "apps", "delete", "doomed")  # off a terminal: needs --yes
        assert refused.returncode == 1 and "--yes" in refused.stderr
        deleted = klieg(life, "apps", "delete", "doomed", "--yes")
        assert deleted.returncode == 0, deleted.stderr
        after = http.post("/local/doomed", json={})
        assert after.status_code == 404 and after.json()["error_type"] == "NotFoundError"
        assert "doomed" not in klieg(life, "apps", "list").stdout

        running.join(timeout=60)
        assert results[0].status_code == 200, results[0].text
        done = wait_for_status(http, queued["status_url"], "COMPLETED", timeout=60)
        assert done["status"] == "COMPLETED"
        assert http.get(queued["response_url"]).json() == {"html": "<p><em>queued</em></p>"}

    until(
        "the code archive and env collected",
        lambda: (
            not code_file(life, gone["code_hash"]).exists()
            and not env_dir(life, gone["env_key"]).exists()
        ),
    )
    assert code_file(life, kept["code_hash"]).exists() and env_dir(life, kept["env_key"]).exists()
    again = life.deploy(TEST_APPS / "doomed" / "app.py")  # the name is free; all built again
    assert again["env_built"]
    with life.http() as http:
        assert http.post("/local/doomed", json={"text": "back"}).json() == {"html": "<p>back</p>"}


def running_requests(p: Platform) -> list[dict[str, Any]]:
    with p.admin() as admin:
        return admin.requests("doomed", status="IN_PROGRESS")["requests"]


def test_prune_keeps_aliased_and_newest_and_collects_the_rest(
    life: Platform, tmp_path: Path
) -> None:
    folder = tmp_path / "pruned"
    shutil.copytree(TEST_APPS / "scaled", folder)
    source = (folder / "app.py").read_text().replace('App("scaled")', 'App("pruned")')
    ids = []
    for n in range(3):
        (folder / "app.py").write_text(source + f"\nVERSION = {n}\n")
        app, where, entry = load_app(folder / "app.py")
        with life.admin() as admin:
            ids.append(admin.deploy(app, where, entry)["revision"])
    first, middle, newest = ids
    assert klieg(life, "alias", "set", "pruned", "pinned", first).returncode == 0
    middle_code = revision(life, "pruned", middle)["code_hash"]

    pruned = klieg(life, "revisions", "prune", "pruned", "--keep", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.split() == ["pruned", middle]
    listed = klieg(life, "revisions", "pruned").stdout
    assert first in listed and newest in listed and middle not in listed
    with life.http() as http:
        assert http.post(f"/local/pruned@{middle}", json={}).status_code == 404
        assert http.post(f"/local/pruned@{first}", json={}).status_code == 200
    back = klieg(life, "rollback", "pruned")  # latest: newest -> middle, which is gone
    assert back.returncode == 1 and "pruned" in back.stderr
    until("the pruned revision's code collected", lambda: not code_file(life, middle_code).exists())
    env = revision(life, "pruned", first)["env_key"]
    assert env_dir(life, env).exists()  # the revisions left still use it
    bad = klieg(life, "revisions", "prune", "pruned", "--keep", "-1")
    assert bad.returncode == 1 and "keep" in bad.stderr
