"""``Packager.lock`` against the real indexes of this machine, with the real uv."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from klieg_platform.packager import EnvResolutionError, EnvSpec, LockedEnv, Packager
from klieg_platform.packager.sdk import sdk_source_dir
from tests.klieg_platform.packager.conftest import SIX_SPEC, make_settings

pytestmark = pytest.mark.timeout(120)


def test_lock_resolves_requirements_with_the_sdk_dependencies(tmp_path: Path) -> None:
    packager = Packager(make_settings(tmp_path / "home"))
    progress: list[str] = []
    env = packager.lock(SIX_SPEC, progress.append)
    pins = env.lock.splitlines()
    assert "six==1.16.0" in pins
    names = {pin.split("==")[0] for pin in pins}
    assert {"pydantic", "httpx", "cloudpickle", "pyyaml"} <= names
    assert "klieg" not in names
    assert pins == sorted(pins, key=lambda pin: (pin.split("==")[0], pin))
    assert all("==" in pin and pin == pin.strip() for pin in pins)
    assert env.python == "3.11" and len(env.key) == 64
    assert progress[0].startswith("resolving") and env.key[:12] in progress[-1]
    assert not (tmp_path / "home").exists(), "lock must not write to disk"


def test_lock_key_ignores_requirement_order_and_spelling(shared_packager: Packager) -> None:
    first = shared_packager.lock(EnvSpec("3.11", ("six==1.16.0", "idna==3.10")))
    second = shared_packager.lock(EnvSpec("3.11", ("IDNA == 3.10", "Six==1.16.0")))
    assert first == second
    other = shared_packager.lock(EnvSpec("3.11", ("six==1.16.0", "idna==3.9")))
    assert other.key != first.key and "idna==3.9" in other.lock.splitlines()


def test_torch_resolves_to_the_local_cpu_wheel(shared_packager: Packager) -> None:
    env = shared_packager.lock(EnvSpec("3.11", ("torch==2.13.0",)))
    pins = env.lock.splitlines()
    assert "torch==2.13.0+cpu" in pins
    assert not [pin for pin in pins if pin.startswith(("nvidia", "triton", "cuda"))]


def test_unresolvable_requirement_raises_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    packager = Packager(make_settings(home))
    with pytest.raises(EnvResolutionError) as info:
        packager.lock(EnvSpec("3.11", ("klieg-no-such-package-xyz==1.0",)))
    detail = info.value.detail
    assert isinstance(detail, str)
    assert "klieg-no-such-package-xyz" in detail and "No solution found" in detail
    assert info.value.status_code == 400 and info.value.error_type == "EnvResolutionError"
    assert not home.exists()


def test_a_changed_sdk_source_changes_the_key(tmp_path: Path, six_env: LockedEnv) -> None:
    source = sdk_source_dir()
    copy = tmp_path / "sdk"
    shutil.copytree(source / "klieg", copy / "klieg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(source / "pyproject.toml", copy / "pyproject.toml")
    (copy / "klieg" / "extra_module.py").write_text("VALUE = 1\n")
    packager = Packager(make_settings(tmp_path / "home"), sdk_source=copy)
    env = packager.lock(SIX_SPEC)
    assert env.lock == six_env.lock
    assert env.key != six_env.key


def test_a_cached_lock_of_an_unchanged_spec_is_not_resolved_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packager = Packager(make_settings(tmp_path / "home"))
    compiled: list[tuple[str, ...]] = []
    compile_ = packager.uv.compile

    def counting(requirements: Sequence[str], python: str) -> str:
        compiled.append(tuple(requirements))
        return compile_(requirements, python)

    monkeypatch.setattr(packager.uv, "compile", counting)
    first = packager.lock(SIX_SPEC, cached=True)
    said: list[str] = []
    assert packager.lock(SIX_SPEC, said.append, cached=True) == first
    assert len(compiled) == 1 and "lock reused" in said[0]
    assert packager.lock(SIX_SPEC) == first and len(compiled) == 2  # a deploy resolves again
    other = EnvSpec(SIX_SPEC.python, (*SIX_SPEC.requirements, "packaging"))
    assert packager.lock(other, cached=True).key != first.key and len(compiled) == 3
