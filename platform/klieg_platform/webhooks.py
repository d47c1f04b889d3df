"""Webhook delivery: POST each completed request's outcome to the URL given at submit.

Contract. The broker's ``finish`` step adds every completed request that has a ``webhook`` to the
zset ``keys.WEBHOOKS``, scored by when it is due (ms). A ``WebhookSender`` runs in each gateway
process; every round it CLAIMS the due ids in one Lua script (their score moves to now + a claim
timeout, so no other sender takes them meanwhile), POSTs fal's webhook body, and RECORDS the try
in a second script:

- 2xx: the id leaves the zset; ``webhook_status=delivered``.
- otherwise (non-2xx, connection error, timeout): ``webhook_last_error`` is set and the id is due
  again after ``backoff_s``; after ``webhook_max_attempts`` tries it leaves the zset with
  ``webhook_status=failed``.

Record fields written here: ``webhook_status`` (``pending`` from the first claim, then
``delivered`` or ``failed``), ``webhook_attempts`` (tries so far) and ``webhook_last_error``.
Delivery is at least once: a sender that dies mid-POST leaves its claim to expire, and another
sender tries again. A record that expired meanwhile is dropped from the zset, never recreated.
Delivery only reads the outcome; the result stays fetchable. Given ``full_view`` (the gateway's
``GatewayState.full_view``), the error of a request whose tenant does not own the app goes out
as ``disclosure.error_view`` shows it, as in every other reply to that caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from klieg_platform.broker import UNAVAILABLE, Broker, Outage, Outcome, now_ms
from klieg_platform.config import Settings
from klieg_platform.disclosure import error_view
from klieg_platform.storage import BlobStore

log = logging.getLogger("klieg.webhooks")

FullView = Callable[[str, str, str], Awaitable[bool]]
"""(tenant id, owner, app) -> whether that tenant sees the app's errors as raised."""

MAX_BACKOFF_S = 300.0
BACKOFF_JITTER = 0.1


async def refused_target(url: str) -> str | None:
    """Why ``url`` may not receive webhooks where only public receivers are allowed: its host
    is, or resolves to, an address that is not globally routable (loopback, private, link-local,
    shared, reserved, multicast), or does not resolve. None when every address is public."""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"its host {host!r} does not resolve ({exc.strerror or exc})"
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not ip.is_global or ip.is_multicast:
            return f"its host {host!r} is at {ip}, not a public address"
    return None


def backoff_s(
    attempts: int,
    base_s: float,
    *,
    cap_s: float = MAX_BACKOFF_S,
    jitter: float = BACKOFF_JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Wait after the ``attempts``-th failed try: ``base_s * 2**(attempts-1)``, at most ``cap_s``,
    shortened by up to ``jitter`` (a fraction) so retries of many requests spread out."""
    nominal = min(cap_s, base_s * 2.0 ** min(max(attempts - 1, 0), 64))
    return nominal * (1.0 - jitter * rand())


def webhook_body(request_id: str, outcome: Outcome, result: bytes) -> dict[str, Any]:
    """fal's webhook body. OK: ``payload`` is the result JSON (``result``: its bytes; when they
    are not JSON, ``payload`` is null and ``payload_error`` says why). ERROR, as fal sends it:
    ``error`` names the failure, ``payload`` is the error body ``{detail, error_type}``, and
    ``error_type`` repeats its class."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if outcome.ok else "ERROR",
        "payload": None,
        "error": None,
        "payload_error": None,
    }
    if outcome.ok:
        try:
            body["payload"] = json.loads(result) if result else None
        except ValueError as exc:
            body["payload_error"] = f"the result is not JSON: {exc}"
        return body
    err = outcome.error or {}
    detail = err.get("detail", "request failed")
    body["error"] = detail if isinstance(detail, str) else json.dumps(detail)
    body["error_type"] = str(err.get("error_type") or "KliegError")
    body["payload"] = {"detail": detail, "error_type": body["error_type"]}
    return body


class WebhookSender:
    """Delivers webhooks of completed requests until stopped; one per gateway process.

    At most ``concurrency`` POSTs are in flight; each times out after ``timeout_s``. A claim
    lasts ``claim_timeout_s`` (longer than one POST); when idle the zset is polled every
    ``poll_s``.
    """

    def __init__(
        self,
        broker: Broker,
        store: BlobStore,
        settings: Settings,
        *,
        concurrency: int = 16,
        timeout_s: float = 10.0,
        claim_timeout_s: float = 60.0,
        poll_s: float = 0.2,
        full_view: FullView | None = None,
    ) -> None:
        self.broker = broker
        self.full_view = full_view
        self.store = store
        self.max_attempts = max(1, settings.webhook_max_attempts)
        self.base_backoff_s = settings.webhook_backoff_s
        self.allow_private = settings.webhook_allow_private
        self.concurrency = concurrency
        self.claim_ms = int(claim_timeout_s * 1000)
        self.poll_s = poll_s
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=concurrency),
            headers={"User-Agent": "klieg-webhooks"},
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._outage = Outage("webhook sender")
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="klieg-webhooks")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop claiming; give POSTs in flight ``grace_s`` to finish, then cancel them (their
        claims expire and another sender retries them). Never waits much longer than that.

        The loop is stopped by a flag rather than by cancellation: redis-py's asyncio client can
        swallow a ``CancelledError`` that lands inside a command (redis/redis-py#2028)."""
        self._stopping.set()
        if self._task is not None:
            _, running = await asyncio.wait({self._task}, timeout=grace_s)
            for task in running:
                task.cancel()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self._client.aclose()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                free = self.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(
                        self._inflight, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                claimed = await self.claim(free)
                for request_id in claimed:
                    task = asyncio.create_task(self.deliver(request_id))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                if len(claimed) < free:
                    await self._pause(self.poll_s)
            except UNAVAILABLE as exc:
                self._outage.lost(exc)
                await self._pause(1.0)
            except Exception:
                log.exception("webhook round failed; retrying")
                await self._pause(1.0)
            else:
                self._outage.back()

    async def claim(self, limit: int) -> list[str]:
        """Take up to ``limit`` due ids for this sender (atomic across senders)."""
        now = now_ms()
        return await self.broker.claims.claim_webhooks(now, now + self.claim_ms, limit)

    async def deliver(self, request_id: str) -> None:
        """One try for a claimed id; its outcome is recorded before returning. An unexpected
        error leaves the claim to expire, so the id is retried later."""
        try:
            await self._deliver(request_id)
        except Exception:
            log.exception("webhook delivery of %s failed unexpectedly", request_id)

    async def _deliver(self, request_id: str) -> None:
        state = await self.broker.queue.get(request_id)
        outcome = await self.broker.queue.outcome(request_id)
        if state is None or outcome is None or not state.webhook:
            await self.broker.claims.drop_webhook(request_id)
            return
        viewer = self.full_view
        shown_as_raised = (
            outcome.ok
            or not outcome.error
            or viewer is None
            or await viewer(state.tenant, state.owner, state.app)
        )
        if not shown_as_raised and outcome.error:
            outcome = replace(outcome, error=error_view(outcome.error))
        result, unreadable = outcome.result, ""
        if outcome.ok and outcome.result_ref:
            try:
                result = await asyncio.to_thread(self.store.get, outcome.result_ref)
            except Exception as exc:
                result, unreadable = b"", f"the result could not be read: {exc!r}"
        body = webhook_body(request_id, outcome, result)
        if unreadable:
            body["payload_error"] = unreadable
        refused = None if self.allow_private else await refused_target(state.webhook)
        if refused is not None:  # checked at submit too; the host's addresses may have changed
            error: str | None = f"refused: {refused}"
        else:
            error = await self._post(state.webhook, request_id, body)
        attempt = state.webhook_attempts + 1
        retry_at = now_ms() + int(backoff_s(attempt, self.base_backoff_s) * 1000)
        n = await self.broker.claims.record_webhook(request_id, error, retry_at, self.max_attempts)
        if error:
            log.info("webhook of %s failed (try %s): %s", request_id, n, error)

    async def _post(self, url: str, request_id: str, body: dict[str, Any]) -> str | None:
        """POST ``body``; None on 2xx, else what went wrong."""
        try:
            response = await self._client.post(
                url,
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "X-Klieg-Request-Id": request_id},
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
