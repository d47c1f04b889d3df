"""Redis out of reach: what it raises, and riding it out.

While Redis is down, restarting or loading its append-only file, every broker call raises one of
``UNAVAILABLE`` (redis-py's and ``Wire``'s connection errors; ``LOADING`` replies are
``BusyLoadingError``, a connection error too). A long-lived loop (a worker's dispatch, its
housekeeping, a lease renewal) catches them, says so once per outage through its ``Outage``,
and tries again after ``Outage.pause()``; a result that must reach Redis goes through
``until_available``, which retries until it does. The gateway answers them with 503 and
``Retry-After`` (``gateway/errors.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
"""What a broker call raises while Redis cannot answer."""

FIRST_PAUSE_S = 0.1
MAX_PAUSE_S = 2.0

log = logging.getLogger("klieg.broker")


class Outage:
    """One process's view of Redis being out of reach: logged once when it starts and once when
    it ends, with pauses between tries that double up to ``MAX_PAUSE_S``."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.since: float | None = None
        """When the current outage was first seen (monotonic); None while Redis answers."""
        self._pause = FIRST_PAUSE_S

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def lost(self, exc: BaseException) -> None:
        """A broker call failed with one of ``UNAVAILABLE``."""
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s: Redis is unavailable (%s); retrying until it is back", self.who, exc)

    def back(self) -> bool:
        """A broker call succeeded; True when that ends an outage."""
        if self.since is None:
            return False
        log.warning("%s: Redis is back after %.1f s", self.who, time.monotonic() - self.since)
        self.since, self._pause = None, FIRST_PAUSE_S
        return True

    async def pause(self) -> None:
        """Wait before the next try (longer each time, within the outage)."""
        await asyncio.sleep(self._pause)
        self._pause = min(MAX_PAUSE_S, self._pause * 2)


async def until_available(call: Callable[[], Awaitable[T]], outage: Outage) -> T:
    """``await call()``, tried again while it raises one of ``UNAVAILABLE``."""
    while True:
        try:
            value = await call()
        except UNAVAILABLE as exc:
            outage.lost(exc)
            await outage.pause()
            continue
        outage.back()
        return value
