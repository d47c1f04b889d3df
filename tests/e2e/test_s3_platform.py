"""The whole platform on S3: ``klieg up`` with ``KLIEG_S3_*`` pointed at a moto server process.

Code archives, large payloads and results, returned media and uploads all land in the bucket
(under the configured prefix), none under the home's ``blobs/``; media is still served to callers
by the gateway's signed URLs, read back from S3.
"""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from PIL import Image as PILImage

import klieg
from tests.e2e.platform import APPS, TEST_APPS, Platform, running_platform
from tests.klieg_platform.storage.s3server import ACCESS_KEY, SECRET_KEY, moto_server

pytestmark = pytest.mark.timeout(300)

PREFIX = "klieg-e2e"


@pytest.fixture(scope="module")
def moto_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The moto server's log: one line per S3 request (``"PUT /bucket/name HTTP/1.1" 200``)."""
    return tmp_path_factory.mktemp("moto") / "moto.log"


@pytest.fixture(scope="module")
def s3(moto_log: Path) -> Iterator[tuple[str, str]]:
    """(endpoint URL, bucket) of a moto server; the platform creates the bucket itself."""
    with moto_server(moto_log) as url:
        yield url, f"klieg-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def s3_platform(
    s3: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    endpoint, bucket = s3
    env = {
        "KLIEG_S3_ENDPOINT_URL": endpoint,
        "KLIEG_S3_BUCKET": bucket,
        "KLIEG_S3_ACCESS_KEY": ACCESS_KEY,
        "KLIEG_S3_SECRET_KEY": SECRET_KEY,
        "KLIEG_S3_PREFIX": PREFIX,
        "KLIEG_INLINE_PAYLOAD_BYTES": "1024",
    }
    with running_platform(tmp_path_factory.mktemp("klieg-s3-home"), extra_env=env) as p:
        p.bootstrap()
        yield p


def _objects(s3: tuple[str, str]) -> set[str]:
    endpoint, bucket = s3
    client: Any = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    names: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        names.update(o["Key"] for o in page.get("Contents", []))
    return names


def _local_blobs(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


def _png() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (9, 5), (10, 200, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_echo_code_payloads_and_results_live_in_s3(
    s3_platform: Platform, s3: tuple[str, str], moto_log: Path
) -> None:
    deployed = s3_platform.deploy(APPS / "echo" / "app.py")
    text = "s3 " * 2000  # over the 1 KiB inline limit: the payload and result go to the store
    with s3_platform.http() as http:
        r = http.post("/local/echo", json={"text": text})
        assert r.status_code == 200, r.text
        assert r.json() == {"text": text, "length": len(text)}
        assert http.post("/local/echo", json={"text": "hi"}).json() == {"text": "hi", "length": 2}
    deadline = time.monotonic() + 30  # the worker deletes a used payload after completing
    while any(n.startswith(f"{PREFIX}/payloads/") for n in _objects(s3)):
        assert time.monotonic() < deadline, "the request payload was never deleted"
        time.sleep(0.1)
    names = _objects(s3)
    assert all(name.startswith(PREFIX + "/") for name in names)
    code = [n for n in names if n.startswith(f"{PREFIX}/code/") and n.endswith(".tar.gz")]
    assert len(code) == 1, names
    requests = re.sub(r"\x1b\[[0-9;]*m", "", moto_log.read_text())
    for verb in ("PUT", "GET", "DELETE"):
        assert f'"{verb} /{s3[1]}/{PREFIX}/payloads/' in requests
    assert any(n.startswith(f"{PREFIX}/results/") for n in names), names
    assert deployed["revision"]
    assert _local_blobs(s3_platform.home) == []


def test_media_and_uploads_are_stored_in_s3_and_served_by_the_gateway(
    s3_platform: Platform, s3: tuple[str, str]
) -> None:
    s3_platform.deploy(TEST_APPS / "mediaecho" / "app.py")
    png = _png()
    client = klieg.Client(s3_platform.url, s3_platform.key)
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    out = client.run("local/mediaecho", {"image": {"url": data_uri}})
    assert (out["width"], out["height"]) == (9, 5)
    url = out["grey"]["url"]
    assert url.startswith(s3_platform.url + "/files/media/")
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grey = PILImage.open(io.BytesIO(r.content))
    assert grey.mode == "L" and grey.size == (9, 5)
    assert httpx.get(out["note"]["url"], timeout=30).content == b"9x5"

    uploaded = client.upload_file(png, "image/png", "green.png")
    assert httpx.get(uploaded.url, timeout=30).content == png
    again = client.run("local/mediaecho", {"image": {"url": uploaded.url}})
    assert (again["width"], again["height"]) == (9, 5)

    names = _objects(s3)
    media = {n for n in names if n.startswith(f"{PREFIX}/media/")}
    assert len(media) == 4, names  # grey + note, twice
    key = url.split("/files/", 1)[1].split("?", 1)[0]
    assert f"{PREFIX}/{key}" in media
    assert any(n.startswith(f"{PREFIX}/uploads/") and n.endswith("/green.png") for n in names), (
        names
    )
    assert _local_blobs(s3_platform.home) == []
