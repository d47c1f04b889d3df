"""Code archives: an app's folder packed deterministically, so its hash identifies its content.

``pack(folder)`` gives the same bytes for the same files whatever their mtimes or owners;
``unpack(data, dest)`` refuses members that would land outside ``dest``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from klieg.exceptions import DeployError

MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def files(folder: Path) -> list[Path]:
    """The files ``pack`` puts in the archive of ``folder``, sorted."""
    out: list[Path] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and not path.name.endswith(_SKIP_SUFFIXES):
            out.append(path)
    return out


def pack(folder: Path) -> bytes:
    """A gzip'd tar of ``folder`` with fixed metadata, so equal content gives equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files(folder):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    out = gzip.compress(raw.getvalue(), mtime=0)
    if len(out) > MAX_ARCHIVE_BYTES:
        raise DeployError(
            f"code archive of {folder} is {len(out)} bytes; the limit is "
            f"{MAX_ARCHIVE_BYTES} (keep weights in a blob store or a package)"
        )
    return out


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(data: bytes, dest: Path) -> None:
    """Extract an archive made by :func:`pack` into ``dest`` (regular files only)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not member.isfile() or root not in target.parents:
                raise DeployError(f"refusing archive member {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
            target.chmod(member.mode & 0o755)
