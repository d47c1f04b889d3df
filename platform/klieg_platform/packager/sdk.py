"""The Klieg SDK as installed into every env: its fingerprint, its dependencies, its wheel.

The SDK source is the folder holding ``pyproject.toml`` and ``klieg/`` (``sdk/`` in the repo).
Fingerprint = sha256 over ``pyproject.toml`` and every file under ``klieg/`` (caches excluded),
as sorted relative paths plus contents. The wheel is built once per fingerprint from exactly the
bytes that were fingerprinted (copied to a staging dir), under a file lock, and published by
renaming its output directory into place, so a wheel directory is always complete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import klieg
from klieg_platform.packager.spec import EnvBuildError, Progress
from klieg_platform.packager.store import exclusive_lock
from klieg_platform.packager.uvtool import Uv, UvFailed

SdkFiles = Mapping[str, bytes]

_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def sdk_source_dir() -> Path:
    """The folder the imported ``klieg`` package lives in (holds ``pyproject.toml``)."""
    return Path(klieg.__file__).resolve().parent.parent


def read_sdk(source: Path) -> dict[str, bytes]:
    """Relative posix path -> contents of every fingerprinted SDK file under ``source``."""
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file() or not (source / "klieg").is_dir():
        raise EnvBuildError(f"klieg SDK source not found: {source} lacks pyproject.toml or klieg/")
    files = {"pyproject.toml": pyproject.read_bytes()}
    for dirpath, dirnames, filenames in os.walk(source / "klieg"):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix not in _SKIPPED_SUFFIXES and path.is_file():
                files[path.relative_to(source).as_posix()] = path.read_bytes()
    return files


def sdk_fingerprint(files: SdkFiles) -> str:
    """sha256 hex over the sorted relative paths and contents of the SDK files."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def sdk_requirements() -> tuple[str, ...]:
    """The installed ``klieg`` distribution's dependencies, extras-only ones left out."""
    requires = importlib.metadata.requires("klieg") or []
    return tuple(req for req in requires if "extra" not in req.partition(";")[2])


class SdkWheels:
    """Builds and caches one SDK wheel per fingerprint under ``root/<fingerprint>/``."""

    def __init__(self, root: Path, uv: Uv) -> None:
        self.root = root
        self.uv = uv

    def wheel(self, files: SdkFiles, progress: Progress) -> Path:
        """The wheel built from ``files``; builds it first if no process has yet."""
        fingerprint = sdk_fingerprint(files)
        target = self.root / fingerprint
        found = self._find(target)
        if found is not None:
            return found
        with exclusive_lock(self.root / f"{fingerprint}.lock"):
            found = self._find(target)
            if found is not None:
                return found
            progress(f"building klieg SDK wheel {fingerprint[:12]}")
            self._build(files, target)
        built = self._find(target)
        if built is None:
            raise EnvBuildError(f"building the klieg SDK produced no wheel in {target}")
        return built

    @staticmethod
    def _find(target: Path) -> Path | None:
        wheels = sorted(target.glob("*.whl")) if target.is_dir() else []
        return wheels[0] if len(wheels) == 1 else None

    def _build(self, files: SdkFiles, target: Path) -> None:
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".build-") as tmp:
            stage, out = Path(tmp, "src"), Path(tmp, "dist")
            for rel, data in files.items():
                path = stage / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            try:
                self.uv.build_wheel(stage, out, Path(sys.executable))
            except UvFailed as exc:
                detail = f"building the klieg SDK wheel failed:\n{exc.message()}"
                raise EnvBuildError(detail) from exc
            if len(list(out.glob("*.whl"))) != 1:
                raise EnvBuildError(f"building the klieg SDK wheel produced {list(out.iterdir())}")
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
