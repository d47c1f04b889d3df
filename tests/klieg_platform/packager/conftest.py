"""Shared fixtures: one env store per session so real builds are done once and reused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from klieg_platform.config import Settings
from klieg_platform.packager import EnvSpec, LockedEnv, Packager

SIX_SPEC = EnvSpec(python="3.11", requirements=("six==1.16.0",))


def make_settings(home: Path) -> Settings:
    """Settings rooted at ``home`` with this machine's pip settings (find-links, indexes)."""
    return Settings.from_env().with_(home=home)


@dataclass
class BuiltEnv:
    packager: Packager
    env: LockedEnv
    path: Path
    progress: list[str]


@pytest.fixture(scope="session")
def shared_packager(tmp_path_factory: pytest.TempPathFactory) -> Packager:
    return Packager(make_settings(tmp_path_factory.mktemp("klieg-home")))


@pytest.fixture(scope="session")
def six_env(shared_packager: Packager) -> LockedEnv:
    return shared_packager.lock(SIX_SPEC)


@pytest.fixture(scope="session")
def built_six(shared_packager: Packager, six_env: LockedEnv) -> BuiltEnv:
    progress: list[str] = []
    path = shared_packager.build(six_env, progress.append)
    return BuiltEnv(shared_packager, six_env, path, progress)
