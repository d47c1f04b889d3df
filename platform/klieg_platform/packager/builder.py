"""``Packager``: resolve an ``EnvSpec`` to a ``LockedEnv`` and build it into the env store.

``lock`` writes nothing to disk. ``build`` is idempotent and safe across processes and threads:
builds of one key are serialised by a file lock, the second caller waits and reuses the first
one's env, a directory without a completion marker is removed and rebuilt, and a failed build
leaves no marker (and no directory) behind.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from klieg_platform.config import Settings
from klieg_platform.packager.sdk import (
    SdkWheels,
    read_sdk,
    sdk_fingerprint,
    sdk_requirements,
    sdk_source_dir,
)
from klieg_platform.packager.spec import (
    EnvBuildError,
    EnvResolutionError,
    EnvSpec,
    LockedEnv,
    Progress,
    check_python,
    check_requirements,
    env_key,
    lock_packages,
    normalise_lock,
    requirement_name,
)
from klieg_platform.packager.store import EnvStore
from klieg_platform.packager.uvtool import Uv, UvFailed

LOCKFILE = "klieg.lock.txt"
LOCKS_KEPT = 256
"""Locks a packager remembers for ``lock(cached=True)``, the oldest forgotten first."""


def _quiet(line: str) -> None:
    """Progress sink used when the caller passes none."""


class Packager:
    """Env spec -> lock -> key; build with uv under a lock + completion marker.

    ``sdk_source`` overrides the SDK folder (default: where the imported ``klieg`` lives).
    """

    def __init__(self, settings: Settings, *, sdk_source: Path | None = None) -> None:
        self.settings = settings
        self.store = EnvStore(settings.env_dir)
        self.uv = Uv(settings.pip)
        self.sdk_source = sdk_source or sdk_source_dir()
        self.wheels = SdkWheels(settings.env_dir / "_sdk", self.uv)
        self._locks: dict[tuple[str, tuple[str, ...], str], LockedEnv] = {}
        """(python, requirements, SDK fingerprint) -> the lock last resolved for it."""
        self._locks_guard = threading.Lock()

    def lock(
        self, spec: EnvSpec, progress: Progress | None = None, *, cached: bool = False
    ) -> LockedEnv:
        """Resolve the user's requirements together with the SDK's; raise EnvResolutionError.
        ``cached``: the lock this packager last resolved for the same spec (Python,
        requirements, SDK) when it has one, without running ``uv pip compile`` again (the
        dev loop's reloads: unpinned requirements then keep the versions first resolved)."""
        say = progress or _quiet
        check_python(spec.python)
        check_requirements(spec.requirements)
        user = [req for req in spec.requirements if requirement_name(req) != "klieg"]
        fingerprint = sdk_fingerprint(read_sdk(self.sdk_source))
        remembered = (spec.python, tuple(spec.requirements), fingerprint)
        if cached and (found := self._locks.get(remembered)) is not None:
            say(f"requirements unchanged: env {found.key[:12]} (lock reused)")
            return found
        say(f"resolving {len(user)} requirement(s) for python {spec.python}")
        try:
            raw = self.uv.compile([*user, *sdk_requirements()], spec.python)
        except UvFailed as exc:
            listed = ", ".join(user) or "(none)"
            raise EnvResolutionError(
                f"cannot resolve requirements {listed} for python {spec.python}:\n{exc.message()}"
            ) from exc
        lock = normalise_lock(raw)
        key = env_key(spec.python, lock, fingerprint)
        say(f"resolved {len(lock_packages(lock))} packages: env {key[:12]}")
        locked = LockedEnv(python=spec.python, lock=lock, key=key)
        with self._locks_guard:
            self._locks[remembered] = locked
            while len(self._locks) > LOCKS_KEPT:
                self._locks.pop(next(iter(self._locks)))
        return locked

    def exists(self, key: str) -> bool:
        """True only when the env's completion marker is present."""
        return self.store.exists(key)

    def remove(self, key: str) -> bool:
        """Delete the env of ``key`` (no revision uses it any more): under its build lock,
        marker first (``EnvStore.remove``); False when a build holds it or it is not here."""
        return self.store.remove(key)

    def path(self, key: str) -> Path:
        """The env directory of ``key`` (which may not exist yet)."""
        return self.store.path(key)

    def python(self, key: str) -> Path:
        """The env's interpreter."""
        return self.path(key) / "bin" / "python"

    def build(self, env: LockedEnv, progress: Progress | None = None) -> Path:
        """Build the env of ``env.key`` unless it exists; return its directory."""
        say = progress or _quiet
        short = env.key[:12]
        if self.exists(env.key):
            say(f"env {short} already built, reusing")
            return self.path(env.key)
        check_python(env.python)
        files = read_sdk(self.sdk_source)
        if env_key(env.python, env.lock, sdk_fingerprint(files)) != env.key:
            raise EnvBuildError(
                f"env {short}: key does not match its lock, python and the current klieg SDK "
                "(the SDK changed since it was locked?); lock the spec again"
            )
        waiting = f"env {short} is being built elsewhere, waiting"
        with self.store.lock(env.key, lambda: say(waiting)):
            if self.exists(env.key):
                say(f"env {short} already built, reusing")
                return self.path(env.key)
            started = time.monotonic()
            try:
                self._build(env, files, say)
            except BaseException:
                self.store.discard(env.key)
                raise
            seconds = time.monotonic() - started
            self.store.publish(
                env.key,
                {
                    "key": env.key,
                    "python": env.python,
                    "lock": env.lock,
                    "sdk": sdk_fingerprint(files),
                    "build_seconds": round(seconds, 3),
                    "built_at": time.time(),
                },
            )
        say(f"env {short} ready in {seconds:.1f}s")
        return self.path(env.key)

    def _build(self, env: LockedEnv, files: dict[str, bytes], say: Progress) -> None:
        path, short = self.path(env.key), env.key[:12]
        if path.exists() or path.is_symlink():
            say(f"removing half-built env {short}")
            self.store.discard(env.key)
        wheel = self.wheels.wheel(files, say)
        step = "creating venv"
        try:
            say(f"{step} (python {env.python}) for env {short}")
            self.uv.venv(path, env.python)
            lockfile = path / LOCKFILE
            lockfile.write_text(env.lock)
            step = "installing packages"
            say(f"installing {len(lock_packages(env.lock))} packages")
            self.uv.sync(self.python(env.key), lockfile, lambda line: say(f"  {line}"))
            step = "installing the klieg SDK"
            say("installing klieg SDK")
            self.uv.install_wheel(self.python(env.key), wheel)
        except UvFailed as exc:
            raise EnvBuildError(f"env {short}: {step} failed:\n{exc.message()}") from exc
