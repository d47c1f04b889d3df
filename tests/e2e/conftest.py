"""Session fixtures: one real platform (embedded Redis, SQLite, worker, runners) for the e2e tests.

Env builds are cached across the session by sharing one ``KLIEG_HOME``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import APPS, Platform, running_platform


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("klieg-home")
    with running_platform(home) as p:
        p.bootstrap()
        yield p


@pytest.fixture(scope="session")
def echo_deployed(platform: Platform) -> dict[str, object]:
    return platform.deploy(APPS / "echo" / "app.py")


@pytest.fixture()
def apps_dir() -> Path:
    return APPS
