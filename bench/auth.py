"""What authentication adds to a request: ``auth.Authenticate`` on a fake ASGI scope.

    .venv/bin/python bench/auth.py [--requests N] [--rounds R]

Each target is awaited N times (default 50000) per round, R rounds (default 15), in turns:

bare         the inner app alone: ``Request(scope)``, the floor every route pays anyway
public       ``Authenticate(PUBLIC)`` around it (credentials not read)
caller_key   ``Authenticate(CALLER)`` with ``Authorization: Key <id>:<secret>``, cached, and the
             inner app reading ``auth.caller(request)``: the sync run route's auth
caller_token the same with a call token (``Bearer kc1.…``), cached

The scope carries the eight headers fal's client sends, ``Authorization`` last. No server, Redis
or registry runs: the caches are primed, so this is the cost of a cache hit. Reported per
target: ns per request (min and median over rounds) and ``added_ns`` over ``bare`` (from the
minima, the figure least moved by other load on a shared machine), and the auth cache lookups
one request made. stdout gets exactly one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from klieg_platform import calltokens
from klieg_platform.config import Settings
from klieg_platform.gateway import auth
from klieg_platform.gateway.state import GatewayState
from klieg_platform.registry import Tenant

SIGNING_KEY = "bench-signing-key"
TENANT = Tenant("t1", "local", "enterprise", 0.0)
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"fal-client/0.5"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept", b"*/*"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"application/json"),
    (b"content-length", b"15"),
]


class CountingCache(dict[tuple[str, str], tuple[float, Tenant]]):
    """The auth cache, counting its lookups."""

    lookups = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    Request(scope, receive)


async def reads_caller(scope: Scope, receive: Receive, send: Send) -> None:
    assert auth.caller(Request(scope, receive)) is TENANT


def scope_for(gw: GatewayState, authorization: str | None) -> Scope:
    extra = [] if authorization is None else [(b"authorization", authorization.encode())]
    app = SimpleNamespace(state=SimpleNamespace(gateway=gw))
    return {"type": "http", "method": "POST", "headers": HEADERS + extra, "state": {}, "app": app}


async def receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def main(requests: int, rounds: int) -> dict[str, Any]:
    cache = CountingCache()
    settings = Settings(signing_key=SIGNING_KEY)
    gw = GatewayState(settings, None, None, None, None, _auth=cache)  # type: ignore[arg-type]
    far = time.monotonic() + 1e9
    cache[("k1", hashlib.sha256(b"s1").hexdigest())] = (far, TENANT)
    cache[(calltokens.PREFIX, TENANT.id)] = (far, TENANT)
    token = calltokens.issue(SIGNING_KEY, TENANT.id, 3600)
    targets: dict[str, tuple[ASGIApp, Scope]] = {
        "bare": (bare, scope_for(gw, None)),
        "public": (auth.Authenticate(bare, auth.PUBLIC), scope_for(gw, None)),
        "caller_key": (auth.Authenticate(reads_caller, auth.CALLER), scope_for(gw, "Key k1:s1")),
        "caller_token": (
            auth.Authenticate(reads_caller, auth.CALLER),
            scope_for(gw, f"Bearer {token}"),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    lookups: dict[str, float] = {}
    for _ in range(rounds):
        for name, (app, scope) in targets.items():
            before = cache.lookups
            start = time.perf_counter()
            for _ in range(requests):
                await app(scope, receive, send)
            times[name].append((time.perf_counter() - start) / requests * 1e9)
            lookups[name] = (cache.lookups - before) / requests
    floor = min(times["bare"])
    return {
        "bench": "auth",
        "requests": requests,
        "rounds": rounds,
        "targets": {
            name: {
                "min_ns": round(min(runs)),
                "median_ns": round(statistics.median(runs)),
                "added_ns": round(min(runs) - floor),
                "cache_lookups_per_request": lookups[name],
            }
            for name, runs in times.items()
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.requests, args.rounds))))
