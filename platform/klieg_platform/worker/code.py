"""Unpacked code archives on a node, keyed by content hash, each unpacked once.

Unpacking happens under a file lock and is published with a marker file, so concurrent workers
on one node share a folder and a half-unpacked folder is never used.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

from klieg import archive
from klieg.exceptions import DeployError
from klieg_platform.storage import BlobStore, code_key

MARKER = ".klieg-code-complete"


class CodeCache:
    def __init__(self, root: Path, store: BlobStore) -> None:
        self.root = root
        self.store = store
        root.mkdir(parents=True, exist_ok=True)

    def ensure(self, code_hash: str) -> Path:
        """The folder holding the unpacked archive ``code_hash``."""
        dest = self.root / code_hash
        if (dest / MARKER).exists():
            return dest
        with open(self.root / f"{code_hash}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (dest / MARKER).exists():
                return dest
            data = self.store.get(code_key(code_hash))
            if archive.digest(data) != code_hash:
                raise DeployError(f"code archive {code_hash} is corrupt in the blob store")
            shutil.rmtree(dest, ignore_errors=True)
            archive.unpack(data, dest)
            (dest / MARKER).write_text(code_hash)
        return dest
