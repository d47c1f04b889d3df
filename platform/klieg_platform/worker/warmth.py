"""Warmth: starting runners (cold starts), the setup backoff, and keeping runners warm.

- ``start`` prepares a revision's env and code and starts a runner on it, recording the app's
  cold-start time; a failure to prepare is a ``SetupFailed`` like a failed ``setup()``.
- Backoff: a function whose runner could not start is not restarted in a tight loop; for a
  doubling delay (per failed start, not per request: a batch fails together) its requests fail
  fast with the recorded ``SetupError``.
- Zygotes: a start forks its runner from the revision's own zygote when it asked for one
  (``preload_code``), else (or when that one could not start or fork) from the zygote of its
  env and preload (``zygotes.py``), else (zygotes off, or none could) starts the env's
  interpreter; each round also starts, ahead of their first request, the zygotes of aliased
  revisions of this worker's pools whose env is already here, while there is room for them.
- Memory (``memory.py``): a cold start first makes room under the worker's memory budget for
  what its runner (and zygote) took last time, stopping idle runners and zygotes least recently
  used first; each round (``tidy``) measures and trims the same way; prewarming starts only
  what fits.
- Keep warm: each housekeeping round, aliased functions below what they keep warm across the
  fleet (``max(min_concurrency, busy runners + concurrency_buffer)``, their scale overrides
  applied) get one runner started here, when this worker has room (no busy work displaced),
  under a short claim so two workers do not both start one. Idle runners past ``keep_alive``
  are stopped by ``RunnerSet.reap_idle``. The targets and the overrides are read every
  ``TARGETS_TTL_S``, and at once after an alias or scaling change (``forget_targets``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from klieg._runtime.protocol import LogLine
from klieg.exceptions import KliegError, SetupError
from klieg.types import AppSpec, FunctionSpec
from klieg_platform import keys, vault
from klieg_platform.broker import Broker
from klieg_platform.config import Settings
from klieg_platform.packager import LockedEnv, Packager
from klieg_platform.registry import Registry, Revision
from klieg_platform.worker.code import CodeCache
from klieg_platform.worker.memory import MEASURE_EVERY_S, Memory
from klieg_platform.worker.process import RunnerKey, RunnerProcess, SetupFailed
from klieg_platform.worker.revisions import Revisions
from klieg_platform.worker.runners import RunnerSet, units, wanted
from klieg_platform.worker.zygotes import Zygote, ZygoteFailed, ZygoteKey, Zygotes, zygote_keys

log = logging.getLogger("klieg.worker")

TARGETS_TTL_S = 10.0
"""How long the list of functions to keep warm is reused before the registry is read again."""


@dataclass
class _Backoff:
    until: float
    delay: float
    error: SetupError
    logs: list[dict[str, Any]] = field(default_factory=list)


class Warmth:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        registry: Registry,
        packager: Packager,
        code: CodeCache,
        runners: RunnerSet,
        revisions: Revisions,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.packager = packager
        self.code = code
        self.runners = runners
        self.revisions = revisions
        self.spec_dir = settings.run_dir / "specs"
        self._backoff: dict[RunnerKey, _Backoff] = {}
        self._targets: list[tuple[Revision, FunctionSpec]] = []
        self._targets_at = -1e9
        self._warming: set[str] = set()
        self.zygotes = Zygotes(settings.zygotes, settings.run_dir)
        self.memory = Memory(settings.worker_memory_mb * 2**20, runners, self.zygotes)
        self._zygote_targets: list[tuple[ZygoteKey, Revision]] = []

    # ---- cold starts ------------------------------------------------------------------
    def starter(
        self, rev: Revision, fn: FunctionSpec
    ) -> Callable[[RunnerProcess], Awaitable[None]]:
        """``RunnerSet.acquire``'s ``start`` for a runner of ``fn`` in ``rev``."""
        return lambda runner: self.start(runner, rev, fn)

    async def start(self, runner: RunnerProcess, rev: Revision, fn: FunctionSpec) -> None:
        started = time.monotonic()
        runner.app = f"{rev.owner}/{rev.app}"
        locked = LockedEnv(python=rev.python, lock=rev.lock, key=rev.env_key)
        try:
            await asyncio.to_thread(self.packager.build, locked)
            code_dir = await asyncio.to_thread(self.code.ensure, rev.code_hash)
            secrets = await asyncio.to_thread(self._secrets, rev)
        except KliegError as exc:
            raise SetupFailed(
                SetupError(f"could not prepare revision {rev.id}: {exc.detail}")
            ) from exc
        spec_file = self._spec_file(rev, fn)
        gpu_ids = runner.gpu_ids if self.runners.gpu_ids else None
        env = runner_env(gpu_ids, self.settings.base_url) | secrets
        python = self.packager.python(rev.env_key)
        keys = zygote_keys(rev.id, rev.env_key, rev.spec)
        need = self._memory_needed(runner.key, keys)
        await self.memory.make_room(need, f"a cold start of {rev.id}/{fn.name}", keys)
        zygote = await self._fork(runner, keys, python, code_dir, spec_file, env)
        if zygote is None:
            await runner.start(python, code_dir, spec_file, env)
        how = f"forked from zygote pid {zygote.pid}" if zygote else "started"
        log.info("%s: runner pid %s for %s/%s", how, runner.pid, rev.id, fn.name)
        cold_s = time.monotonic() - started
        await self.broker.stats.record_cold_start(fn.pool, f"{rev.owner}/{rev.app}", cold_s)

    def _memory_needed(self, key: RunnerKey, zygotes: list[ZygoteKey]) -> int:
        """What a new runner of ``key`` is likely to take, with the first of ``zygotes`` that
        may be used when it has to start."""
        first = next((k for k in zygotes if self.zygotes.usable(k)), None)
        return self.memory.expected(key) + self.memory.expected_zygote(first)

    async def _fork(
        self,
        runner: RunnerProcess,
        keys: list[ZygoteKey],
        python: Path,
        code_dir: Path,
        spec_file: Path,
        env: dict[str, str],
    ) -> Zygote | None:
        """Start ``runner`` forked from the first of ``keys``' zygotes that can fork it; None
        when none could (zygotes off, paused, failed to start or to fork): a plain start."""
        for key in keys:
            own_code = code_dir if key.revision else None
            zygote = await self.zygotes.get(key, python, self._zygote_env(), own_code)
            if zygote is None:
                continue
            try:
                await runner.start(python, code_dir, spec_file, env, zygote)
            except ZygoteFailed as exc:
                if self.zygotes.fork_failed(zygote):
                    log.warning("could not fork from zygote pid %s of %s (%s)", zygote.pid,
                                key.name(), exc)  # fmt: skip
                else:
                    log.info("zygote pid %s of %s was stopped with a fork in flight",
                             zygote.pid, key.name())  # fmt: skip
                continue
            return zygote
        return None

    async def tidy(self) -> None:
        """Housekeeping: stop idle and dead zygotes, measure what runners and zygotes take,
        and bring it back under the memory budget."""
        await self.zygotes.reap()
        await self.memory.measure(MEASURE_EVERY_S)
        await self.memory.make_room(0, "housekeeping", fresh_s=MEASURE_EVERY_S)

    def _zygote_env(self) -> dict[str, str]:
        """A zygote's environment: a runner's without GPU ids (each child sets its own before
        first use) and without secrets (it runs no app code but, where the app asks, its
        revision's module-level code)."""
        env = runner_env(None, self.settings.base_url)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    async def prestart_zygotes(self, background: Callable[[Awaitable[None]], None]) -> None:
        """Start the zygotes of the aliased revisions whose env is present here, while there is
        room for them (in count, and in memory without stopping anything)."""
        for key, rev in self._zygote_targets:
            if self.zygotes.room() <= 0:
                return
            if not self.zygotes.wanted(key) or not self.memory.fits(
                self.memory.expected_zygote(key)
            ):
                continue
            exists = await asyncio.to_thread(self.packager.exists, key.env)
            if exists:
                self.zygotes.reserve(key)
                background(self._prestart(key, rev))

    async def _prestart(self, key: ZygoteKey, rev: Revision) -> None:
        try:
            code_dir = None
            if key.revision:
                code_dir = await asyncio.to_thread(self.code.ensure, rev.code_hash)
            python = self.packager.python(rev.env_key)
            await self.zygotes.get(key, python, self._zygote_env(), code_dir)
        finally:
            self.zygotes.unreserve(key)

    def _secrets(self, rev: Revision) -> dict[str, str]:
        """The values of the secrets ``rev`` declares, from its owner's, opened; a missing one
        is a ``SetupError`` naming it."""
        names = list(rev.spec.get("secrets") or ())
        if not names:
            return {}
        owner = self.registry.get_tenant(rev.owner)
        sealed = self.registry.sealed_secrets(owner.id, names) if owner else {}
        missing = [name for name in names if name not in sealed]
        if missing:
            raise SetupError(
                f"secret {', '.join(missing)} is not set: its owner runs klieg secrets set NAME"
            )
        box = vault.Vault(self.settings.secrets_key)
        return {name: box.open(name, value) for name, value in sealed.items()}

    def _spec_file(self, rev: Revision, fn: FunctionSpec) -> Path:
        """The function spec a runner reads at start, written once (atomically) per function."""
        spec_file = self.spec_dir / f"{rev.id}-{fn.name}.json"
        if not spec_file.exists():
            self.spec_dir.mkdir(parents=True, exist_ok=True)
            tmp = spec_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(fn.model_dump_json())
            os.replace(tmp, spec_file)
        return spec_file

    # ---- hardware ---------------------------------------------------------------------
    def hardware_notice(
        self, fn: FunctionSpec, worker_id: str, pools: tuple[str, ...]
    ) -> LogLine | None:
        """The log line (WARNING, source ``klieg``) each request of ``fn`` gets when it runs
        here without the GPU it asks for, or None: a GPU function on a worker with no GPU ids
        (its runner sees no GPU), or on one that takes it only through ``*`` (its GPUs are of
        no declared type)."""
        if not fn.gpu:
            return None
        wanted = f"function {fn.name!r} asks for gpu={fn.gpu!r} (pool {fn.pool})"
        if not self.runners.gpu_ids:
            message = f"{wanted}, but worker {worker_id} has no GPU: it runs on the CPU"
        elif fn.pool not in pools:
            ids = ",".join(map(str, self.runners.gpu_ids))
            message = (
                f"{wanted}, but worker {worker_id} takes it only through '*', with GPUs "
                f"{ids} of no declared type"
            )
        else:
            return None
        ts = datetime.now(UTC).isoformat()
        return {"message": message, "level": "WARNING", "source": "klieg", "timestamp": ts}

    # ---- setup backoff ----------------------------------------------------------------
    def backing_off(self, key: RunnerKey) -> tuple[SetupError, list[dict[str, Any]]] | None:
        """The error (and setup logs) a request of ``key`` fails with while its function backs
        off; None when a start may be tried."""
        backoff = self._backoff.get(key)
        if backoff is None or time.monotonic() >= backoff.until:
            return None
        wait = backoff.until - time.monotonic()
        return SetupError(f"{backoff.error.detail} (setup is retried in {wait:.0f}s)"), backoff.logs

    def setup_failed(self, key: RunnerKey, failed: SetupFailed) -> SetupError:
        """Record a failed start of ``key``; the error its requests fail with."""
        err = SetupError(failed.error.detail or "setup failed")
        previous = self._backoff.get(key)
        if previous is None or previous.until <= time.monotonic():
            delay = min(300.0, previous.delay * 2) if previous else self.settings.setup_backoff_s
            self._backoff[key] = _Backoff(time.monotonic() + delay, delay, err, failed.logs)
            log.warning("revision %s function %s: %s (backing off %.0fs)", *key, err.detail, delay)
        return err

    def started(self, key: RunnerKey) -> None:
        """A runner of ``key`` served a request: its backoff is over."""
        self._backoff.pop(key, None)

    # ---- keep warm --------------------------------------------------------------------
    def forget_targets(self) -> None:
        """An app's aliases or scaling changed: read the targets (and the scale overrides)
        again at the next round, not a ``TARGETS_TTL_S`` later."""
        self._targets_at = -1e9

    async def keep_warm(
        self,
        worker_id: str,
        pools: tuple[str, ...],
        busy: int,
        elsewhere: Mapping[str, int],
        background: Callable[[Awaitable[None]], None],
        busy_elsewhere: Mapping[str, int] | None = None,
    ) -> None:
        """Start runners for aliased functions below what they keep warm across the fleet,
        ``max(min_concurrency, busy runners + concurrency_buffer)`` with their scale overrides
        (``elsewhere``: runners other workers have, by "revision/function"; ``busy_elsewhere``:
        those of them serving), one per function per round, when this worker (``busy`` slots
        in use) has the room."""
        now = time.monotonic()
        if now - self._targets_at > TARGETS_TTL_S:
            self._targets_at = now
            await self._read_targets(pools)
        await self.prestart_zygotes(background)
        for rev, fn in self._targets:
            key = f"{rev.id}/{fn.name}"
            mine = [r for r in self.runners.runners if r.key == (rev.id, fn.name)]
            total = len(mine) + elsewhere.get(key, 0)
            serving = sum(1 for r in mine if r.busy) + (busy_elsewhere or {}).get(key, 0)
            if total >= wanted(fn, serving) or len(mine) >= fn.max_concurrency:
                continue
            free = self.runners.slots - self.runners.used()
            if key in self._warming or free < units(fn) or busy + units(fn) > self.runners.slots:
                continue
            needed = self._memory_needed(
                (rev.id, fn.name), zygote_keys(rev.id, rev.env_key, rev.spec)
            )
            if not self.memory.fits(needed):
                continue  # stopping idle runners to keep this one warm could evict in turn
            # one claim per (function, runner count): two workers seeing the same count start
            # one runner between them, and the next runner is claimed as soon as it is seen
            if await self.broker.claims.claim(keys.prewarm(f"{key}#{total}"), worker_id, 10):
                self._warming.add(key)
                background(self._prewarm(rev, fn))

    async def _read_targets(self, pools: tuple[str, ...]) -> None:
        """Read the aliased revisions of ``pools`` (scale overrides applied) and the apps'
        overrides; give the running runners their functions' scaling as it is now."""
        revisions = await asyncio.to_thread(self.registry.aliased_revisions)
        overrides = await asyncio.to_thread(self.registry.scale_overrides)
        self.revisions.set_scaling(overrides)
        await self.runners.respec(self.revisions.effective)
        mine = [
            (rev, fn)
            for rev in revisions
            for fn in AppSpec.model_validate(rev.spec).functions
            if "*" in pools or fn.pool in pools
        ]
        self._targets = [
            (rev, fn) for rev, fn in mine if fn.min_concurrency > 0 or fn.concurrency_buffer > 0
        ]
        zygotes: dict[ZygoteKey, Revision] = {}
        for rev, _ in sorted(mine, key=lambda pair: -pair[0].created_at):  # newest first
            zygotes.setdefault(zygote_keys(rev.id, rev.env_key, rev.spec)[0], rev)
        self._zygote_targets = list(zygotes.items())

    async def _prewarm(self, rev: Revision, fn: FunctionSpec) -> None:
        key = f"{rev.id}/{fn.name}"
        try:
            await self.revisions.get(rev.id)  # so the heartbeat names its app as warm
            runner = await self.runners.acquire(
                (rev.id, fn.name), fn, self.starter(rev, fn), fresh=True
            )
            await self.runners.release(runner)
            log.info("kept warm: runner pid %s for %s", runner.pid, key)
        except SetupFailed as failed:
            log.warning("could not keep %s warm: %s", key, failed.error.detail)
        finally:
            self._warming.discard(key)


PLATFORM_CREDENTIALS = (
    "KLIEG_SIGNING_KEY", "KLIEG_SECRETS_KEY", "KLIEG_S3_ACCESS_KEY", "KLIEG_S3_SECRET_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "KLIEG_DATABASE_URL",
    "KLIEG_REDIS_URL",
)  # fmt: skip
"""The worker's own credentials: app code gets none of them."""


def runner_env(gpu_ids: tuple[int, ...] | None, gateway_url: str) -> dict[str, str]:
    """The runner's environment: ours, minus what would leak this venv into the app's and the
    platform's credentials (app code must not mint call tokens, open secrets or reach Redis,
    the registry or the bucket); on a worker with GPU ids,
    CUDA_VISIBLE_DEVICES names the runner's own (none for CPU work). ``KLIEG_GATEWAY_URL`` is
    where ``klieg.call`` sends its requests."""
    hidden = ("PYTHONPATH", "VIRTUAL_ENV", *PLATFORM_CREDENTIALS)
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    if gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    env["PYTHONUNBUFFERED"] = "1"
    env["KLIEG_GATEWAY_URL"] = gateway_url
    return env
