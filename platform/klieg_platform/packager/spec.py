"""Env specs, normalised locks and env keys: the data half of the packager contract.

Guarantees: ``normalise_lock`` is insensitive to line order, comments, blank lines, hash options,
whitespace and project-name spelling (PEP 503); ``env_key`` changes whenever a pinned version,
the Python version or the SDK fingerprint changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from klieg.exceptions import DeployError

Progress = Callable[[str], None]

_PYTHON = re.compile(r"3\.[0-9]{1,2}(\.[0-9]{1,2})?")
_KEY = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(.*)$", re.DOTALL)
_COMMENT = re.compile(r"(^|\s)#.*$")
_HASH_OPTION = re.compile(r"\s*--hash[=\s]\S+")


class EnvResolutionError(DeployError):
    """The requirements cannot be resolved; ``detail`` carries uv's message."""


class EnvBuildError(DeployError):
    """The env could not be built; ``detail`` carries uv's message."""


@dataclass(frozen=True)
class EnvSpec:
    """What an app asks for: a Python version (``"3.11"``) and requirement strings."""

    python: str
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockedEnv:
    """A fully resolved env. ``lock`` is normalised; ``key`` = sha256(lock, python, SDK)."""

    python: str
    lock: str
    key: str


def canonical_name(name: str) -> str:
    """PEP 503 normal form of a project name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str | None:
    """Canonical project name a requirement line starts with, or None if it has none."""
    match = _NAME.match(requirement.strip())
    return canonical_name(match.group(1)) if match else None


def check_python(python: str) -> None:
    """Reject anything but a ``3.X`` or ``3.X.Y`` version string."""
    if not _PYTHON.fullmatch(python):
        raise EnvResolutionError(f"python must be a version like '3.11', got {python!r}")


def check_requirements(requirements: Iterable[str]) -> None:
    """Reject requirement strings that are empty, multi-line or pip options (``-i``, ``-e``)."""
    for req in requirements:
        text = req.strip()
        if not text or "\n" in text or "\r" in text or text.startswith("-"):
            raise EnvResolutionError(f"invalid requirement {req!r}: expected one PEP 508 string")


def check_key(key: str) -> None:
    """Reject anything that is not a 64-character lowercase sha256 hex digest."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"not an env key: {key!r}")


def _logical_lines(text: str) -> Iterator[str]:
    """Lines of a requirements file with backslash continuations joined."""
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _canonical_line(line: str) -> str:
    match = _NAME.match(line)
    if not match:
        return " ".join(line.split())
    name, rest = canonical_name(match.group(1)), match.group(2).strip()
    spec, _, marker = rest.partition(";")
    spec = " @ " + spec[1:].strip() if spec.startswith("@") else "".join(spec.split())
    marker = " ".join(marker.split())
    return name + spec + (f"; {marker}" if marker else "")


def normalise_lock(text: str) -> str:
    """One canonical ``name==version`` line per package, sorted, newline-terminated."""
    lines: set[str] = set()
    for raw in _logical_lines(text):
        line = _HASH_OPTION.sub("", _COMMENT.sub("", raw)).strip()
        if line:
            lines.add(_canonical_line(line))
    ordered = sorted(lines, key=lambda line: (requirement_name(line) or "", line))
    return "".join(f"{line}\n" for line in ordered)


def lock_packages(lock: str) -> list[str]:
    """The non-empty lines of a normalised lock."""
    return [line for line in lock.splitlines() if line.strip()]


def env_key(python: str, lock: str, sdk_fingerprint: str) -> str:
    """sha256 hex of the normalised lock, the Python version and the SDK fingerprint."""
    digest = hashlib.sha256()
    for part in (f"python={python}", f"sdk={sdk_fingerprint}", normalise_lock(lock)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
