"""Blob retention through a real platform: with a retention of one second, an upload's file is
swept by the gateway within a few sweep intervals (its URL then answers 404), while revision
code archives stay and the app keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

import klieg
from tests.e2e.platform import APPS, Platform, running_platform

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("klieg-retention")
    env = {"KLIEG_BLOB_RETENTION_S": "1", "KLIEG_SWEEP_INTERVAL_S": "0.5"}
    with running_platform(home, extra_env=env) as p:
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        yield p


def test_uploads_are_swept_after_the_retention_and_code_stays(short: Platform) -> None:
    with klieg.Client(short.url, short.key) as client:
        uploaded = client.upload_file(b"short-lived", "text/plain", "note.txt")
        assert httpx.get(uploaded.url).content == b"short-lived"
        deadline = time.monotonic() + 20
        while (r := httpx.get(uploaded.url)).status_code == 200:
            assert time.monotonic() < deadline, "the upload was never swept"
            time.sleep(0.2)
        assert r.status_code == 404 and r.json()["error_type"] == "NotFoundError"
        assert list((short.home / "blobs" / "code").iterdir())  # archives are never swept
        assert client.run("local/echo", {"text": "still"}) == {"text": "still", "length": 5}
