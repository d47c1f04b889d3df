"""A steady stream of queue and sync requests to the ``steady`` app, and its tally.

``Stream`` sends requests from a few threads until stopped (two queue submits to each sync call)
and ``settle`` waits for every accepted queue request to finish. Every request ends in one
bucket of ``Tally``:

- ``completed``: the right result (``{"i": i, "square": i*i}`` of its own ``i``);
- ``failed``: a typed error (``error_type``) after it was accepted;
- ``refused``: not accepted, and the caller knows it: a typed refusal (503 with ``Retry-After``,
  429) or no connection to the gateway at all;
- ``interrupted``: a request whose connection the gateway dropped after it was sent (it was
  killed): the caller was told nothing, so it may or may not have run;
- ``wrong``: a result that is not its own, or an error without a type;
- ``lost``: accepted, yet its record is gone or it never finished.

``wrong`` and ``lost`` must be 0.

With ``runs`` (a directory), each run of a request that got to its answer is written down by the
app (``apps/steady``), and ``settle`` checks what at-least-once allows and no more: a request ran
at most as many times as it was dispatched (its ``attempts``: a crash or a lost lease shows as a
second attempt, a double dispatch would not), and every right result came from a run of its own
request. A breach counts as ``wrong``. ``runs``, ``retried`` (requests dispatched more than
once) and ``ran_twice`` (requests that ran more than once) are in the figures.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Tally:
    submitted: int = 0
    accepted: int = 0
    completed: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    interrupted: int = 0
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    runs: int = 0
    retried: int = 0
    ran_twice: int = 0
    samples: list[str] = field(default_factory=list)
    """The first few failures, as the caller saw them."""

    def figures(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "accepted": self.accepted,
            "completed": self.completed,
            "failed": dict(self.failed),
            "refused": dict(self.refused),
            "interrupted": self.interrupted,
            "wrong": len(self.wrong),
            "lost": len(self.lost),
            "runs": self.runs,
            "retried": self.retried,
            "ran_twice": self.ran_twice,
            "failure_samples": self.samples,
        }

    def check(self) -> None:
        """Raise unless nothing was lost, no result was wrong, and every request was counted
        once."""
        assert not self.wrong, f"wrong results: {self.wrong[:5]}"
        assert not self.lost, f"lost requests: {self.lost[:5]}"
        ended = self.completed + sum(self.failed.values()) + sum(self.refused.values())
        counted = ended + self.interrupted + len(self.wrong) + len(self.lost)
        assert counted == self.submitted, self.figures()


def _error_type(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_type") if isinstance(body, dict) else None


class Stream:
    """Requests to ``{owner}/steady`` at about ``rate`` per second, ``ms`` of work each, from
    ``threads`` threads (a third of them sync); with ``runs``, each run written down there."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        owner: str = "local",
        rate: float = 50.0,
        ms: int = 20,
        threads: int = 6,
        runs: Path | None = None,
    ) -> None:
        self.url, self.owner, self.rate, self.ms, self.threads = url, owner, rate, ms, threads
        self.runs = runs
        self.headers = {"Authorization": f"Key {key}"}
        self.tally = Tally()
        self.queued: dict[str, int] = {}
        """Accepted queue requests: request id -> its i."""
        self.answered: dict[str, int] = {}
        """Sync requests that were answered with their request id: id -> its i."""
        self.right: set[int] = set()
        """The i of every request answered with its right result."""
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- sending ------------------------------------------------------------------------
    def start(self) -> Stream:
        sync_threads = max(1, self.threads // 3)
        for n in range(self.threads):
            sync = n < sync_threads
            thread = threading.Thread(target=self._send_loop, args=(sync,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def run_for(
        self, seconds: float, during: Callable[[], None] | None = None, *, at_least: int = 0
    ) -> None:
        """Send for ``seconds``; ``during`` (the fault) is called a third of the way in. With
        ``at_least``, go on sending (for at most ``seconds`` more) until that many were
        submitted: a slow machine still sends its few hundred."""
        self.start()
        time.sleep(seconds / 3)
        if during is not None:
            during()
        time.sleep(seconds * 2 / 3)
        deadline = time.monotonic() + seconds
        while self.tally.submitted < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop()

    def _send_loop(self, sync: bool) -> None:
        """Sync calls (one at a time: each waits for its result) or queue submits; a third of
        the threads send sync calls, so a stalled sync path does not stall the queue's."""
        gap = self.threads / self.rate
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                i = next(self._next)
                with self._lock:
                    self.tally.submitted += 1
                if sync:
                    self._sync(http, i)
                else:
                    self._submit(http, i)
                self._stop.wait(max(0.0, gap - (time.monotonic() - started)))

    def _body(self, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {"i": i, "ms": self.ms}
        if self.runs is not None:
            body["runs"] = str(self.runs)
        return body

    def _count(self, bucket: str, reason: str = "") -> None:
        with self._lock:
            tally = self.tally
            if bucket == "completed":
                tally.completed += 1
            elif bucket == "interrupted":
                tally.interrupted += 1
            else:
                getattr(tally, bucket)[reason] += 1

    def _submit(self, http: httpx.Client, i: int) -> None:
        try:
            response = http.post(f"/queue/{self.owner}/steady", json=self._body(i))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._count("refused", f"unreachable: {type(exc).__name__}")
            return
        except httpx.TransportError:  # sent, but the gateway died before it answered
            self._count("interrupted")
            return
        if response.status_code == 200:
            with self._lock:
                self.tally.accepted += 1
                self.queued[response.json()["request_id"]] = i
            return
        self._refused(response, f"queue {i}")

    def _refused(self, response: httpx.Response, what: str) -> None:
        kind = _error_type(response)
        if kind is None:
            with self._lock:
                self.tally.wrong.append(f"{what}: untyped {response.status_code}")
            return
        self._count("refused", kind)

    def _sync(self, http: httpx.Client, i: int) -> None:
        try:
            response = http.post(f"/{self.owner}/steady", json=self._body(i))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._count("refused", f"unreachable: {type(exc).__name__}")
            return
        except httpx.TransportError:
            self._count("interrupted")
            return
        if response.status_code == 429 or (
            response.status_code == 503 and "retry-after" in response.headers
        ):  # refused at the door; a 503 without Retry-After is the request's own failure
            self._refused(response, f"sync {i}")
            return
        with self._lock:
            self.tally.accepted += 1
            if rid := response.headers.get("x-klieg-request-id"):
                self.answered[rid] = i
        self._ended(response, i, f"sync {i}")

    def _ended(self, response: httpx.Response, i: int, what: str) -> None:
        if response.status_code == 200:
            if response.json() == {"i": i, "square": i * i}:
                self._count("completed")
                with self._lock:
                    self.right.add(i)
            else:
                with self._lock:
                    self.tally.wrong.append(f"{what}: {response.text[:200]}")
            return
        kind = _error_type(response)
        if kind is None:
            with self._lock:
                self.tally.wrong.append(f"{what}: untyped {response.status_code}")
            return
        self._count("failed", kind)
        with self._lock:
            if len(self.tally.samples) < 5:
                self.tally.samples.append(f"{what}: {response.status_code} {response.text[:300]}")

    # ---- settling -------------------------------------------------------------------------
    def settle(self, timeout_s: float = 90.0) -> Tally:
        """Wait for every accepted queue request to finish, then read its result."""
        deadline = time.monotonic() + timeout_s
        pending = dict(self.queued)
        with (
            httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as http,
            ThreadPoolExecutor(8) as pool,
        ):
            while pending and time.monotonic() < deadline:
                ids = list(pending)
                states = dict(zip(ids, pool.map(lambda r: self._status(http, r), ids), strict=True))
                for rid, state in states.items():
                    if state == "GONE":
                        self.tally.lost.append(f"{rid}: record gone")
                        del pending[rid]
                    elif state == "COMPLETED":
                        self._read_result(http, rid, pending.pop(rid))
                if pending:
                    time.sleep(0.5)
            if self.runs is not None:
                self._check_runs(http, pool)
        for rid in pending:
            self.tally.lost.append(f"{rid}: not finished within {timeout_s:g} s")
        return self.tally

    def _check_runs(self, http: httpx.Client, pool: ThreadPoolExecutor) -> None:
        """Each request with a known id ran at most as often as it was dispatched; each right
        result came from a run (see the module)."""
        assert self.runs is not None
        log = self.runs / "runs.log"
        ran = collections.Counter(int(n) for n in log.read_text().split()) if log.exists() else {}
        ids = {**self.queued, **self.answered}
        attempts = dict(zip(ids, pool.map(lambda r: self._attempts(http, r), ids), strict=True))
        tally = self.tally
        tally.runs = sum(ran.values())
        tally.retried = sum(1 for n in attempts.values() if n is not None and n > 1)
        tally.ran_twice = sum(1 for i in ids.values() if ran.get(i, 0) > 1)
        for rid, i in ids.items():
            n = attempts[rid]
            if n is not None and ran.get(i, 0) > n:
                tally.wrong.append(f"{rid} (i={i}): ran {ran[i]} times in {n} attempts")
        for i in sorted(self.right):
            if not ran.get(i):
                tally.wrong.append(f"i={i}: answered right without a run")

    def _attempts(self, http: httpx.Client, rid: str) -> int | None:
        """How often request ``rid`` was dispatched (``GET /requests/{id}``); None when its
        record cannot be read."""
        response = _get(http, f"/requests/{rid}")
        if response is None or response.status_code != 200:
            return None
        return int(response.json()["attempts"])

    def _status(self, http: httpx.Client, rid: str) -> str:
        try:
            response = http.get(f"/queue/{self.owner}/steady/requests/{rid}/status")
        except httpx.TransportError:
            return "UNKNOWN"
        if response.status_code == 404:
            return "GONE"
        if response.status_code != 200:
            return "UNKNOWN"  # e.g. 503 while Redis restarts: ask again
        return str(response.json().get("status"))

    def _read_result(self, http: httpx.Client, rid: str, i: int) -> None:
        response = _get(http, f"/queue/{self.owner}/steady/requests/{rid}")
        if response is None:
            self.tally.lost.append(f"{rid}: result unreadable")
        else:
            self._ended(response, i, f"queue {i} ({rid})")


def _get(http: httpx.Client, path: str) -> httpx.Response | None:
    """``GET path``, asked again (20 times, 0.5 s apart) while the gateway cannot be reached or
    Redis restarts (503 ``UnavailableError``); None when it never answered otherwise."""
    for _ in range(20):
        try:
            response = http.get(path)
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if _error_type(response) == "UnavailableError":
            time.sleep(0.5)
            continue
        return response
    return None
