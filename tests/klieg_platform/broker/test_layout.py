"""Only the broker package talks to Redis: no other platform module holds a Redis client (the
embedded server's launcher in ``local.py`` only pings the server it started)."""

from __future__ import annotations

import re
from pathlib import Path

import klieg_platform

ROOT = Path(klieg_platform.__file__).parent
_REDIS_USE = re.compile(r"^\s*(?:import redis\.asyncio|from redis|.*\bbroker\.redis\b)", re.M)


def test_no_module_outside_the_broker_uses_redis() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if "broker" not in path.relative_to(ROOT).parts and _REDIS_USE.search(path.read_text())
    ]
    assert offenders == []


def test_the_pattern_catches_a_direct_use() -> None:
    assert _REDIS_USE.search("    await gw.broker.redis.ping()\n")
    assert _REDIS_USE.search("import redis.asyncio as aioredis\n")
