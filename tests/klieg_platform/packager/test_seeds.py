"""Seeding an env store from another (``packager/seeds.py``), as an env image's init container
does into a worker's env store volume: real uv-built envs, real directories. A seeded env is
complete (marker last), runs from where it landed, and a worker's packager finds it built
instead of resolving and building it; half-copied leftovers are replaced, complete envs kept,
sources without a marker ignored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from klieg_platform.packager import Packager
from klieg_platform.packager.seeds import copy_env, seed
from klieg_platform.packager.store import MARKER, EnvStore
from tests.klieg_platform.packager.conftest import BuiltEnv, make_settings

pytestmark = pytest.mark.timeout(600)


def test_a_seeded_env_is_complete_runs_and_is_not_built_again(
    built_six: BuiltEnv, tmp_path: Path
) -> None:
    key = built_six.env.key
    source_root = built_six.packager.store.root
    node = make_settings(tmp_path / "node")  # a fresh node: an empty env store
    assert seed(source_root, node.env_dir) == [key]
    copied = node.env_dir / key
    record = json.loads((copied / MARKER).read_text())
    assert record == json.loads((built_six.path / MARKER).read_text())
    assert not list(node.env_dir.glob(".incoming-*"))
    ran = subprocess.run([str(copied / "bin" / "python"), "-c",
                          "import six, sys, klieg; print(six.__version__, sys.prefix)"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    version, prefix = ran.stdout.split()
    assert version == "1.16.0" and Path(prefix) == copied  # its own files, not the source's
    progress: list[str] = []
    packager = Packager(node)
    assert packager.exists(key)
    assert packager.build(built_six.env, progress.append) == copied
    assert progress == [f"env {key[:12]} already built, reusing"]  # no uv run at all
    assert seed(source_root, node.env_dir) == [key]  # again: kept as it is
    assert (copied / MARKER).read_text() == json.dumps(record, indent=2, sort_keys=True)


def test_a_half_copied_env_is_replaced_and_a_source_without_marker_ignored(
    built_six: BuiltEnv, tmp_path: Path
) -> None:
    key = built_six.env.key
    source, target = built_six.packager.store, EnvStore(tmp_path / "envs")
    leftover = target.path(key)
    leftover.mkdir(parents=True)
    (leftover / "half-written").write_text("x")  # an interrupted copy: no marker
    (target.root / f".incoming-{key}").mkdir()
    assert copy_env(source, target, key)
    assert target.exists(key) and not (leftover / "half-written").exists()
    assert not (target.root / f".incoming-{key}").exists()

    unmarked = EnvStore(tmp_path / "unmarked")
    shutil.copytree(source.path(key), unmarked.path(key), symlinks=True,
                    ignore=shutil.ignore_patterns(MARKER))  # fmt: skip
    elsewhere = EnvStore(tmp_path / "elsewhere")
    assert not copy_env(unmarked, elsewhere, key)
    assert seed(unmarked.root, elsewhere.root) == []
    assert not elsewhere.path(key).exists()
    assert seed(tmp_path / "no-such-store", elsewhere.root) == []


def test_the_init_containers_command_seeds_the_volume(built_six: BuiltEnv, tmp_path: Path) -> None:
    """``python -m klieg_platform.packager seed DIR``, as an env image runs it: from its own
    ``$KLIEG_HOME/envs`` into ``DIR``."""
    key = built_six.env.key
    env = {**os.environ, "KLIEG_HOME": str(built_six.packager.settings.home)}
    volume = tmp_path / "volume"
    done = subprocess.run([sys.executable, "-m", "klieg_platform.packager", "seed", str(volume)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"env {key} in {volume}"]
    assert EnvStore(volume).exists(key)
