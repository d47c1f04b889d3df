"""A real S3-speaking server for tests: moto's standalone server as a separate process, over HTTP.

moto keeps objects in memory, accepts any credentials and does not enforce presigned-URL expiry
or signatures; everything else the tests use (multipart, ETags, 404s, bucket creation) it serves
as S3 does. ``make_s3_store`` opens a store on such a server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from klieg_platform.storage.s3 import S3BlobStore

ACCESS_KEY = "klieg-test-access"
SECRET_KEY = "klieg-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(log: Path, timeout_s: float = 30) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free port; its endpoint URL until the block ends."""
    for _ in range(3):
        port = _free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(url + "/", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        if proc.poll() is not None:
            continue  # the port was taken between choosing it and binding it
        if time.monotonic() >= deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"moto server did not answer within {timeout_s}s; see {log}")
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise RuntimeError(f"moto server would not start; see {log}")


def make_s3_store(
    endpoint: str, bucket: str | None = None, *, prefix: str = "", presign: bool = False
) -> S3BlobStore:
    """An S3 store on the test server, in a new bucket unless ``bucket`` is given."""
    return S3BlobStore(
        bucket or f"t-{uuid.uuid4().hex[:20]}",
        endpoint_url=endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        prefix=prefix,
        presign=presign,
    )
