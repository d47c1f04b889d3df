"""Deploys: content-derived immutable revisions, shared envs, aliases, rollback, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from klieg.exceptions import DeployError
from tests.e2e.platform import APPS, TEST_APPS, Platform

pytestmark = pytest.mark.timeout(240)


def _copy_app(src: Path, dest: Path, replace: tuple[str, str] | None = None) -> Path:
    shutil.copytree(src, dest, dirs_exist_ok=True)
    if replace:
        file = dest / "app.py"
        file.write_text(file.read_text().replace(*replace))
    return dest / "app.py"


def test_redeploying_same_content_gives_same_revision(
    platform: Platform, echo_deployed: dict[str, object]
) -> None:
    again = platform.deploy(APPS / "echo" / "app.py")
    assert again["revision"] == echo_deployed["revision"]
    assert again["created"] is False and again["env_built"] is False


def test_new_code_is_a_new_revision_and_the_old_one_still_serves(
    platform: Platform, tmp_path: Path
) -> None:
    v1 = platform.deploy(_copy_app(TEST_APPS / "echo2", tmp_path / "v1"))
    v2 = platform.deploy(
        _copy_app(TEST_APPS / "echo2", tmp_path / "v2", ("[::-1]", '[::-1] + "!"'))
    )
    assert v1["revision"] != v2["revision"]
    assert str(v1["revision"]).startswith("rev-")
    with platform.http() as http:
        assert http.post("/local/echo2", json={"text": "ab"}).json() == {"text": "ba!"}
        old = http.post(f"/local/echo2@{v1['revision']}", json={"text": "ab"})
        assert old.json() == {"text": "ba"}
    revs = platform.admin().revisions("echo2")
    assert [r["id"] for r in revs][:2] == [v2["revision"], v1["revision"]]
    assert "latest" in revs[0]["aliases"]

    rolled = platform.admin().rollback("echo2")
    assert rolled["revision"] == v1["revision"] and rolled["previous"] == v2["revision"]
    with platform.http() as http:
        assert http.post("/local/echo2", json={"text": "ab"}).json() == {"text": "ba"}


def test_same_requirements_share_one_env(
    platform: Platform, echo_deployed: dict[str, object], tmp_path: Path
) -> None:
    other = platform.deploy(_copy_app(TEST_APPS / "echo2", tmp_path / "e"))
    assert other["env_key"] == echo_deployed["env_key"]
    assert other["env_built"] is False
    envs = [p for p in (platform.home / "envs").iterdir() if len(p.name) == 64]
    assert echo_deployed["env_key"] in [p.name for p in envs]


def test_changed_requirement_makes_new_env_and_revision(platform: Platform, tmp_path: Path) -> None:
    old = platform.deploy(APPS / "markdown" / "app.py")
    new = platform.deploy(
        _copy_app(APPS / "markdown", tmp_path / "md", ("markdown==3.7", "markdown==3.6"))
    )
    assert new["env_key"] != old["env_key"] and new["env_built"] is True
    assert new["revision"] != old["revision"]
    with platform.http() as http:
        r_old = http.post(f"/local/markdown@{old['revision']}", json={"text": "# a"})
        r_new = http.post("/local/markdown", json={"text": "# a"})
        assert r_old.status_code == 200 and r_new.status_code == 200
        assert r_old.json()["runner_pid"] != r_new.json()["runner_pid"]
    platform.admin().set_alias("markdown", "latest", str(old["revision"]))


def test_unresolvable_requirements_fail_and_write_nothing(platform: Platform) -> None:
    with pytest.raises(DeployError) as info:
        platform.deploy(TEST_APPS / "badreqs" / "app.py")
    assert info.value.error_type == "EnvResolutionError"
    assert "klieg-no-such-package-xyz" in str(info.value.detail)
    assert all(a["name"] != "badreqs" for a in platform.admin().apps())


def test_alias_set_to_another_alias_and_deploy_with_alias(
    platform: Platform, tmp_path: Path
) -> None:
    prod = platform.deploy(_copy_app(TEST_APPS / "echo2", tmp_path / "p"), alias="prod")
    with platform.http() as http:
        assert http.post("/local/echo2@prod", json={"text": "xy"}).status_code == 200
    moved = platform.admin().set_alias("echo2", "staging", "prod")
    assert moved["revision"] == prod["revision"]
    aliases = {a["name"]: a["aliases"] for a in platform.admin().apps()}["echo2"]
    assert aliases["staging"] == aliases["prod"] == prod["revision"]
