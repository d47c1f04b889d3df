"""Local filesystem blob store under one root folder (the embedded default)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from klieg.exceptions import NotFoundError
from klieg_platform.storage import check_key


class LocalBlobStore:
    """Objects are files under ``root``; ``put`` writes a temp file and renames it into place.

    Keys are checked by their text (``check_key``), not by resolving them on disk: this store
    creates no links, so a valid key names a file under ``root``, and a ``put`` costs a few
    system calls (media of a batch are many small ``put``s)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._base = str(self.root)

    def _path(self, key: str) -> str:
        return f"{self._base}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        folder = os.path.dirname(path)
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
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
