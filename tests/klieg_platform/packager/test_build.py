"""``Packager.build``: real venvs, the completion marker, the per-key lock, failures."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from klieg_platform.packager import EnvBuildError, LockedEnv, Packager, env_key
from klieg_platform.packager.sdk import read_sdk, sdk_fingerprint, sdk_source_dir
from klieg_platform.packager.store import MARKER
from tests.klieg_platform.packager.conftest import BuiltEnv, make_settings

pytestmark = pytest.mark.timeout(180)

PROBE = "import json, six, klieg; print(json.dumps([six.__version__, klieg.__file__]))"


def probe(packager: Packager, key: str) -> tuple[str, Path]:
    """Run the env's interpreter: (six version, where klieg was imported from)."""
    out = subprocess.run(
        [str(packager.python(key)), "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    version, klieg_file = json.loads(out.stdout)
    return version, Path(klieg_file)


def test_build_creates_a_working_env(built_six: BuiltEnv) -> None:
    packager, env = built_six.packager, built_six.env
    assert built_six.path == packager.path(env.key)
    assert packager.exists(env.key)
    version, klieg_file = probe(packager, env.key)
    assert version == "1.16.0"
    assert klieg_file.is_relative_to(built_six.path), "klieg must be installed in the env"
    record = json.loads((built_six.path / MARKER).read_text())
    assert record["key"] == env.key and record["python"] == "3.11" and record["lock"] == env.lock
    lines = built_six.progress
    for step in ("creating venv", "installing", "installing klieg SDK", "ready in"):
        assert any(step in line for line in lines), (step, lines)
    assert lines[-1].startswith(f"env {env.key[:12]} ready in")


def test_second_build_reuses_the_env(built_six: BuiltEnv) -> None:
    packager, env = built_six.packager, built_six.env
    marker = built_six.path / MARKER
    before = marker.stat().st_mtime_ns
    progress: list[str] = []
    assert Packager(packager.settings).build(env, progress.append) == built_six.path
    assert progress == [f"env {env.key[:12]} already built, reusing"]
    assert marker.stat().st_mtime_ns == before


def test_concurrent_builds_of_one_key_build_once(tmp_path: Path, six_env: LockedEnv) -> None:
    settings = make_settings(tmp_path / "home")
    barrier = threading.Barrier(2)
    logs: list[list[str]] = [[], []]
    paths: list[Path | None] = [None, None]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        packager = Packager(settings)
        barrier.wait()
        try:
            paths[index] = packager.build(six_env, logs[index].append)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not errors
    assert paths[0] == paths[1] == Packager(settings).path(six_env.key)
    builds = [log for log in logs if any("creating venv" in line for line in log)]
    assert len(builds) == 1, logs
    reused = [log for log in logs if log[-1].endswith("already built, reusing")]
    assert len(reused) == 1, logs
    assert probe(Packager(settings), six_env.key)[0] == "1.16.0"


def test_half_built_leftover_is_removed_and_rebuilt(tmp_path: Path, six_env: LockedEnv) -> None:
    packager = Packager(make_settings(tmp_path / "home"))
    leftover = packager.path(six_env.key)
    (leftover / "bin").mkdir(parents=True)
    (leftover / "bin" / "python").write_text("not a python")
    (leftover / "junk.txt").write_text("interrupted build")
    assert not packager.exists(six_env.key)
    progress: list[str] = []
    packager.build(six_env, progress.append)
    assert any(line.startswith("removing half-built env") for line in progress)
    assert not (leftover / "junk.txt").exists()
    assert packager.exists(six_env.key)
    assert probe(packager, six_env.key)[0] == "1.16.0"


def test_failed_build_leaves_no_marker_and_no_dir(tmp_path: Path) -> None:
    packager = Packager(make_settings(tmp_path / "home"))
    lock = "six==99.0.0\n"
    fingerprint = sdk_fingerprint(read_sdk(sdk_source_dir()))
    env = LockedEnv(python="3.11", lock=lock, key=env_key("3.11", lock, fingerprint))
    with pytest.raises(EnvBuildError) as info:
        packager.build(env)
    assert "installing packages failed" in str(info.value.detail)
    assert "six" in str(info.value.detail)
    assert not packager.exists(env.key)
    assert not packager.path(env.key).exists()


def test_build_rejects_a_key_that_does_not_match_its_lock(
    tmp_path: Path, six_env: LockedEnv
) -> None:
    packager = Packager(make_settings(tmp_path / "home"))
    forged = LockedEnv(python=six_env.python, lock=six_env.lock, key="0" * 64)
    with pytest.raises(EnvBuildError, match="does not match"):
        packager.build(forged)
    assert not packager.path(forged.key).exists()
    with pytest.raises(ValueError):
        packager.path("../../etc")


def test_the_env_images_build_step_publishes_the_env(six_env: LockedEnv, tmp_path: Path) -> None:
    """``python -m klieg_platform.packager ENV.json``, as ``infra/images/env.Dockerfile`` runs
    it: the env built and published (marker written) under ``$KLIEG_HOME/envs/<key>``."""
    import os
    import sys

    doc = tmp_path / "env.json"
    doc.write_text(json.dumps({"python": six_env.python, "lock": six_env.lock, "key": six_env.key}))
    home = tmp_path / "home"
    env = {**os.environ, "KLIEG_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "klieg_platform.packager", str(doc)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (home / "envs" / six_env.key / ".klieg-env.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "klieg_platform.packager"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("usage:")


def test_remove_waits_for_no_build_and_a_later_start_builds_the_env_again(
    tmp_path: Path, six_env: LockedEnv
) -> None:
    packager = Packager(make_settings(tmp_path / "home"))
    assert not packager.remove(six_env.key)  # nothing there
    packager.build(six_env)
    with packager.store.lock(six_env.key):  # a build of the same key holds the lock
        assert not packager.remove(six_env.key)
        assert packager.exists(six_env.key)
    assert packager.remove(six_env.key)
    assert not packager.exists(six_env.key) and not packager.path(six_env.key).exists()
    progress: list[str] = []
    packager.build(six_env, progress.append)  # what a runner start does: built again
    assert any("creating venv" in line for line in progress)
    assert probe(packager, six_env.key)[0] == "1.16.0"
