"""Content-addressed Python environments for app revisions, built with uv.

Contract::

    packager = Packager(settings)              # envs live under settings.env_dir
    env = packager.lock(EnvSpec("3.11", ("torch==2.13.0",)), progress=print)
    env.key                                    # sha256(normalised lock, python, SDK fingerprint)
    packager.build(env, progress=print)        # idempotent; returns packager.path(env.key)
    packager.exists(env.key)                   # True only once the completion marker exists
    packager.python(env.key)                   # <path>/bin/python, with `klieg` installed

- ``lock`` resolves the requirements plus the SDK's own dependencies with ``uv pip compile``
  against the machine's pip settings (``settings.pip``); it writes nothing. Unresolvable
  requirements raise ``EnvResolutionError`` whose ``detail`` carries uv's message.
- The lock is normalised (one canonical ``name==version`` per line, sorted), so requirement
  order, comments, whitespace and name spelling do not change the key; a changed pin, Python
  version or SDK source does.
- ``build`` runs under an exclusive file lock per key, removes a half-built directory, creates
  the venv, syncs the lock, installs the SDK wheel (``--no-deps``) and writes the completion
  marker last. A failure raises ``EnvBuildError`` and leaves no marker.
"""

from __future__ import annotations

from klieg_platform.packager.builder import Packager
from klieg_platform.packager.spec import (
    EnvBuildError,
    EnvResolutionError,
    EnvSpec,
    LockedEnv,
    Progress,
    env_key,
    normalise_lock,
)

__all__ = [
    "EnvBuildError",
    "EnvResolutionError",
    "EnvSpec",
    "LockedEnv",
    "Packager",
    "Progress",
    "env_key",
    "normalise_lock",
]
