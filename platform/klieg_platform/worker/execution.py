"""One request on a worker, from its lease to its completion: an ``Execution`` per job.

``run`` works while the worker's ``Leases`` renew the job's lease; it resolves its revision,
function and endpoint; fails fast while the function's setup backs off; runs it on a runner
(directly, or in a batch of a batched endpoint: see ``batching.py``) while its live events are
forwarded; and turns what happened into one ``Outcome``, with one error mapping for both paths:

- the runner's result: ok (the output, in the blob store when large) or the endpoint's error;
- ``SetupFailed``: ``SetupError``, and the function backs off;
- ``RunnerCrashedError``: the job goes back to the queue while ``retries`` allow, else fails;
- any other ``KliegError`` (timeout, cancel, deadline passed): that error.

Then it completes the job in one script (its last log lines and its service time with it; a
lost lease drops the result) or requeues it, holding the lease and trying again while Redis is
out of reach, and deletes a payload blob once the request is completed.

An execution goes through three phases (``phase``): ``PREPARING`` until its request reaches a
runner, ``RUNNING`` while the runner works on it, ``FINISHING`` once the runner is done with it.
A stopping worker hands back (``Worker.hand_back``) what has not reached a runner at once and
what still runs at its drain deadline; a request handed back never starts here (``_begin``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from klieg._runtime import protocol
from klieg.exceptions import (
    KliegError,
    RequestCancelledError,
    RequestTimeoutError,
    RunnerCrashedError,
)
from klieg.types import FunctionSpec
from klieg_platform.broker import UNAVAILABLE, Job, Outcome, now_ms, until_available
from klieg_platform.registry import Revision
from klieg_platform.storage import direct_url, media_key, put_async, result_key
from klieg_platform.storage.signing import signed_url
from klieg_platform.worker.events import EventForwarder
from klieg_platform.worker.process import RunnerKey, SetupFailed

if TYPE_CHECKING:
    from klieg_platform.worker.agent import Worker

log = logging.getLogger("klieg.worker")

PREPARING, RUNNING, FINISHING = "preparing", "running", "finishing"


class HandedBack(Exception):
    """The worker gave the request back to the queue as it stopped: nothing to report here."""


def error_outcome(exc: KliegError, logs: list[dict[str, Any]] | None = None) -> Outcome:
    return Outcome(ok=False, error=exc.to_dict(), http_status=exc.status_code, logs=logs or [])


class Execution:
    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker = worker
        self.job = job
        self.started = time.monotonic()
        """When the runner got the request (service time is measured from here)."""
        self.service_s: float | None = None
        """How long the runner took, once it answered."""
        self.cold_s: float | None = None
        """How long it waited for a runner started for it (None: a warm runner took it)."""
        self.setup_s: float | None = None
        """How much of ``cold_s`` the app's own setup() took."""
        self.batch = 0
        """The size of the batch it ran in, when its completion counts that batch (else 0)."""
        self.batched = False
        """It went to a batcher, which reports its runner's release itself."""
        self.phase = PREPARING
        self.events: EventForwarder | None = None
        """The request's live events, once it reached the runner's side."""

    async def run(self) -> None:
        w, job = self.worker, self.job
        outcome: Outcome | None
        try:
            outcome = await self._execute()
        except HandedBack:
            return
        except KliegError as exc:
            outcome = error_outcome(exc)
        except UNAVAILABLE as exc:  # the worker's own bookkeeping failed: run it again later
            log.warning(
                "request %s: Redis unavailable while serving it (%s); requeued", job.id, exc
            )
            outcome = None
        except Exception as exc:
            log.exception("request %s failed inside the worker", job.id)
            outcome = error_outcome(KliegError(f"worker error: {type(exc).__name__}: {exc}"))
        finally:
            self.phase = FINISHING
            w.settled(job, batched=self.batched)
        leftover = self.events.leftover if self.events is not None else []
        try:
            if outcome is None:
                if leftover:  # the attempt's last lines stay in its log, as a retry's follow
                    await until_available(
                        lambda: w.broker.streams.append_logs(job.id, leftover), w.outage
                    )
                await until_available(lambda: w.broker.queue.requeue(job.id, w.id), w.outage)
                return
            if leftover:
                outcome = replace(outcome, logs=[*leftover, *outcome.logs])
            service_s = self.service_s if outcome.ok else None
            done = await until_available(
                lambda: w.broker.queue.finish_job(
                    job,
                    w.id,
                    outcome,
                    service_s=service_s,
                    cold_s=self.cold_s,
                    setup_s=self.setup_s,
                    batch=self.batch,
                ),
                w.outage,
            )
        finally:
            w.leases.drop(job.id)
        if not done:
            log.warning("request %s: lease lost before completion; result dropped", job.id)
        elif job.payload_ref:
            await asyncio.to_thread(w.store.delete, job.payload_ref)

    async def _execute(self) -> Outcome | None:
        """The request's outcome; None: put it back in the queue (a retry after a crash)."""
        w, job = self.worker, self.job
        rev, fn, ep = await w.revisions.target(job.revision, job.function, job.endpoint)
        timeout = self._timeout_s(fn)
        key: RunnerKey = (rev.id, fn.name)
        blocked = w.warmth.backing_off(key)
        if blocked is not None:
            return error_outcome(*blocked)
        payload = job.payload
        if job.payload_ref:
            payload = await asyncio.to_thread(w.store.get, job.payload_ref)
        events = EventForwarder(w.broker, job.id, stream=job.stream, store_media=self._store_media)
        self.events = events
        if (notice := w.warmth.hardware_notice(fn, w.id, w.pools)) is not None:
            events(protocol.Log(job.id, notice), b"")
        try:
            token = self._call_token(timeout)
            if ep is not None and ep.batched:
                if job.id in w.cancelled:
                    raise RequestCancelledError("request cancelled")
                batcher = w.batcher(rev, fn, ep)
                self.batched = True
                self.started = time.monotonic()
                try:
                    result, body = await batcher.submit(
                        job.id, payload, timeout, events, token=token, begin=self._begin
                    )
                finally:
                    cold = batcher.cold_start_of(job.id)
                    self.cold_s, self.setup_s = cold if cold else (None, None)
                    self.batch = batcher.counts_batch(job.id)
            else:
                result, body = await self._direct(rev, fn, payload, timeout, events, token)
        except SetupFailed as failed:
            return error_outcome(w.warmth.setup_failed(key, failed), failed.logs)
        except RunnerCrashedError as exc:
            if job.attempts <= fn.retries:
                log.warning("request %s: %s; retrying (attempt %d)", job.id, exc, job.attempts)
                return None
            return error_outcome(exc)
        except KliegError as exc:
            log.warning("request %s: %s", job.id, exc)
            return error_outcome(exc)
        finally:
            self.phase = FINISHING
            await events.close()
        w.warmth.started(key)
        return await self._result(result, events.rewrite(body))

    async def _direct(
        self,
        rev: Revision,
        fn: FunctionSpec,
        payload: bytes,
        timeout: float,
        events: EventForwarder,
        token: str,
    ) -> tuple[protocol.Result, bytes]:
        """Serve the request on a runner of its own; the runner is released as soon as it has
        answered (before the events are flushed)."""
        w, job = self.worker, self.job
        asked = time.monotonic()
        start = w.warmth.starter(rev, fn)
        runner = await w.runners.acquire((rev.id, fn.name), fn, start, hint=job.hint)
        if runner.calls == 0:
            self.cold_s = time.monotonic() - asked
            self.setup_s = runner.setup_s
        try:
            if job.id in w.cancelled:
                raise RequestCancelledError("request cancelled")
            self._begin()
            w.active[job.id] = runner
            self.started = time.monotonic()
            return await runner.call(job.id, job.endpoint, payload, timeout, events, token=token)
        finally:
            w.active[job.id] = None
            await w.runners.release(runner)

    def _begin(self) -> None:
        """The request goes onto its runner now (``RUNNING``); ``HandedBack`` when the worker
        gave it back as it stops (it must not start here)."""
        if self.job.id in self.worker.handed_back:
            raise HandedBack(self.job.id)
        self.phase = RUNNING

    def _timeout_s(self, fn: FunctionSpec) -> float:
        timeout = min(self.job.timeout_s, fn.request_timeout)
        if self.job.deadline_ms:
            remaining = (self.job.deadline_ms - now_ms()) / 1000
            if remaining <= 0:
                raise RequestTimeoutError(
                    "the request's deadline (X-Fal-Request-Timeout) passed before it could start"
                )
            timeout = min(timeout, remaining)
        return timeout

    def _call_token(self, timeout_s: float) -> str:
        """A call token for the job's tenant, valid while it may run and a minute more; empty
        without a signing key or a tenant."""
        if not self.worker.settings.signing_key or not self.job.tenant:
            return ""
        return self.worker.tokens.token(self.job.tenant, timeout_s + 60)

    async def _result(self, result: protocol.Result, body: bytes) -> Outcome:
        """The outcome of the runner's ``result``: the output inline or as a blob when ok."""
        w, job = self.worker, self.job
        if not result.ok:
            error = result.error.to_exception() if result.error else KliegError("no error sent")
            return error_outcome(error, result.logs)
        self.service_s = time.monotonic() - self.started
        if len(body) <= w.settings.inline_payload_bytes:
            return Outcome(ok=True, result=body, logs=result.logs)
        ref = result_key(job.id)
        await put_async(w.store, ref, body)
        return Outcome(ok=True, result_ref=ref, logs=result.logs)

    async def _store_media(self, request_id: str, media: protocol.Media, data: bytes) -> str:
        """Store a file an endpoint returned; the signed URL it is served at."""
        settings = self.worker.settings
        name = (media.file_name or "file").replace("/", "_")[-128:]
        token = "".join(c for c in media.token if c.isalnum())[:64]
        key = media_key(request_id, token, name)
        await put_async(self.worker.store, key, data)
        ttl = settings.result_ttl_s
        return direct_url(self.worker.store, key, ttl) or signed_url(
            settings.base_url, settings.signing_key, key, ttl
        )
