"""Complete envs copied from one env store into another: how a node gets the envs an env image
(``klieg images build``) carries instead of resolving and building them.

``seed(source, target)`` copies every complete env of the store at ``source`` (an env directory
with its completion marker) that the store at ``target`` lacks. Each copy holds the target's
build lock of that key (so a worker building the same key waits and then reuses it), goes into
a hidden directory beside its place, is renamed into place and gets its marker last: a reader
never takes a half-copied env for a complete one, and a leftover of an interrupted copy is
replaced. An env keeps working where its files land as long as the Python it was made with is
at the same path (an env image is built on the platform image its workers run).

The Kubernetes and compose wiring run ``python -m klieg_platform.packager seed DIR`` from each
env image, into the volume the worker's env store lives on (``klieg images build
--manifests``), before the worker starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from klieg_platform.packager.spec import check_key
from klieg_platform.packager.store import MARKER, EnvStore


def copy_env(source: EnvStore, target: EnvStore, key: str) -> bool:
    """Make env ``key`` complete in ``target`` from ``source``; True when it is there (copied
    now, or already), False when ``source`` has no complete env of that key."""
    record = source.read_marker(key)
    if record is None or record.get("key") != key:
        return False
    with target.lock(key):
        if target.exists(key):
            return True
        target.discard(key)  # a half-built or half-copied leftover
        incoming = target.root / f".incoming-{key}"
        shutil.rmtree(incoming, ignore_errors=True)
        try:
            shutil.copytree(source.path(key), incoming, symlinks=True,
                            ignore=shutil.ignore_patterns(MARKER))  # fmt: skip
            os.replace(incoming, target.path(key))
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        target.publish(key, record)
    return True


def seed(source_root: Path, target_root: Path) -> list[str]:
    """Copy every complete env under ``source_root`` that ``target_root`` lacks; the keys now
    complete in the target, sorted."""
    source, target = EnvStore(source_root), EnvStore(target_root)
    found = []
    for entry in sorted(source_root.iterdir()) if source_root.is_dir() else []:
        try:
            check_key(entry.name)
        except ValueError:
            continue  # the locks, the SDK wheels
        if copy_env(source, target, entry.name):
            found.append(entry.name)
    return found
