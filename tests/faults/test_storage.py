"""The blob store failing under a steady stream: S3 (a moto server process behind a proxy) slow
or dropping connections, and the local store's disk full (a small tmpfs, really filled).

Every payload and result goes through the store here (a 8-byte inline limit). A request the
store fails is refused or failed with ``StorageError`` (503): typed, never lost, never wrong.
Each stream sends a few hundred requests.

The tmpfs needs no root: the platform runs in a user and mount namespace of its own
(``unshare --user --map-root-user --mount``, which an unprivileged user may do where the kernel
allows it), the tmpfs mounted there over its blob directory, and the test fills it through
``/proc/<pid>/root`` of a platform process. Where user namespaces are off, root mounts the tmpfs
directly; without either the test is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import Platform, platform_pids, running_platform, wait_healthy
from tests.faults.conftest import deploy_steady, record, stream
from tests.faults.proxy import FaultyProxy
from tests.klieg_platform.storage.s3server import ACCESS_KEY, SECRET_KEY, moto_server

pytestmark = pytest.mark.timeout(300)

EVERYTHING_IN_THE_STORE = {"KLIEG_INLINE_PAYLOAD_BYTES": "8", "KLIEG_LEASE_S": "3"}


@pytest.fixture(scope="module")
def s3_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyProxy]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as url:
        proxy = FaultyProxy(int(url.rsplit(":", 1)[1]))
        try:
            yield proxy
        finally:
            proxy.close()


@pytest.fixture(scope="module")
def on_s3(s3_proxy: FaultyProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    env = {
        **EVERYTHING_IN_THE_STORE,
        "KLIEG_S3_ENDPOINT_URL": s3_proxy.url,
        "KLIEG_S3_BUCKET": f"klieg-{uuid.uuid4().hex[:12]}",
        "KLIEG_S3_ACCESS_KEY": ACCESS_KEY,
        "KLIEG_S3_SECRET_KEY": SECRET_KEY,
    }
    with running_platform(tmp_path_factory.mktemp("s3-faults"), extra_env=env) as platform:
        platform.bootstrap()
        deploy_steady(platform)
        yield platform


def test_slow_s3(on_s3: Platform, s3_proxy: FaultyProxy) -> None:
    def slow() -> None:
        s3_proxy.delay_s = 0.05

    # each request waits on S3 several times, and the gateway's S3 calls share one thread pool
    # of a few threads: a few tens of requests/s get through, so this one streams until 300
    s = stream(on_s3, rate=70, threads=32)
    try:
        s.run_for(8, slow, at_least=300)
    finally:
        s3_proxy.delay_s = 0.0
    tally = s.settle()
    record("s3 slow (+0.05 s per request)", tally)
    assert tally.submitted >= 300, tally.figures()
    assert tally.completed == tally.submitted  # slower, never failing


def test_failing_s3(on_s3: Platform, s3_proxy: FaultyProxy) -> None:
    def failing() -> None:
        s3_proxy.drop(True)
        time.sleep(2.5)
        s3_proxy.drop(False)

    s = stream(on_s3, rate=60, threads=12)
    try:
        s.run_for(6, failing, at_least=300)
    finally:
        s3_proxy.drop(False)
    tally = s.settle()
    record("s3 dropping connections for 2.5 s", tally)
    assert tally.submitted >= 300, tally.figures()
    assert set(tally.failed) | set(tally.refused) <= {"StorageError"}, tally.figures()
    assert tally.completed >= tally.submitted // 3
    wait_healthy(on_s3.url)
    with on_s3.http() as http:
        assert http.post("/local/steady", json={"i": 5}).json() == {"i": 5, "square": 25}


DISK = "size=4m"
IN_NAMESPACES = [
    "unshare", "--user", "--map-root-user", "--mount",
    "sh", "-c", f'mount -t tmpfs -o {DISK} tmpfs "$0" && exec "$@"',
]  # fmt: skip
"""``klieg up`` in a user and mount namespace of its own, a tmpfs over the directory given
first."""


def _namespaces_refused(where: Path) -> str | None:
    """None where this user may mount a tmpfs over ``where`` in namespaces of its own (tried
    once, then left); else why not."""
    tried = subprocess.run([*IN_NAMESPACES, str(where), "true"], capture_output=True, text=True)
    return None if tried.returncode == 0 else (tried.stderr.strip() or "unshare failed")


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Path]]:
    """A platform whose blob store is a 4 MiB tmpfs, and the path the test sees it at."""
    home = tmp_path_factory.mktemp("disk-faults")
    blobs = home / "blobs"
    blobs.mkdir()
    refused = _namespaces_refused(blobs)
    if refused is None:
        prefix = [*IN_NAMESPACES, str(blobs)]
        with running_platform(home, extra_env=EVERYTHING_IN_THE_STORE, prefix=prefix) as platform:
            platform.bootstrap()
            deploy_steady(platform)
            (gateway,) = platform_pids(home, "klieg_platform.gateway")
            yield platform, Path(f"/proc/{gateway}/root") / blobs.relative_to("/")
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", DISK, "tmpfs", str(blobs)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"no user namespaces here ({refused}) and no root to mount a tmpfs "
            f"({mounted.stderr.strip()})"
        )
    try:
        with running_platform(home, extra_env=EVERYTHING_IN_THE_STORE) as platform:
            platform.bootstrap()
            deploy_steady(platform)
            yield platform, blobs
    finally:
        subprocess.run(["umount", "-l", str(blobs)], check=False)


def test_blob_store_disk_full(small_disk: tuple[Platform, Path]) -> None:
    platform, blobs = small_disk
    size = os.statvfs(blobs)
    assert size.f_blocks * size.f_frsize <= 4 * 1024 * 1024, "the blob store is no small disk"
    filler = blobs / "filler"

    def fill() -> None:
        with contextlib.suppress(OSError), open(filler, "wb") as out:  # its close flushes
            while True:
                out.write(b"\0" * 65536)
        time.sleep(2.0)
        filler.unlink()

    s = stream(platform, rate=60, threads=12)
    try:
        s.run_for(6, fill, at_least=300)
    finally:
        filler.unlink(missing_ok=True)
    tally = s.settle()
    record("blob store disk full for 2 s", tally)
    assert tally.submitted >= 300, tally.figures()
    assert set(tally.failed) | set(tally.refused) <= {"StorageError"}, tally.figures()
    assert tally.refused.get("StorageError", 0) + tally.failed.get("StorageError", 0) > 0
    assert tally.completed >= tally.submitted // 3
    with platform.http() as http:
        assert http.post("/local/steady", json={"i": 6}).json() == {"i": 6, "square": 36}
