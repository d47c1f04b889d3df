"""The job record is defined once: the scripts name only its fields and move it only as its state
machine allows; what the gateway writes is what a worker and a status reader get back."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid

import pytest

from klieg_platform import keys
from klieg_platform.broker import Broker, Job, NewRequest, Outcome, Status, jobs
from klieg_platform.broker import scripts as lua

pytestmark = pytest.mark.timeout(30)

SCRIPTS = {
    name: text
    for name, text in vars(lua).items()
    if name.isupper() and isinstance(text, str) and "redis" in text
}
_HASH_CALL = re.compile(r"redis\.call\('H(SET|MGET|GET|INCRBY)',\s*([^,]+),([^)]*)\)", re.S)
_STATUS_WRITE = re.compile(r"'status',\s*(S_\w+)")


def record_fields(script: str) -> set[str]:
    """Field names a script reads or writes literally on a request record (the hash commands
    on other hashes take variables, not literals, as their field)."""
    names: set[str] = set()
    for command, _, args in _HASH_CALL.findall(script):
        parts = [a.strip() for a in args.split(",")]
        fields = {"SET": parts[0::2], "INCRBY": parts[:1]}.get(command, parts)
        names.update(m.group(1) for f in fields if (m := re.fullmatch(r"'(\w+)'", f)))
    return names


def test_scripts_name_only_fields_of_the_record() -> None:
    assert SCRIPTS, "no scripts found"
    for name, script in SCRIPTS.items():
        unknown = record_fields(script) - jobs.FIELDS
        assert not unknown, f"{name} uses fields the job record does not define: {unknown}"


def _step(name: str) -> str:
    """The body of the prelude's Lua function ``name``."""
    start = lua.PRELUDE.index(f"local function {name}(")
    return lua.PRELUDE[start : lua.PRELUDE.index("\nend\n", start)]


def test_status_is_written_only_by_the_prelude_steps_as_the_moves_say() -> None:
    names = {"S_QUEUED": Status.IN_QUEUE, "S_RUNNING": Status.IN_PROGRESS}
    names["S_DONE"] = Status.COMPLETED
    for step in ("finish", "requeue", "take"):
        written = {names[n] for n in _STATUS_WRITE.findall(_step(step))}
        assert written == set(jobs.MOVES[step]), step
    rest = lua.PRELUDE
    for step in ("finish", "requeue", "take"):
        rest = rest.replace(_step(step), "")
    assert not _STATUS_WRITE.findall(rest), "the prelude writes a status outside its steps"
    for name, script in SCRIPTS.items():
        if name == "PRELUDE":
            continue
        body = script.partition(lua.OWN_PART)[2] if lua.OWN_PART in script else script
        assert not _STATUS_WRITE.findall(body), f"{name} writes a status outside the steps"
    enqueued = _new().fields(0)
    assert enqueued[enqueued.index("status") + 1] in jobs.MOVES["enqueue"]


def test_the_take_row_is_the_record_job_fields_in_order() -> None:
    assert f"redis.call('HMGET', rk, {jobs.lua_list(jobs.JOB)}," in lua.PRELUDE
    assert f"unpack(f, 1, {len(jobs.JOB)})" in lua.PRELUDE
    assert len(jobs.JOB_HEAD) + len(jobs.JOB) == jobs.JOB_ROW
    assert set(jobs.JOB) <= set(jobs.ROUTING)


def test_every_view_reads_declared_fields() -> None:
    for view in (jobs.JOB, jobs.STATE_VIEW, jobs.OUTCOME_VIEW):
        assert set(view) <= jobs.FIELDS


def test_transitions_cover_every_move() -> None:
    targets = {s for moves in jobs.MOVES.values() for s in moves}
    reachable = {s for nxt in jobs.TRANSITIONS.values() for s in nxt}
    assert targets == reachable == set(Status)
    assert not jobs.TRANSITIONS[Status.COMPLETED]


def _new(**overrides: object) -> NewRequest:
    base: dict[str, object] = dict(
        id=uuid.uuid4().hex, owner="alice", tenant="t-alice", app="echo", revision="rev-1",
        function="echo", endpoint="/say", pool="CPU", payload=b'{"x": 1}', timeout_s=12.5,
        payload_ref="payloads/p", deadline_ms=4_102_444_800_000, webhook="http://h/x",
        stream=True, tier="free", tenant_cap=3, app_cap=2, gpus=2,
    )  # fmt: skip
    base.update(overrides)
    return NewRequest(**base)  # type: ignore[arg-type]


def test_a_record_round_trips_through_enqueue_dispatch_and_complete(redis_url: str) -> None:
    async def main() -> None:
        b = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        try:
            req = _new()
            await b.queue.enqueue(req)
            stored = await b.redis.hgetall(keys.request(req.id))
            assert {k.decode() for k in stored} == {*jobs.ROUTING, "score"}
            seen = [(await b.queue.get(req.id)).status]  # type: ignore[union-attr]

            job = await b.queue.dispatch(["CPU"], "w1", 30, free_units=2, total_units=2)
            assert isinstance(job, Job)
            assert job == Job(
                id=req.id, revision=req.revision, function=req.function,
                endpoint=req.endpoint, payload=req.payload, timeout_s=req.timeout_s,
                owner=req.owner, app=req.app, attempts=1, more=False,
                payload_ref=req.payload_ref, deadline_ms=req.deadline_ms, stream=True,
                units=2, tenant=req.tenant,
            )  # fmt: skip
            seen.append((await b.queue.get(req.id)).status)  # type: ignore[union-attr]
            assert await b.queue.requeue(req.id, "w1")
            seen.append((await b.queue.get(req.id)).status)  # type: ignore[union-attr]
            job = await b.queue.dispatch(["CPU"], "w1", 30, free_units=2, total_units=2)
            assert isinstance(job, Job) and job.attempts == 2
            out = Outcome(
                ok=False, error={"detail": "no", "error_type": "AppError"}, http_status=500
            )
            assert await b.queue.complete(req.id, "w1", out)
            state = await b.queue.get(req.id)
            assert state is not None
            seen.append(state.status)
            assert await b.queue.outcome(req.id) == out
            got = (state.owner, state.tenant, state.app, state.pool, state.tier, state.webhook)
            assert got == (req.owner, req.tenant, req.app, req.pool, req.tier, req.webhook)
            assert state.error == out.error and state.http_status == 500 and state.attempts == 2
            assert state.started_ms and state.finished_ms and state.created_ms

            path: list[Status | None] = [None, *map(Status, seen)]
            for before, after in itertools.pairwise(path):
                assert after in jobs.TRANSITIONS[before], (before, after)
        finally:
            await b.close()

    asyncio.run(main())


def test_a_cancelled_record_is_completed_with_the_cancel_error(redis_url: str) -> None:
    async def main() -> None:
        b = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        try:
            req = _new(webhook="")
            await b.queue.enqueue(req)
            assert await b.queue.cancel(req.id) == 1
            outcome = await b.queue.outcome(req.id)
            assert outcome is not None and not outcome.ok and outcome.http_status == 499
            assert outcome.error == {
                "detail": "request cancelled",
                "error_type": "RequestCancelledError",
            }
            assert await b.redis.hget(keys.request(req.id), "cancelled") == b"1"
        finally:
            await b.close()

    asyncio.run(main())


def test_a_script_defines_the_prelude_steps_it_calls_and_no_others() -> None:
    steps = re.findall(r"^local function (\w+)\(", lua.PRELUDE, re.M)
    for name, script in SCRIPTS.items():
        defined, _, own = script.partition(lua.OWN_PART)
        if not own:
            continue  # the prelude itself, or a script without it
        have = set(re.findall(r"^local function (\w+)\(", defined, re.M))
        called = {step for step in steps if re.search(rf"\b{step}\(", own)}
        assert called <= have, f"{name} calls steps it does not define: {called - have}"
        assert have < set(steps) or name == "CANCEL", f"{name} defines every step"
        assert defined.startswith(lua.PRELUDE[: lua.PRELUDE.index("\n--")]), "the head"
    finish = lua.trim(lua.PRELUDE + "return finish('r', 0, 1, {})")
    for step in ("finishing", "counted", "park_tenant", "unpark_app", "measure", "fold_metrics"):
        assert f"local function {step}(" in finish, step
    assert "local function take(" not in finish
