"""Local filesystem blob store under one root folder (the embedded default)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from klieg.exceptions import NotFoundError
from klieg_platform.storage import StorageError, check_key

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_TEMP_IDS = itertools.count()
"""Temp names are unique among live processes (pid) and per put (the count; ``next`` is
atomic). One left by a dead process of the same pid is simply overwritten."""


class LocalBlobStore:
    """Objects are files under ``root``; ``put`` writes a temp file and renames it into place.

    Keys are checked by their text (``check_key``), not by resolving them on disk: this store
    creates no links, so a valid key names a file under ``root``, and a ``put`` costs a few
    system calls (media of a batch are many small ``put``s)."""

    inline_put_bytes = 256 * 1024

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._base = str(self.root)

    def _path(self, key: str) -> str:
        return f"{self._base}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` atomically; a full or failing disk raises ``StorageError``."""
        path = self._path(key)
        try:
            self._write(path, data)
        except OSError as exc:
            raise StorageError(f"cannot write blob {key!r}: {exc.strerror or exc}") from exc

    def _write(self, path: str, data: bytes) -> None:
        tmp = f"{os.path.dirname(path)}/.tmp-{os.getpid()}-{next(_TEMP_IDS)}"
        try:
            fd = os.open(tmp, _CREATE, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, _CREATE, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"blob {key!r} not found") from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def written_before(self, prefix: str, before: float, limit: int) -> list[str]:
        """Files under ``prefix`` modified before ``before`` (left-over temp files too). Empty
        folders untouched since ``before`` are removed on the way (a folder emptied now goes on
        the next sweep; a ``put`` into a removed folder creates it again)."""
        top = self._path(prefix.rstrip("/"))
        found: list[str] = []
        for folder, dirs, files in os.walk(top, topdown=False):
            for name in files:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < before:
                        found.append(os.path.relpath(path, self._base).replace(os.sep, "/"))
                        if len(found) >= limit:
                            return found
            if folder != top and not dirs and not files:
                with contextlib.suppress(OSError):
                    if os.stat(folder).st_mtime < before:
                        os.rmdir(folder)
        return found
