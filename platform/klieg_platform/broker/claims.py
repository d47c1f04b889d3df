"""Claims: short exclusive holds (one prewarm per function, one blob sweep or fleet sample per
period: ``EachPeriod`` runs such steps) and the webhook due set (``keys.WEBHOOKS``), whose
senders claim due ids so no two POST the same one at once. The webhook contract is in
``webhooks.py``; its two scripts in ``scripts.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker import scripts as lua
from klieg_platform.broker.outage import UNAVAILABLE

log = logging.getLogger("klieg.periodic")


class Claims:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim_webhooks = redis.register_script(lua.CLAIM_WEBHOOKS)
        self._record_webhook = redis.register_script(lua.RECORD_WEBHOOK)

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        """A short exclusive claim (SET NX PX): True for the one caller that got it."""
        return bool(await self.redis.set(key, owner, nx=True, px=int(ttl_s * 1000)))

    async def claim_webhooks(self, now_ms: int, until_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` request ids whose webhook is due at ``now_ms``, held until
        ``until_ms`` for the caller (their records get ``webhook_status=pending``)."""
        ids: list[Any] = await self._claim_webhooks(
            keys=[keys.WEBHOOKS], args=[now_ms, until_ms, limit]
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def record_webhook(
        self, request_id: str, error: str | None, retry_at_ms: int, max_attempts: int
    ) -> int:
        """Record one try (no ``error``: delivered); the tries so far, -1 when the record is
        gone. A failed try is due again at ``retry_at_ms`` until ``max_attempts``."""
        n = await self._record_webhook(
            keys=[keys.request(request_id), keys.WEBHOOKS, keys.METRICS_WEBHOOKS],
            args=[request_id, "" if error else "1", error or "", retry_at_ms, max_attempts],
        )
        return int(n)

    async def drop_webhook(self, request_id: str) -> None:
        """Forget a due webhook (its request or its URL is gone)."""
        await self.redis.zrem(keys.WEBHOOKS, request_id)


class EachPeriod:
    """A background step that one process of the fleet runs per period: every ``every_s``,
    whoever takes the claim ``claim_key`` (for 0.9 of the period) runs ``step``. A Redis outage
    skips a period; ``stop`` lets the step under way finish (a flag, not a cancel)."""

    name = "klieg-periodic"

    def __init__(self, claims: Claims, claim_key: str, every_s: float) -> None:
        self.claims = claims
        self.claim_key = claim_key
        self.every_s = every_s
        self._owner = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def step(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        if self.every_s > 0:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            _, running = await asyncio.wait({self._task}, timeout=5)
            for task in running:
                task.cancel()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if await self.claims.claim(self.claim_key, self._owner, self.every_s * 0.9):
                    await self.step()
            except UNAVAILABLE as exc:  # the next period runs it
                log.warning("%s skipped: Redis is unavailable (%s)", self.name, exc)
            except Exception:
                log.exception("%s failed", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.every_s)
