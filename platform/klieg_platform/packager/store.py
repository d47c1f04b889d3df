"""The content-addressed env store on disk: one directory per key, one lock per key, a marker.

Layout under ``root`` (``Settings.env_dir``)::

    <key>/                    the venv; complete only when <key>/.klieg-env.json exists
    .locks/<key>.lock         flock(2) target serialising builds of <key>
    _sdk/<fingerprint>/*.whl  SDK wheels (see ``sdk.py``)

Guarantees: the marker is written atomically (temp file + rename) and only by ``publish``, so a
directory without it is a leftover of an interrupted build and is never reported as existing.
``exclusive_lock`` uses ``flock`` on a fresh file descriptor per call, so it excludes other
processes and other threads of the same process alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from klieg_platform.packager.spec import check_key

MARKER = ".klieg-env.json"


@contextlib.contextmanager
def exclusive_lock(
    path: Path, on_wait: Callable[[], None] | None = None, *, wait: bool = True
) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); ``on_wait`` runs if blocked.
    Yields True once held; with ``wait=False`` a lock held elsewhere yields False at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or all of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class EnvStore:
    """Paths, locks and completion markers of the envs under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    def marker(self, key: str) -> Path:
        return self.path(key) / MARKER

    def exists(self, key: str) -> bool:
        return self.marker(key).is_file()

    def read_marker(self, key: str) -> dict[str, Any] | None:
        """The marker record of a complete env, or None if the env is not complete."""
        try:
            record: dict[str, Any] = json.loads(self.marker(key).read_text())
        except FileNotFoundError:
            return None
        return record

    def lock(
        self, key: str, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractContextManager[bool]:
        """Context manager holding the build lock of ``key``."""
        check_key(key)
        return exclusive_lock(self.root / ".locks" / f"{key}.lock", on_wait)

    def publish(self, key: str, record: dict[str, Any]) -> None:
        """Write the completion marker: the last step of a build."""
        data = json.dumps(record, indent=2, sort_keys=True).encode()
        write_atomic(self.marker(key), data)

    def remove(self, key: str) -> bool:
        """Delete a complete env no revision uses any more, safe against a build or a start of
        the same key: under its build lock (taken without waiting: a build in progress keeps
        it, False), the marker goes first, so from then on nothing takes the env as built (a
        start builds it again under the lock), then the directory. False when it was not
        there."""
        check_key(key)
        with exclusive_lock(self.root / ".locks" / f"{key}.lock", wait=False) as held:
            if not held or not self.path(key).exists():
                return False
            with contextlib.suppress(FileNotFoundError):
                self.marker(key).unlink()
            self.discard(key)
            return True

    def discard(self, key: str) -> None:
        """Remove whatever is at the env directory (a half-built or failed env)."""
        path = self.path(key)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
