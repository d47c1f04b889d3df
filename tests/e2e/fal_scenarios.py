"""Scenarios run with the unmodified ``fal_client`` against a Klieg platform; one per process.

``fal_client`` reads ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` when it is imported, so each
scenario runs in a fresh interpreter with those, ``FAL_KEY`` and ``SSL_CERT_FILE`` set::

    python -m tests.e2e.fal_scenarios submit

It prints one JSON object on its last stdout line: what the scenario saw, ``error`` when it
raised, ``timed_out`` when it ran past ``FAL_SCENARIO_DEADLINE_S`` (default 25). Requests whose
queue must be full first submit ``FAL_SCENARIO_BLOCKERS`` slow requests (the worker's slots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import fal_client
import fal_client.client
import httpx

ECHO = "local/echo"
APP = "local/falcompat"
Out = dict[str, Any]


def status_json(status: fal_client.Status) -> Out:
    return {"type": type(status).__name__, **dataclasses.asdict(status)}


def error_json(exc: BaseException) -> Out:
    out: Out = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, fal_client.FalClientHTTPError):
        out.update(message=exc.message, status_code=exc.status_code, error_type=exc.error_type)
    return out


def outcome(call: Callable[[], Any]) -> Out:
    """``{"value": ...}`` or ``{"error": ...}``: a call that may raise, as data."""
    try:
        return {"value": call()}
    except Exception as exc:
        return {"error": error_json(exc)}


def poll(handle: fal_client.SyncRequestHandle, until: type, timeout_s: float) -> list[Out]:
    """Statuses (with logs) until one is an ``until``; only those that differ from the last."""
    seen: list[Out] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = handle.status(with_logs=True)
        entry = status_json(status)
        if not seen or entry != seen[-1]:
            seen.append(entry)
        if isinstance(status, (until, fal_client.Completed)):
            return seen
        time.sleep(0.05)
    seen.append({"type": "Timeout"})
    return seen


def blockers(seconds: float) -> list[fal_client.SyncRequestHandle]:
    """Fill the worker's slots with slow requests so the next one waits IN_QUEUE."""
    count = int(os.environ.get("FAL_SCENARIO_BLOCKERS", "2"))
    args = {"seconds": seconds}
    handles = [fal_client.submit(f"{APP}/slow", arguments=args) for _ in range(count)]
    for handle in handles:  # running, so the slots are taken before the next request arrives
        poll(handle, fal_client.InProgress, 20)
    return handles


def within(call: Callable[[], Any], timeout_s: float) -> Out:
    """``outcome(call)``, or ``{"error": {"type": "Timeout"}}`` when it takes longer."""
    box: list[Out] = []
    thread = threading.Thread(target=lambda: box.append(outcome(call)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    return box[0] if box else {"error": {"type": "Timeout", "after_s": timeout_s}}


def run(out: Out) -> None:
    out["root"] = fal_client.run(ECHO, arguments={"text": "hi"})
    out["path"] = fal_client.run(f"{ECHO}/upper", arguments={"text": "hi"})
    out["trailing_slash"] = fal_client.run(ECHO, arguments={"text": "slash"}, path="/")


def submit(out: Out) -> None:
    handle = fal_client.submit(APP, arguments={"text": "submitted", "seconds": 1.0})
    out["request_id"] = handle.request_id
    out["urls"] = [handle.status_url, handle.response_url, handle.cancel_url]
    out["seen"] = poll(handle, fal_client.Completed, 20)
    again = fal_client.status(APP, handle.request_id, with_logs=True)
    out["status_by_id"] = status_json(again)
    out["status_without_logs"] = status_json(handle.status(with_logs=False))
    out["result"] = handle.get()
    out["result_by_id"] = fal_client.result(APP, handle.request_id)


def subscribe(out: Out) -> None:
    waiting = blockers(3.0)
    events: list[Out] = []
    enqueued: list[str] = []
    out["result"] = fal_client.subscribe(
        APP,
        arguments={"text": "subscribed", "seconds": 0.5},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=lambda status: events.append(status_json(status)),
    )
    out["enqueued"] = enqueued
    out["events"] = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    out["blockers"] = [h.get()["text"] for h in waiting]


def cancel_running(out: Out) -> None:
    handle = fal_client.submit(f"{APP}/slow", arguments={"seconds": 8})
    out["before"] = poll(handle, fal_client.InProgress, 20)[-1]
    out["cancel"] = within(handle.cancel, 8)
    out["after"] = poll(handle, fal_client.Completed, 10)[-1]
    out["get"] = within(handle.get, 10)


def cancel_queued(out: Out) -> None:
    waiting = blockers(3)
    handle = fal_client.submit(APP, arguments={"text": "never"})
    out["before"] = status_json(handle.status())
    out["cancel"] = within(handle.cancel, 8)
    out["after"] = poll(handle, fal_client.Completed, 10)[-1]
    out["get"] = within(handle.get, 10)
    out["blockers"] = [h.get()["text"] for h in waiting]


def stream(out: Out) -> None:
    out["default_path"] = within(lambda: list(fal_client.stream(APP, arguments={"n": 3})), 10)


def errors(out: Out) -> None:
    out["bad_body"] = outcome(lambda: fal_client.run(ECHO, arguments={}))
    out["unknown_app"] = outcome(lambda: fal_client.run("local/nope", arguments={}))
    out["unknown_app_submit"] = outcome(lambda: fal_client.submit("local/nope", arguments={}))
    out["app_error"] = outcome(lambda: fal_client.run(f"{APP}/fail", arguments={"text": "x"}))
    bad_key = fal_client.SyncClient(key="nokey:nosecret")
    out["bad_key"] = outcome(lambda: bad_key.run(ECHO, arguments={"text": "hi"}))


def workflow(out: Out) -> None:
    flow = "workflows/local/twice"
    out["run"] = fal_client.run(flow, arguments={"text": "abc"})
    handle = fal_client.submit(flow, arguments={"text": "queued"})
    out["urls"] = [handle.status_url, handle.response_url, handle.cancel_url]
    out["seen"] = poll(handle, fal_client.Completed, 20)
    out["result"] = handle.get()
    out["bad_input"] = outcome(lambda: fal_client.run(flow, arguments={"text": 1}))


def upload(out: Out) -> None:
    """fal_client's own upload into Klieg's blob store. fal_client (1.0.3, the newest) has no
    variable for its storage hosts: ``REST_URL`` (the token) and ``CDN_URL`` (the upload) are
    module constants, so they are pointed at the gateway here, before the first upload."""
    gateway = f"https://{os.environ['FAL_RUN_HOST']}"
    fal_client.client.REST_URL = gateway
    fal_client.client.CDN_URL = gateway
    folder = tempfile.mkdtemp()
    picture = os.path.join(folder, "dot.png")
    with open(picture, "wb") as f:
        f.write(PNG)
    out["file_url"] = fal_client.upload_file(picture)
    out["bytes_url"] = fal_client.upload(b"plain words", "text/plain", file_name="words.txt")
    with httpx.Client(verify=ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])) as c:
        got = c.get(out["file_url"])
        out["file_back"] = [got.status_code, got.content == PNG, got.headers["content-type"]]
        got = c.get(out["bytes_url"])
        out["bytes_back"] = [got.status_code, got.text]


def priority(out: Out) -> None:
    """Low requests queued first, then normal ones, while blockers hold the slots."""
    waiting = blockers(3.0)
    route, handles = f"{APP}/lora", {}
    for tag, level in (("low1", "low"), ("low2", "low"), ("normal1", None), ("normal2", None)):
        handles[tag] = fal_client.submit(route, arguments={"seconds": 0.5}, priority=level)
    out["positions"] = {tag: status_json(h.status())["position"] for tag, h in handles.items()}
    started = {tag: h.get()["started"] for tag, h in handles.items()}
    out["start_order"] = sorted(started, key=started.__getitem__)
    out["blockers"] = [h.get()["text"] for h in waiting]


def hint(out: Out) -> None:
    """Two runners load LoRA "a" and "b"; hinted requests then go to the runner holding theirs."""
    route = f"{APP}/lora"
    first = [fal_client.submit(route, arguments={"lora": lora, "seconds": 1.5}) for lora in "ab"]
    out["pids"] = {run["lora"]: run["pid"] for run in (h.get() for h in first)}
    out["hinted_runs"] = [
        [lora, fal_client.run(route, arguments={"lora": lora}, hint=lora)["pid"]] for lora in "abba"
    ]
    handle = fal_client.submit(route, arguments={"lora": "b"}, hint="b")
    out["hinted_submit"] = handle.get()["pid"]
    out["bad_hint"] = outcome(lambda: fal_client.run(route, arguments={}, hint="x" * 300))


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
"""A 1x1 PNG."""


SCENARIOS: dict[str, Callable[[Out], None]] = {
    f.__name__: f
    for f in (
        run, submit, subscribe, cancel_running, cancel_queued, stream, errors, workflow, upload,
        priority, hint,
    )
}  # fmt: skip


def main(name: str) -> None:
    out: Out = {}

    def body() -> None:
        try:
            SCENARIOS[name](out)
        except Exception as exc:
            out["error"] = error_json(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(float(os.environ.get("FAL_SCENARIO_DEADLINE_S", "25")))
    if thread.is_alive():
        out["timed_out"] = True
    sys.stdout.write(json.dumps(dict(out), default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
