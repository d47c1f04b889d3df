"""Per-key rate limits: a token bucket per API key in Redis (``keys.rate``), shared by every
gateway, so a key's limit holds across the fleet. Only keys with a limit cost a call.

A rate is refilled at ``MIN_RATE_PER_S`` to ``MAX_RATE_PER_S`` tokens a second and holds at most
``MAX_BURST``: within those bounds every figure the script computes (the expiry of the bucket,
``burst / rate`` seconds; the wait for a token) is a whole number of milliseconds Redis takes as
an integer. The gateway refuses keys outside them; a stored key outside them (from before the
bounds) is taken at the nearest bound rather than failing its requests.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker import scripts as lua
from klieg_platform.broker.jobs import now_ms

MIN_RATE_PER_S = 1e-5
"""The slowest refill: about one request a day."""
MAX_RATE_PER_S = 100_000.0
MAX_BURST = 100_000


def bounded(rate_per_s: float, burst: int) -> tuple[float, int]:
    """``rate_per_s`` and ``burst`` brought within the bounds the script computes safely in."""
    rate = min(max(float(rate_per_s), MIN_RATE_PER_S), MAX_RATE_PER_S)
    return rate, min(max(int(burst), 1), MAX_BURST)


class Limits:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(lua.TAKE_TOKEN)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        """Spend one of ``key_id``'s tokens (refilled at ``rate_per_s``, at most ``burst`` held):
        0 when it had one, else the seconds until it will."""
        rate, most = bounded(rate_per_s, burst)
        wait_ms = await self._take(keys=[keys.rate(key_id)], args=[now_ms(), rate, most])
        return int(wait_ms) / 1000
