"""The job record: one request's fields, their encoding in Redis, and its state machine.

A request lives in the Redis hash ``keys.request(id)``. This module is the only place its fields
are named and encoded; the Lua scripts (``scripts.py``) take their field lists from here.

Encoding: text fields are UTF-8; numbers are decimal text; flags are ``"1"`` or empty; the
payload and the result are the client's and the endpoint's JSON bytes, untouched; ``error`` is
the JSON of a serialised ``KliegError`` ({detail, error_type}).

States and moves (each move is one Lua script, so a record is never in two places or in none)::

    (new)        --enqueue-->          IN_QUEUE
    IN_QUEUE     --take (dispatch)-->  IN_PROGRESS       leased in keys.INFLIGHT
    IN_QUEUE     --cancel-->           COMPLETED         error RequestCancelledError
    IN_PROGRESS  --requeue-->          IN_QUEUE          at its original queue position
    IN_PROGRESS  --finish-->           COMPLETED         result or error; expires after the TTL

Who writes which fields: the gateway (``NewRequest.fields``) every field of ``ROUTING`` at
enqueue; the scripts ``STATE``; the lease holder's completion ``OUTCOME`` (``Outcome.fields``);
the webhook sender ``DELIVERY``. ``test_jobs.py`` checks every field the scripts name is one of
these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


MOVES: dict[str, frozenset[Status]] = {
    "enqueue": frozenset({Status.IN_QUEUE}),
    "take": frozenset({Status.IN_PROGRESS}),
    "requeue": frozenset({Status.IN_QUEUE}),
    "finish": frozenset({Status.COMPLETED}),
}
"""The status each move writes (the scripts' status literals are checked against these)."""

TRANSITIONS: dict[Status | None, frozenset[Status]] = {
    None: frozenset({Status.IN_QUEUE}),
    Status.IN_QUEUE: frozenset({Status.IN_PROGRESS, Status.COMPLETED}),
    Status.IN_PROGRESS: frozenset({Status.IN_QUEUE, Status.COMPLETED}),
    Status.COMPLETED: frozenset(),
}

ROUTING = (
    "id", "owner", "tenant", "app", "app_key", "tier", "gpus", "revision", "function",
    "endpoint", "pool", "payload", "payload_ref", "timeout_s", "deadline_ms", "webhook",
    "stream", "reply_to", "status", "created_ms", "attempts", "priority", "hint",
)  # fmt: skip
"""Written once, at enqueue (with the first status and an attempt count of 0). ``reply_to``:
the channel of the gateway waiting to answer the request (``keys.reply``), or empty;
``priority``: ``NORMAL`` or ``LOW`` (``X-Fal-Queue-Priority``; a record without it is normal);
``hint``: the runner hint (``X-Fal-Runner-Hint``), or empty."""

NORMAL, LOW = "normal", "low"
PRIORITIES = (NORMAL, LOW)
"""A request's queue priority: a low one waits behind the normal ones of its tenant and function
in its tier (``scheduler``, rule 2), nothing else."""

STATE = (
    "status", "score", "worker", "started_ms", "finished_ms", "attempts", "cancel_requested",
    "cancelled", "cold_ms", "setup_ms",
)  # fmt: skip
"""Written by the scripts as the request moves: ``score`` is its queue score (enqueue time,
made unique), ``worker`` the lease holder, ``cold_ms`` how long the request waited for a runner
started for it and ``setup_ms`` how much of that the app's setup() took (both written with its
outcome; 0: a warm runner served it)."""

OUTCOME = ("outcome", "result", "result_ref", "error", "http_status")
"""Written once, when the request completes."""

DELIVERY = ("webhook_status", "webhook_attempts", "webhook_last_error")
"""Written by the webhook sender."""

FIELDS = frozenset((*ROUTING, *STATE, *OUTCOME, *DELIVERY))

JOB = (
    "revision", "function", "endpoint", "payload", "timeout_s", "owner", "app", "payload_ref",
    "deadline_ms", "stream", "tenant", "hint",
)  # fmt: skip
"""The record fields a leased job carries to its worker, in the order the take step returns
them (after the id, the attempt count, ``more`` and ``units``)."""

JOB_HEAD = ("id", "attempts", "more", "units")
JOB_ROW = len(JOB_HEAD) + len(JOB)
"""Values per leased job in a dispatch script's reply."""

STATE_VIEW = (
    "status", "owner", "tenant", "app", "pool", "outcome", "error", "http_status",
    "created_ms", "started_ms", "finished_ms", "attempts", "cancel_requested", "webhook",
    "tier", *DELIVERY, "endpoint", "revision", "cold_ms", "setup_ms", "priority",
)  # fmt: skip
"""What ``RequestState`` reads (no payload, no result)."""

OUTCOME_VIEW = ("status", *OUTCOME)

REPLY = ("http_status", "outcome", "result_ref", "error", "result")
"""The fields a completion published on a ``reply_to`` channel carries, in order, after the
request id; one line each, the result (which may hold anything) last."""


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _int(value: bytes | None, default: int = 0) -> int:
    return int(value) if value else default


def lua_list(names: Sequence[str]) -> str:
    """``names`` as a Lua argument list: ``'a', 'b'``."""
    return ", ".join(f"'{n}'" for n in names)


@dataclass(frozen=True)
class NewRequest:
    """What the gateway enqueues. ``payload_ref`` names a blob holding a large payload."""

    id: str
    owner: str
    tenant: str
    app: str
    revision: str
    function: str
    endpoint: str
    pool: str
    payload: bytes
    timeout_s: float
    payload_ref: str = ""
    deadline_ms: int = 0
    webhook: str = ""
    stream: bool = False
    reply_to: str = ""
    tier: str = "free"
    tenant_cap: int = 0
    app_cap: int = 0
    gpus: int = 0
    priority: str = NORMAL
    hint: str = ""

    @property
    def app_key(self) -> str:
        return f"{self.owner}/{self.app}"

    def values(self, created_ms: int) -> list[Any]:
        """The values of the record's ``ROUTING`` fields, in that order (``ENQUEUE`` pairs
        them with the names)."""
        return [
            self.id, self.owner, self.tenant, self.app, self.app_key, self.tier, str(self.gpus),
            self.revision, self.function, self.endpoint, self.pool, self.payload,
            self.payload_ref, str(self.timeout_s), str(self.deadline_ms), self.webhook,
            "1" if self.stream else "", self.reply_to, Status.IN_QUEUE.value, str(created_ms),
            "0", self.priority, self.hint,
        ]  # fmt: skip

    def fields(self, created_ms: int) -> list[Any]:
        """The record's ``ROUTING`` fields as HSET arguments (name, value, ...)."""
        values = self.values(created_ms)
        return [item for pair in zip(ROUTING, values, strict=True) for item in pair]


@dataclass(frozen=True)
class Job:
    """A leased request, as a worker receives it from a dispatch."""

    id: str
    revision: str
    function: str
    endpoint: str
    payload: bytes
    timeout_s: float
    owner: str
    app: str
    attempts: int
    more: bool = False
    """Whether the worker's pools still had queued requests after this one was taken."""
    payload_ref: str = ""
    deadline_ms: int = 0
    stream: bool = False
    units: int = 1
    """Worker slots the request takes: its function's num_gpus, at least one."""
    tenant: str = ""
    """The id of the tenant that made the request."""
    hint: str = ""
    """Its runner hint: the worker prefers an idle runner reporting it (empty: none)."""

    @property
    def app_key(self) -> str:
        return f"{self.owner}/{self.app}"

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Job:
        """A Job from one ``JOB_ROW`` slice of a dispatch script's reply."""
        rid, attempts, more, units = row[: len(JOB_HEAD)]
        f = dict(zip(JOB, row[len(JOB_HEAD) : JOB_ROW], strict=True))
        return cls(
            id=_s(rid),
            revision=_s(f["revision"]),
            function=_s(f["function"]),
            endpoint=_s(f["endpoint"]),
            payload=f["payload"] or b"",
            timeout_s=float(_s(f["timeout_s"]) or 600),
            owner=_s(f["owner"]),
            app=_s(f["app"]),
            attempts=_int(attempts),
            more=_int(more) > 0,
            payload_ref=_s(f["payload_ref"]),
            deadline_ms=_int(f["deadline_ms"]),
            stream=bool(f["stream"]),
            units=_int(units),
            tenant=_s(f["tenant"]),
            hint=_s(f["hint"]),
        )

    @classmethod
    def rows(cls, reply: Sequence[Any] | None) -> list[Job]:
        """Every job of a reply holding ``JOB_ROW`` values per job."""
        reply = reply or []
        return [cls.from_row(reply[i : i + JOB_ROW]) for i in range(0, len(reply), JOB_ROW)]


@dataclass(frozen=True)
class Outcome:
    """How a request ended: ``result`` JSON bytes (or ``result_ref``, a blob) when ok, else
    ``error`` {detail, error_type}. ``logs`` are lines not yet appended to the request's log."""

    ok: bool
    result: bytes = b""
    error: dict[str, Any] | None = None
    http_status: int = 200
    logs: list[dict[str, Any]] = field(default_factory=list)
    result_ref: str = ""

    def fields(self) -> list[Any]:
        """The record's ``OUTCOME`` fields as HSET arguments."""
        return [
            "outcome", "ok" if self.ok else "error",
            "result", self.result, "result_ref", self.result_ref,
            "error", json.dumps(self.error) if self.error else "",
            "http_status", str(self.http_status),
        ]  # fmt: skip

    @classmethod
    def from_reply(cls, data: bytes) -> tuple[str, Outcome]:
        """The request id and outcome of a completion published on a reply channel."""
        request_id, http_status, outcome, ref, error, result = data.split(b"\n", len(REPLY))
        return _s(request_id), cls(
            ok=outcome == b"ok",
            result=result,
            error=json.loads(error) if error else None,
            http_status=_int(http_status, 200),
            result_ref=_s(ref),
        )

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Outcome | None:
        """From the ``OUTCOME_VIEW`` values of a record; None unless it is COMPLETED."""
        status, outcome, result, ref, error, http_status = values
        if status != Status.COMPLETED.encode():
            return None
        return cls(
            ok=outcome == b"ok",
            result=result or b"",
            error=json.loads(error) if error else None,
            http_status=_int(http_status, 200),
            result_ref=_s(ref),
        )


def error_fields(error: dict[str, Any], http_status: int) -> list[Any]:
    """The ``OUTCOME`` fields of a request that failed with ``error`` (set by a script)."""
    return Outcome(ok=False, error=error, http_status=http_status).fields()


@dataclass(frozen=True)
class RequestState:
    """A request record as the gateway reports it (without its result; see ``Outcome``)."""

    id: str
    status: str
    owner: str
    tenant: str
    app: str
    pool: str
    outcome: str | None
    error: dict[str, Any] | None
    http_status: int
    logs: list[dict[str, Any]] | None
    queue_position: int | None
    created_ms: int
    started_ms: int | None
    finished_ms: int | None
    attempts: int
    cancel_requested: bool = False
    webhook: str = ""
    tier: str = ""
    webhook_status: str = ""
    webhook_attempts: int = 0
    webhook_last_error: str = ""
    endpoint: str = ""
    revision: str = ""
    cold_ms: int = 0
    setup_ms: int = 0
    priority: str = NORMAL

    @classmethod
    def from_values(
        cls,
        request_id: str,
        values: Sequence[Any],
        *,
        logs: list[dict[str, Any]] | None = None,
        queue_position: int | None = None,
    ) -> RequestState | None:
        """From the ``STATE_VIEW`` values of a record; None when there is no record."""
        row: dict[str, Any] = dict(zip(STATE_VIEW, values, strict=True))
        if row["status"] is None:
            return None
        err = row["error"]
        return cls(
            id=request_id,
            status=_s(row["status"]),
            owner=_s(row["owner"]),
            tenant=_s(row["tenant"]),
            app=_s(row["app"]),
            pool=_s(row["pool"]),
            outcome=_s(row["outcome"]) or None,
            error=json.loads(err) if err else None,
            http_status=_int(row["http_status"], 200),
            logs=logs,
            queue_position=queue_position,
            created_ms=_int(row["created_ms"]),
            started_ms=_int(row["started_ms"]) or None,
            finished_ms=_int(row["finished_ms"]) or None,
            attempts=_int(row["attempts"]),
            cancel_requested=bool(row["cancel_requested"]),
            webhook=_s(row["webhook"]),
            tier=_s(row["tier"]),
            webhook_status=_s(row["webhook_status"]),
            webhook_attempts=_int(row["webhook_attempts"]),
            webhook_last_error=_s(row["webhook_last_error"]),
            endpoint=_s(row["endpoint"]),
            revision=_s(row["revision"]),
            cold_ms=_int(row["cold_ms"]),
            setup_ms=_int(row["setup_ms"]),
            priority=_s(row["priority"]) or NORMAL,
        )


def now_ms() -> int:
    """The broker's clock: unix time in ms."""
    return int(time.time() * 1000)
