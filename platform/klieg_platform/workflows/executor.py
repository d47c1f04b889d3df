"""The workflow executor: runs workflow requests as DAGs of ordinary requests over the same queue.

A workflow request waits in the ``workflow`` pool (``keys.WORKFLOW_POOL``); an executor leases
it like a worker leases a job (and renews the lease), then runs its document: every node whose
references are resolved becomes a request of its app endpoint, queued with the workflow's
tenant, tier and deadline, so nodes obey the same scheduling, caps and back pressure as any
request; independent nodes run in parallel. Guarantees:

- node request ids are ``{workflow request id}.{node id}``: an executor that takes over a
  workflow whose lease expired reuses the nodes already queued, running or done;
- each node's progress is appended to the workflow's logs as an event line (``event``:
  ``started`` with the node's ``request_id``, ``completed`` with its ``output``, ``failed``
  with its ``error``; ``output`` at the end) and, for a streamed workflow, sent as a chunk;
- a node that fails fails the workflow with an error that names the node; the nodes still
  queued or running are cancelled; cancelling the workflow cancels them too;
- a node runs as the workflow's caller: an app the caller may not call fails that node (404);
- a node's input is checked against its endpoint's input schema before it is queued (as the
  gateway checks a request's): one that does not match fails that node (422).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from klieg.exceptions import (
    KliegError,
    NotFoundError,
    QueueFullError,
    RequestCancelledError,
    RequestTimeoutError,
    ValidationError,
)
from klieg.input_schema import InputSchema
from klieg.types import AppSpec
from klieg.workflow import WorkflowDoc, resolve
from klieg_platform import keys
from klieg_platform.broker import (
    UNAVAILABLE,
    Broker,
    Job,
    Leases,
    NewRequest,
    Outage,
    Outcome,
    now_ms,
    until_available,
)
from klieg_platform.config import Settings
from klieg_platform.disclosure import WORKFLOW_SOURCE
from klieg_platform.registry import Registry, Tenant
from klieg_platform.storage import BlobStore, offload_payload
from klieg_platform.workflows.store import workflow_document

log = logging.getLogger("klieg.workflows")

FUNCTION = "workflow"
"""The ``function`` field of a workflow request record."""


class NodeFailed(Exception):
    def __init__(self, node: str, error: dict[str, Any], status: int) -> None:
        super().__init__(f"node {node!r} failed: {error.get('detail')}")
        self.node = node
        self.error = error
        self.status = status


@dataclass
class _Run:
    job: Job
    doc: WorkflowDoc
    tenant: Tenant
    tier: str
    scope: dict[str, Any]
    nodes: dict[str, str] = field(default_factory=dict)
    """node id -> its request id, once queued"""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def node_request_id(workflow_request_id: str, node: str) -> str:
    return f"{workflow_request_id}.{node}"


class WorkflowExecutor:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        registry: Registry,
        store: BlobStore,
        *,
        concurrency: int = 64,
        executor_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.store = store
        self.concurrency = concurrency
        self.id = executor_id or f"wf-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.leases = Leases(broker.queue, self.id, settings.lease_s)
        self.outage = Outage(f"workflow executor {self.id}")
        self._runs: dict[str, _Run] = {}
        self._done: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._listening = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve workflow requests until ``stop()``; running workflows are then left to their
        leases (another executor takes them over)."""
        channels = [keys.DONE_CHANNEL, keys.CANCEL_CHANNEL]
        listener = asyncio.create_task(
            self.broker.streams.listen(channels, self._on_message, self._listening)
        )
        await asyncio.wait_for(self._listening.wait(), 10)
        pools = [keys.WORKFLOW_POOL]
        wakes = self.broker.queue.wakes()
        leases = asyncio.create_task(self.leases.keep(self.outage))
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._runs)
                if free <= 0:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    job = await self.broker.queue.dispatch(
                        pools, self.id, self.settings.lease_s, free_units=free, total_units=free
                    )
                    if not isinstance(job, Job):
                        await wakes.wait(pools, 1.0)
                        continue
                except UNAVAILABLE as exc:
                    self.outage.lost(exc)
                    await self.outage.pause()
                    continue
                self.outage.back()
                task = asyncio.create_task(self._handle(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            listener.cancel()
            leases.cancel()
            wakes.close()

    def _on_message(self, channel: str, message: bytes) -> None:
        data = message.decode()
        if channel == keys.CANCEL_CHANNEL:
            run = self._runs.get(data)
            if run is not None:
                run.cancelled.set()
            return
        fut = self._done.get(data)
        if fut is not None and not fut.done():
            fut.set_result(None)

    # ---- one workflow -----------------------------------------------------------------
    async def _handle(self, job: Job) -> None:
        self.leases.hold(job.id)
        try:
            outcome = await self._execute(job)
        except KliegError as exc:
            outcome = Outcome(ok=False, error=exc.to_dict(), http_status=exc.status_code)
        except Exception as exc:
            log.exception("workflow request %s failed inside the executor", job.id)
            err = KliegError(f"workflow executor error: {type(exc).__name__}: {exc}")
            outcome = Outcome(ok=False, error=err.to_dict(), http_status=500)
        finally:
            self._runs.pop(job.id, None)
        try:
            done = await until_available(
                lambda: self.broker.queue.finish_job(job, self.id, outcome), self.outage
            )
        finally:
            self.leases.drop(job.id)
        if not done:
            log.warning("workflow request %s: lease lost before completion", job.id)
        elif job.payload_ref:
            await asyncio.to_thread(self.store.delete, job.payload_ref)

    async def _execute(self, job: Job) -> Outcome:
        run = await self._start(job)
        self._runs[job.id] = run
        # read again now that cancel messages reach this run: a cancel published before it was
        # registered is seen here, one published after by _on_message
        state = await self.broker.queue.get(job.id)
        if state is not None and state.cancel_requested:
            run.cancelled.set()
        timeout = job.timeout_s
        if job.deadline_ms:
            timeout = min(timeout, (job.deadline_ms - now_ms()) / 1000)
        tasks: dict[str, asyncio.Task[Any]] = {}
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                await self._walk(run, tasks)
            output = resolve(run.doc.output, run.scope)
        except NodeFailed as failed:
            await self._event(run, failed.node, "failed", error=failed.error)
            err = {
                "detail": f"node {failed.node!r} failed: {failed.error.get('detail')}",
                "error_type": failed.error.get("error_type") or "KliegError",
            }
            return Outcome(ok=False, error=err, http_status=failed.status)
        except TimeoutError:
            exc = RequestTimeoutError(f"the workflow ran past its timeout of {timeout:g}s")
            return Outcome(ok=False, error=exc.to_dict(), http_status=exc.status_code)
        except RequestCancelledError as exc:
            return Outcome(ok=False, error=exc.to_dict(), http_status=exc.status_code)
        finally:
            for task in tasks.values():
                task.cancel()
            await self._cancel_nodes(run)
        await self._event(run, None, "output", output=output)
        return Outcome(ok=True, result=json.dumps(output).encode())

    async def _start(self, job: Job) -> _Run:
        rev = await asyncio.to_thread(self.registry.get_revision, job.revision)
        if rev is None:
            raise NotFoundError(f"workflow revision {job.revision} not found")
        doc = workflow_document(rev)
        state = await self.broker.queue.get(job.id)
        tenant = await asyncio.to_thread(self.registry.get_tenant_by_id, job.tenant)
        if state is None or tenant is None:
            raise NotFoundError(f"workflow request {job.id}: its record or tenant is gone")
        payload = job.payload
        if job.payload_ref:
            payload = await asyncio.to_thread(self.store.get, job.payload_ref)
        scope = {"input": json.loads(payload or b"{}")}
        return _Run(job=job, doc=doc, tenant=tenant, tier=state.tier or "free", scope=scope)

    async def _walk(self, run: _Run, tasks: dict[str, asyncio.Task[Any]]) -> None:
        """Start every node whose dependencies are done; until all are done or one fails."""
        waiting = list(run.doc.nodes)
        cancelled = asyncio.create_task(run.cancelled.wait())
        try:
            while waiting or tasks:
                for node in [n for n in waiting if run.doc.deps(n) <= run.scope.keys()]:
                    waiting.remove(node)
                    tasks[node] = asyncio.create_task(self._node(run, node))
                if not tasks:
                    raise NodeFailed(waiting[0], {"detail": "unreachable"}, 500)
                done, _ = await asyncio.wait(
                    [*tasks.values(), cancelled], return_when=asyncio.FIRST_COMPLETED
                )
                if cancelled in done:
                    raise RequestCancelledError("workflow cancelled")
                for node, task in list(tasks.items()):
                    if task in done:
                        del tasks[node]
                        run.scope[node] = task.result()  # raises NodeFailed
        finally:
            cancelled.cancel()

    async def _node(self, run: _Run, node: str) -> Any:
        """Run one node as a request and return its output."""
        rid = node_request_id(run.job.id, node)
        done = asyncio.get_running_loop().create_future()
        self._done[rid] = done
        try:
            state = await self.broker.queue.get(rid)
            run.nodes[node] = rid
            if state is None:
                await self._enqueue(run, node, rid)
            if state is None or state.status != "COMPLETED":
                await self._event(run, node, "started", request_id=rid)
                await self.broker.queue.completed(rid, done)
        finally:
            self._done.pop(rid, None)
        outcome = await self.broker.queue.outcome(rid)
        if outcome is None:
            raise NodeFailed(
                node, {"detail": "its result expired", "error_type": "KliegError"}, 500
            )
        if not outcome.ok:
            raise NodeFailed(node, outcome.error or {}, outcome.http_status)
        body = outcome.result
        if outcome.result_ref:
            body = await asyncio.to_thread(self.store.get, outcome.result_ref)
        output = json.loads(body or b"null")
        await self._event(run, node, "completed", request_id=rid, output=output)
        return output

    async def _enqueue(self, run: _Run, node: str, rid: str) -> None:
        spec = run.doc.nodes[node]
        owner, app_name, ref, path = spec.target()
        try:
            value = resolve(spec.input, run.scope)
        except ValidationError as exc:
            raise NodeFailed(node, exc.to_dict(), exc.status_code) from None
        found = await asyncio.to_thread(self._route, run.tenant, owner, app_name, ref, path)
        if isinstance(found, str):
            err = NotFoundError(found)
            raise NodeFailed(node, err.to_dict(), err.status_code)
        rev_id, app_cap, fn, ep = found
        if ep.input_schema is not None:
            schema = InputSchema(ep.input_schema)
            invalid = schema.errors(value, max_data_url=self.settings.max_body_bytes)
            if invalid:
                refused = ValidationError(invalid)
                raise NodeFailed(node, refused.to_dict(), refused.status_code)
        body = json.dumps(value).encode()
        limit = self.settings.inline_payload_bytes
        body, ref_key = await offload_payload(self.store, rid, body, limit)
        new = NewRequest(
            id=rid,
            owner=owner,
            tenant=run.tenant.id,
            app=app_name,
            revision=rev_id,
            function=fn.name,
            endpoint=ep.path,
            pool=fn.pool,
            payload=body,
            payload_ref=ref_key,
            timeout_s=fn.request_timeout,
            deadline_ms=run.job.deadline_ms,
            tier=run.tier,
            tenant_cap=run.tenant.max_inflight,
            app_cap=app_cap,
            gpus=fn.num_gpus,
        )
        while True:
            try:
                await self.broker.queue.enqueue(new)
                return
            except QueueFullError:  # back pressure: the node waits for room, within the deadline
                await asyncio.sleep(1.0)

    def _route(self, tenant: Tenant, owner: str, app_name: str, ref: str | None, path: str) -> Any:
        """(revision id, app cap, function, endpoint) of a node's target, or why not (blocking)."""
        app = self.registry.get_app(owner, app_name)
        if app is None or not self.registry.can_call(app, tenant):
            return f"app {owner}/{app_name} not found"
        rev = self.registry.revision_of(app, ref or "latest")
        if rev is None:
            return f"app {owner}/{app_name}@{ref} not found"
        route = AppSpec.model_validate(rev.spec).route(path)
        if route is None:
            return f"app {owner}/{app_name} has no endpoint at '{path}'"
        fn, ep = route
        return rev.id, app.max_inflight, fn, ep

    async def _cancel_nodes(self, run: _Run) -> None:
        """Cancel the node requests that have not completed (a no-op for completed ones)."""
        for node, rid in run.nodes.items():
            if node not in run.scope:
                with contextlib.suppress(Exception):
                    await self.broker.queue.cancel(rid)

    async def _event(self, run: _Run, node: str | None, event: str, **fields: Any) -> None:
        """Append a node event to the workflow's logs (and its stream, when streamed)."""
        what = f"node {node} {event}" if node else "workflow output ready"
        line = {
            "message": what,
            "level": "ERROR" if event == "failed" else "INFO",
            "source": WORKFLOW_SOURCE,
            "timestamp": datetime.fromtimestamp(time.time(), tz=UTC).isoformat(),
            "event": event,
            "node": node,
            **fields,
        }
        await self.broker.streams.append_logs(run.job.id, [line])
        if run.job.stream:
            chunk = {"event": event, "node": node, **fields}
            await self.broker.streams.add_chunk(run.job.id, json.dumps(chunk).encode())
