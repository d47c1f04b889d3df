"""The worker agent: pull, run, report. One per node (or per GPU pool on a node).

Loop: while a slot is free, dispatch the next request of our pools (atomic, leased); run it on a
warm runner of its revision or a cold-started one; renew the lease while it runs; complete it
with the result or a typed error. Periodically requeue expired leases (any worker's), stop idle
runners past keep_alive. A revision whose setup() failed is not restarted in a tight loop: its
requests fail fast with the recorded setup error until a doubling backoff has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from klieg._runtime import protocol
from klieg.exceptions import (
    KliegError,
    NotFoundError,
    RequestCancelledError,
    RequestTimeoutError,
    RunnerCrashedError,
    SetupError,
)
from klieg.types import AppSpec, EndpointSpec, FunctionSpec, normalize_path
from klieg_platform import calltokens, keys
from klieg_platform.broker import Blocked, Broker, Elsewhere, Job, Outcome, Peers, now_ms
from klieg_platform.config import Settings
from klieg_platform.packager import LockedEnv, Packager
from klieg_platform.registry import Registry, Revision
from klieg_platform.storage import BlobStore, direct_url, media_key, put_async, result_key
from klieg_platform.storage.signing import signed_url
from klieg_platform.worker.batching import Batcher
from klieg_platform.worker.code import CodeCache
from klieg_platform.worker.events import EventForwarder
from klieg_platform.worker.process import RunnerKey, RunnerProcess, SetupFailed
from klieg_platform.worker.runners import RunnerSet, units

log = logging.getLogger("klieg.worker")


@dataclass
class _Backoff:
    until: float
    delay: float
    error: SetupError
    logs: list[dict[str, Any]] = field(default_factory=list)


def _error_outcome(exc: KliegError, logs: list[dict[str, Any]] | None = None) -> Outcome:
    return Outcome(ok=False, error=exc.to_dict(), http_status=exc.status_code, logs=logs or [])


class Worker:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        registry: Registry,
        packager: Packager,
        store: BlobStore,
        *,
        pools: tuple[str, ...] = ("*",),
        slots: int | None = None,
        gpu_ids: tuple[int, ...] = (),
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.packager = packager
        self.store = store
        self.code = CodeCache(settings.code_dir, store)
        self.pools = pools
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.runners = RunnerSet(slots or settings.worker_slots, gpu_ids)
        self._busy = 0
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._revisions: dict[str, tuple[Revision, AppSpec]] = {}
        self._backoff: dict[RunnerKey, _Backoff] = {}
        self._active: dict[str, RunnerProcess | None] = {}
        self._app_keys: dict[str, str] = {}
        self._warm_elsewhere: set[str] = set()
        self._peers = Peers()
        self._targets: list[tuple[Revision, FunctionSpec]] = []
        self._targets_at = -1e9
        self._warming: set[str] = set()
        self._cancelled: dict[str, float] = {}
        self._batchers: dict[tuple[str, str, str], Batcher] = {}
        self._own_wake = f"@{self.id}"
        """A wake list of this worker alone (``keys.wake``), pushed when it frees a runner."""
        self._left_full = False
        self._spec_dir = settings.run_dir / "specs"

    # ---- main loops -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until ``stop()``; then finish in-flight requests and stop the runners."""
        self._spec_dir.mkdir(parents=True, exist_ok=True)
        housekeeping = asyncio.create_task(self._housekeeping())
        cancels = asyncio.create_task(
            self.broker.streams.listen([keys.CANCEL_CHANNEL], lambda _, rid: self._cancel(rid))
        )
        log.info(
            "worker %s serving pools %s with %d slots", self.id, self.pools, self.runners.slots
        )
        drained = False  # the last dispatch left nothing queued: block for a wake token first
        need = 1  # slots the next request needs (more after a Blocked dispatch)
        try:
            while not self._stopping.is_set():
                free = self.runners.slots - max(self._busy, self.runners.busy_units())
                if free < need:
                    self._slot_free.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slot_free.wait(), 1.0)
                    need = 1 if self.runners.slots - self._busy < need else need
                    continue
                if drained:
                    await self.broker.queue.wait_for_work([*self.pools, self._own_wake], 1.0)
                full = self.runners.full()
                self._left_full = bool(full)
                job = await self.broker.queue.dispatch(
                    self.pools,
                    self.id,
                    self.settings.lease_s,
                    free_units=free,
                    total_units=self.runners.slots,
                    warm_here=self._idle_here(),
                    warm_elsewhere=self._warm_elsewhere,
                    full=full,
                )
                if isinstance(job, Blocked):
                    need, drained = job.units, False
                    continue
                if isinstance(job, Elsewhere):  # a warm worker was woken for it; look again soon
                    drained = False
                    await asyncio.sleep(0.05)
                    continue
                need = 1
                drained = job is None or not job.more
                if job is None:
                    continue
                self._busy += job.units
                self._spawn(job)
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self.settings.lease_s)
            housekeeping.cancel()
            with contextlib.suppress(Exception):
                await self.broker.workers.forget(self.id)
            cancels.cancel()
            await self.runners.stop_all()

    def stop(self) -> None:
        self._stopping.set()

    async def _housekeeping(self) -> None:
        period = max(0.2, min(1.0, self.settings.lease_s / 3))
        while True:
            await asyncio.sleep(period)
            try:
                requeued = await self.broker.queue.requeue_expired()
                if requeued:
                    log.warning("requeued %d requests with expired leases", requeued)
                await self.runners.reap_idle(self._peers.runners)
                mine = self.runners.runners
                warm = [self._app_keys.get(r.key[0], "") for r in mine]
                self._peers = await self.broker.workers.heartbeat(
                    self.id, self.pools, self.runners.slots, warm, self._idle_here(),
                    [f"{r.key[0]}/{r.key[1]}" for r in mine],
                )  # fmt: skip
                idle = self._peers.idle
                serving = idle if "*" in self.pools else {p: idle.get(p, set()) for p in self.pools}
                self._warm_elsewhere = set().union(*serving.values()) if serving else set()
                await self._keep_warm()
            except Exception:
                log.exception("housekeeping failed")

    async def _keep_warm(self) -> None:
        """Start runners for aliased functions below their min_concurrency across the cluster,
        one per function per round, when this worker has the room (no busy work displaced)."""
        now = time.monotonic()
        if now - self._targets_at > 10:
            self._targets_at = now
            revisions = await asyncio.to_thread(self.registry.aliased_revisions)
            self._targets = [
                (rev, fn)
                for rev in revisions
                for fn in AppSpec.model_validate(rev.spec).functions
                if fn.min_concurrency > 0 and ("*" in self.pools or fn.pool in self.pools)
            ]
        for rev, fn in self._targets:
            key = f"{rev.id}/{fn.name}"
            here = sum(1 for r in self.runners.runners if r.key == (rev.id, fn.name))
            if here + self._peers.runners.get(key, 0) >= fn.min_concurrency:
                continue
            free = self.runners.slots - self.runners.used()
            if (
                key in self._warming
                or free < units(fn)
                or self._busy + units(fn) > self.runners.slots
            ):
                continue
            if await self.broker.claims.claim(keys.prewarm(key), self.id, 10):
                self._warming.add(key)
                self._background(self._prewarm(rev, fn))

    async def _prewarm(self, rev: Revision, fn: FunctionSpec) -> None:
        key = f"{rev.id}/{fn.name}"
        try:
            await self._revision(rev.id)
            runner = await self.runners.acquire(
                (rev.id, fn.name), fn, lambda r: self._start(r, rev, fn), fresh=True
            )
            await self.runners.release(runner)
            log.info("kept warm: runner pid %s for %s (min_concurrency)", runner.pid, key)
        except SetupFailed as failed:
            log.warning("could not keep %s warm: %s", key, failed.error.detail)
        finally:
            self._warming.discard(key)

    def _freed(self) -> None:
        """A slot or a runner became free. When the last dispatch left requests of busy
        functions queued, wake this worker's loop: the queue will not (nothing new arrived)."""
        self._slot_free.set()
        if self._left_full:
            self._left_full = False
            self._background(self.broker.queue.nudge(self._own_wake))

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._handle(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping off the request's path; failures are logged, not raised."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("background bookkeeping failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _idle_here(self) -> list[str]:
        """ "revision/function" of this worker's idle, live runners."""
        return [f"{r.key[0]}/{r.key[1]}" for r in self.runners.runners if not r.busy and r.alive]

    # ---- one request ------------------------------------------------------------------
    async def _handle(self, job: Job) -> None:
        renew = asyncio.create_task(
            self.broker.queue.hold_lease(job.id, self.id, self.settings.lease_s)
        )
        self._active[job.id] = None
        outcome: Outcome | None
        try:
            outcome = await self._execute(job)
        except KliegError as exc:
            outcome = _error_outcome(exc)
        except Exception as exc:
            log.exception("request %s failed inside the worker", job.id)
            outcome = _error_outcome(KliegError(f"worker error: {type(exc).__name__}: {exc}"))
        finally:
            renew.cancel()
            self._active.pop(job.id, None)
            self._busy -= job.units
            self._freed()
            for batcher in self._batchers.values():
                batcher.settled(job.id)
        if outcome is None:
            await self.broker.queue.requeue(job.id, self.id)
            return
        if not await self.broker.queue.finish_job(job, self.id, outcome):
            log.warning("request %s: lease lost before completion; result dropped", job.id)
        elif job.payload_ref:
            await asyncio.to_thread(self.store.delete, job.payload_ref)

    def _cancel(self, request_id: str) -> None:
        """Interrupt ``request_id`` if it runs here; remember it in case it starts soon."""
        now = time.monotonic()
        self._cancelled[request_id] = now
        for rid, at in list(self._cancelled.items()):
            if now - at > 300:
                del self._cancelled[rid]
        runner = self._active.get(request_id)
        if runner is not None and runner.interrupt(request_id):
            log.info("request %s: cancelling on runner pid %s", request_id, runner.pid)
        for batcher in self._batchers.values():
            if batcher.cancel(request_id):
                log.info("request %s: cancelled in its batch", request_id)

    def _timeout_s(self, job: Job, fn: FunctionSpec) -> float:
        timeout = min(job.timeout_s, fn.request_timeout)
        if job.deadline_ms:
            remaining = (job.deadline_ms - now_ms()) / 1000
            if remaining <= 0:
                raise RequestTimeoutError(
                    "the request's deadline (X-Fal-Request-Timeout) passed before it could start"
                )
            timeout = min(timeout, remaining)
        return timeout

    async def _execute(self, job: Job) -> Outcome | None:
        """Run one request. None means: put it back in the queue (a retry after a crash)."""
        rev, spec = await self._revision(job.revision)
        fn = spec.function(job.function)
        if fn is None:
            raise NotFoundError(f"revision {rev.id} has no function {job.function!r}")
        timeout = self._timeout_s(job, fn)
        key: RunnerKey = (rev.id, fn.name)
        backoff = self._backoff.get(key)
        if backoff and time.monotonic() < backoff.until:
            wait = backoff.until - time.monotonic()
            retried = SetupError(f"{backoff.error.detail} (setup is retried in {wait:.0f}s)")
            return _error_outcome(retried, backoff.logs)
        payload = job.payload
        if job.payload_ref:
            payload = await asyncio.to_thread(self.store.get, job.payload_ref)
        path = normalize_path(job.endpoint)
        ep = next((e for e in fn.endpoints if normalize_path(e.path) == path), None)
        if ep is not None and ep.batched:
            return await self._execute_batched(job, rev, fn, ep, payload, timeout)
        try:
            runner = await self.runners.acquire(key, fn, lambda r: self._start(r, rev, fn))
        except SetupFailed as failed:
            return self._setup_failed(key, failed)
        self._backoff.pop(key, None)
        events = EventForwarder(
            self.broker, job.id, stream=job.stream, store_media=self._store_media
        )
        try:
            if job.id in self._cancelled:
                raise RequestCancelledError("request cancelled")
            self._active[job.id] = runner
            started = time.monotonic()
            token = self._call_token(job, timeout)
            result, body = await runner.call(
                job.id, job.endpoint, payload, timeout, events, token=token
            )
        except RunnerCrashedError as exc:
            return self._crashed(job, fn, exc)
        except KliegError as exc:
            log.warning("request %s: %s", job.id, exc)
            return _error_outcome(exc)
        finally:
            self._active[job.id] = None
            await self.runners.release(runner)
            await events.close()
        return await self._outcome(job, result, events.rewrite(body), time.monotonic() - started)

    async def _execute_batched(
        self,
        job: Job,
        rev: Revision,
        fn: FunctionSpec,
        ep: EndpointSpec,
        payload: bytes,
        timeout: float,
    ) -> Outcome | None:
        """Run a request of a batched endpoint as part of a batch (see worker/batching.py)."""
        key: RunnerKey = (rev.id, fn.name)
        batcher = self._batcher(rev, fn, ep)
        events = EventForwarder(
            self.broker, job.id, stream=job.stream, store_media=self._store_media
        )
        started = time.monotonic()
        try:
            if job.id in self._cancelled:
                raise RequestCancelledError("request cancelled")
            token = self._call_token(job, timeout)
            result, body = await batcher.submit(job.id, payload, timeout, events, token=token)
        except SetupFailed as failed:
            return self._setup_failed(key, failed)
        except RunnerCrashedError as exc:
            return self._crashed(job, fn, exc)
        except KliegError as exc:
            log.warning("request %s: %s", job.id, exc)
            return _error_outcome(exc)
        finally:
            await events.close()
        self._backoff.pop(key, None)
        return await self._outcome(job, result, events.rewrite(body), time.monotonic() - started)

    def _call_token(self, job: Job, timeout_s: float) -> str:
        """A call token for the job's tenant, valid while it may run and a minute more; empty
        without a signing key or a tenant."""
        if not self.settings.signing_key or not job.tenant:
            return ""
        return calltokens.issue(self.settings.signing_key, job.tenant, timeout_s + 60)

    def _batcher(self, rev: Revision, fn: FunctionSpec, ep: EndpointSpec) -> Batcher:
        bkey = (rev.id, fn.name, ep.path)
        batcher = self._batchers.get(bkey)
        if batcher is not None:
            return batcher
        rkey: RunnerKey = (rev.id, fn.name)

        async def acquire() -> RunnerProcess:
            return await self.runners.acquire(rkey, fn, lambda r: self._start(r, rev, fn))

        async def release(runner: RunnerProcess) -> None:
            await self.runners.release(runner)
            self._freed()

        async def fill(n: int) -> list[str]:
            jobs = await self.broker.queue.dispatch_for(
                fn.pool, rev.id, fn.name, ep.path, n, self.id, self.settings.lease_s
            )
            for extra in jobs:
                self._spawn(extra)
            return [extra.id for extra in jobs]

        batcher = Batcher(ep, acquire=acquire, release=release, fill=fill)
        self._batchers[bkey] = batcher
        return batcher

    def _crashed(self, job: Job, fn: FunctionSpec, exc: RunnerCrashedError) -> Outcome | None:
        if job.attempts <= fn.retries:
            log.warning("request %s: %s; retrying (attempt %d)", job.id, exc, job.attempts)
            return None
        return _error_outcome(exc)

    async def _outcome(
        self, job: Job, result: protocol.Result, body: bytes, elapsed: float
    ) -> Outcome:
        """The outcome of a request from the runner's ``result`` frame."""
        if result.ok:
            self._background(self.broker.stats.record_time("service", job.app_key, elapsed))
            return await self._ok(job.id, body, result.logs)
        error = result.error.to_exception() if result.error else KliegError("no error sent")
        return _error_outcome(error, result.logs)

    async def _store_media(self, request_id: str, media: protocol.Media, data: bytes) -> str:
        """Store a file an endpoint returned; the signed URL it is served at."""
        name = (media.file_name or "file").replace("/", "_")[-128:]
        token = "".join(c for c in media.token if c.isalnum())[:64]
        key = media_key(request_id, token, name)
        await put_async(self.store, key, data)
        ttl = self.settings.result_ttl_s
        return direct_url(self.store, key, ttl) or signed_url(
            self.settings.base_url, self.settings.signing_key, key, ttl
        )

    async def _ok(self, request_id: str, body: bytes, logs: list[dict[str, Any]]) -> Outcome:
        if len(body) <= self.settings.inline_payload_bytes:
            return Outcome(ok=True, result=body, logs=logs)
        ref = result_key(request_id)
        await put_async(self.store, ref, body)
        return Outcome(ok=True, result_ref=ref, logs=logs)

    def _setup_failed(self, key: RunnerKey, failed: SetupFailed) -> Outcome:
        """The outcome of a request whose runner could not start; the function backs off (the
        delay doubles per failed start, not per request: a batch fails together)."""
        err = SetupError(failed.error.detail or "setup failed")
        previous = self._backoff.get(key)
        if previous is None or previous.until <= time.monotonic():
            delay = min(300.0, previous.delay * 2) if previous else self.settings.setup_backoff_s
            self._backoff[key] = _Backoff(time.monotonic() + delay, delay, err, failed.logs)
            detail = err.detail
            log.warning("revision %s function %s: %s (backing off %.0fs)", *key, detail, delay)
        return _error_outcome(err, failed.logs)

    async def _revision(self, revision_id: str) -> tuple[Revision, AppSpec]:
        cached = self._revisions.get(revision_id)
        if cached is None:
            rev = await asyncio.to_thread(self.registry.get_revision, revision_id)
            if rev is None:
                raise NotFoundError(f"revision {revision_id} not found")
            cached = (rev, AppSpec.model_validate(rev.spec))
            self._revisions[revision_id] = cached
            self._app_keys[revision_id] = f"{rev.owner}/{rev.app}"
        return cached

    async def _start(self, runner: RunnerProcess, rev: Revision, fn: FunctionSpec) -> None:
        started = time.monotonic()
        locked = LockedEnv(python=rev.python, lock=rev.lock, key=rev.env_key)
        try:
            await asyncio.to_thread(self.packager.build, locked)
            code_dir = await asyncio.to_thread(self.code.ensure, rev.code_hash)
        except KliegError as exc:
            raise SetupFailed(
                SetupError(f"could not prepare revision {rev.id}: {exc.detail}")
            ) from exc
        spec_file = self._spec_dir / f"{rev.id}-{fn.name}.json"
        if not spec_file.exists():
            tmp = spec_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(fn.model_dump_json())
            os.replace(tmp, spec_file)
        gpu_ids = runner.gpu_ids if self.runners.gpu_ids else None
        env = _runner_env(gpu_ids, self.settings.base_url)
        await runner.start(self.packager.python(rev.env_key), code_dir, spec_file, env)
        log.info("started runner pid %s for %s/%s", runner.pid, rev.id, fn.name)
        await self.broker.stats.record_time(
            "cold", f"{rev.owner}/{rev.app}", time.monotonic() - started
        )


def _runner_env(gpu_ids: tuple[int, ...] | None, gateway_url: str) -> dict[str, str]:
    """The runner's environment: ours, minus what would leak this venv into the app's and the
    signing key (app code must not mint call tokens); on a worker with GPU ids,
    CUDA_VISIBLE_DEVICES names the runner's own (none for CPU work). ``KLIEG_GATEWAY_URL`` is
    where ``klieg.call`` sends its requests."""
    hidden = ("PYTHONPATH", "VIRTUAL_ENV", "KLIEG_SIGNING_KEY")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    if gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    env["PYTHONUNBUFFERED"] = "1"
    env["KLIEG_GATEWAY_URL"] = gateway_url
    return env
