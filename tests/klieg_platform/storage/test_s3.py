"""Blob stores: one contract for the local and the S3 backend (``store`` runs each test on both),
then what only S3 has: bucket creation, prefixes, multipart, presigned URLs, settings.

S3 runs against a real moto server process over HTTP (``s3server.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import boto3
import httpx
import pytest

from klieg.exceptions import InvalidRequestError, NotFoundError
from klieg_platform.config import Settings
from klieg_platform.services import open_store
from klieg_platform.storage import BlobStore, StorageError, direct_url, media_key
from klieg_platform.storage.local import LocalBlobStore
from klieg_platform.storage.s3 import MAX_PRESIGN_S, S3BlobStore
from tests.klieg_platform.storage.s3server import ACCESS_KEY, SECRET_KEY, make_s3_store

pytestmark = pytest.mark.timeout(120)

BINARY = bytes(range(256)) * 64 + b"\x00\r\n\xff"


# The contract, on both backends.


def test_put_get_round_trips_text_and_binary(store: BlobStore) -> None:
    store.put("payloads/r1.json", b'{"text": "hi"}')
    store.put("media/r1/tok/image.png", BINARY)
    assert store.get("payloads/r1.json") == b'{"text": "hi"}'
    assert store.get("media/r1/tok/image.png") == BINARY


def test_put_overwrites_and_empty_objects_exist(store: BlobStore) -> None:
    store.put("results/r.json", b"first")
    store.put("results/r.json", b"second")
    assert store.get("results/r.json") == b"second"
    store.put("uploads/t/empty.bin", b"")
    assert store.exists("uploads/t/empty.bin") and store.get("uploads/t/empty.bin") == b""


def test_exists_and_delete(store: BlobStore) -> None:
    assert not store.exists("code/abc.tar.gz")
    store.put("code/abc.tar.gz", b"archive")
    assert store.exists("code/abc.tar.gz")
    store.delete("code/abc.tar.gz")
    assert not store.exists("code/abc.tar.gz")
    store.delete("code/abc.tar.gz")  # absent: a no-op


def test_missing_key_raises_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFoundError, match=re.escape("results/nope.json")):
        store.get("results/nope.json")
    store.put("results/there.json", b"{}")
    store.delete("results/there.json")
    with pytest.raises(NotFoundError):
        store.get("results/there.json")
    with pytest.raises(NotFoundError):  # a folder of the local store is no object
        store.get("results")
    assert not store.exists("results")


@pytest.mark.parametrize(
    "key",
    ["../escape", "/etc/passwd", "media/../../escape", "media/./x", "media//x", "", "a\0b", "x/"],
)
def test_keys_outside_the_store_are_rejected(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidRequestError):
        store.put(key, b"x")
    with pytest.raises(InvalidRequestError):
        store.get(key)
    with pytest.raises(InvalidRequestError):
        store.exists(key)


def test_a_70_mb_object_round_trips(store: BlobStore) -> None:
    data = os.urandom(70 * 1024 * 1024)
    store.put("media/big/tok/video.mp4", data)
    got = store.get("media/big/tok/video.mp4")
    assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    if isinstance(store, S3BlobStore):
        head = _raw(store).head_object(Bucket=store.bucket, Key="media/big/tok/video.mp4")
        assert head["ETag"].strip('"').endswith("-5")  # a multipart upload of 16 MiB parts
        assert head["ContentType"] == "video/mp4"


def test_concurrent_puts_from_threads(store: BlobStore) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                key = f"results/t{t}/{i}.json"
                store.put(key, f"{t}:{i}".encode() * 100)
                assert store.get(key) == f"{t}:{i}".encode() * 100
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(store.exists(f"results/t{t}/9.json") for t in range(16))


def test_direct_urls_only_from_a_presigning_s3_store(store: BlobStore) -> None:
    store.put("media/r/t/a.txt", b"a")
    assert direct_url(store, "media/r/t/a.txt", 60) is None


# S3 only.


def _raw(store: S3BlobStore) -> Any:
    return store._client


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def _buckets(endpoint: str) -> set[str]:
    client = _client(endpoint)
    return {b["Name"] for b in client.list_buckets()["Buckets"]}


def _names(endpoint: str, bucket: str) -> set[str]:
    listed = _client(endpoint).list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listed.get("Contents", [])}


def test_ensure_bucket_creates_a_missing_bucket_once_under_a_race(s3_endpoint: str) -> None:
    store = make_s3_store(s3_endpoint)
    assert store.bucket not in _buckets(s3_endpoint)
    racers = [threading.Thread(target=store.ensure_bucket) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert store.bucket in _buckets(s3_endpoint)
    store.ensure_bucket()
    store.put("code/x.tar.gz", b"x")
    assert store.get("code/x.tar.gz") == b"x"


def test_open_store_picks_s3_when_a_bucket_is_set_and_creates_it(
    s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = f"open-{uuid.uuid4().hex[:12]}"
    settings = Settings.from_env(
        {
            "KLIEG_HOME": str(tmp_path),
            "KLIEG_S3_ENDPOINT_URL": s3_endpoint,
            "KLIEG_S3_BUCKET": bucket,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "KLIEG_S3_PREFIX": "/klieg/",
        }
    )
    store = open_store(settings)
    assert isinstance(store, S3BlobStore) and bucket in _buckets(s3_endpoint)
    store.put("code/abc.tar.gz", b"code")
    assert _names(s3_endpoint, bucket) == {"klieg/code/abc.tar.gz"}
    assert not (tmp_path / "blobs").exists()
    assert isinstance(open_store(Settings(home=tmp_path)), LocalBlobStore)


def test_settings_read_s3_variables(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "KLIEG_HOME": str(tmp_path),
            "KLIEG_S3_ENDPOINT_URL": "http://minio:9000",
            "KLIEG_S3_BUCKET": "media",
            "KLIEG_S3_REGION": "eu-west-3",
            "KLIEG_S3_ACCESS_KEY": "klieg-key",
            "AWS_ACCESS_KEY_ID": "aws-key",
            "AWS_SECRET_ACCESS_KEY": "aws-secret",
            "KLIEG_S3_PREFIX": "prod",
            "KLIEG_S3_PRESIGN": "1",
        }
    )
    assert (settings.s3_endpoint_url, settings.s3_bucket, settings.s3_region) == (
        "http://minio:9000",
        "media",
        "eu-west-3",
    )
    assert (settings.s3_access_key, settings.s3_secret_key) == ("klieg-key", "aws-secret")
    assert settings.s3_prefix == "prod" and settings.s3_presign is True
    assert "aws-secret" not in repr(settings)
    plain = Settings.from_env({"KLIEG_HOME": str(tmp_path)})
    assert plain.s3_bucket is None and plain.s3_region == "us-east-1" and not plain.s3_presign


def test_prefixes_isolate_stores_sharing_a_bucket(s3_endpoint: str) -> None:
    a = make_s3_store(s3_endpoint, prefix="tenant-a")
    b = make_s3_store(s3_endpoint, a.bucket, prefix="tenant-b/")
    bare = make_s3_store(s3_endpoint, a.bucket)
    a.ensure_bucket()
    a.put("results/r.json", b"from a")
    b.put("results/r.json", b"from b")
    assert a.get("results/r.json") == b"from a" and b.get("results/r.json") == b"from b"
    assert _names(s3_endpoint, a.bucket) == {"tenant-a/results/r.json", "tenant-b/results/r.json"}
    assert not bare.exists("results/r.json")
    assert bare.get("tenant-a/results/r.json") == b"from a"
    a.delete("results/r.json")
    assert not a.exists("results/r.json") and b.exists("results/r.json")


def test_failures_other_than_a_missing_key_are_storage_errors_naming_the_key(
    s3_endpoint: str,
) -> None:
    store = make_s3_store(s3_endpoint)  # its bucket was never created
    with pytest.raises(StorageError, match=re.escape("media/r/t/a.png")) as raised:
        store.put("media/r/t/a.png", b"x")
    assert raised.value.status_code == 503
    with pytest.raises(StorageError, match=re.escape("media/r/t/a.png")):
        store.get("media/r/t/a.png")
    gone = S3BlobStore(
        "b", endpoint_url="http://127.0.0.1:9", access_key="k", secret_key="s"
    )  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(StorageError, match=re.escape("code/x.tar.gz")):
        gone.get("code/x.tar.gz")
    with pytest.raises(StorageError, match="bucket 'b'"):
        gone.ensure_bucket()
    assert time.monotonic() - started < 30


def _sigv4_signature(url: str, secret: str) -> str:
    """The SigV4 query signature of a presigned GET ``url``, computed from the spec (not botocore)
    as S3 checks it: a URL whose signature differs, or whose parameters changed, is refused."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    params.pop("X-Amz-Signature", None)
    assert params["X-Amz-SignedHeaders"] == "host"
    query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical = f"GET\n{parts.path}\n{query}\nhost:{parts.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{params['X-Amz-Date']}\n{scope}\n{digest}"
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_presigned_urls_are_fetchable_signed_and_expiring(s3_endpoint: str) -> None:
    store = make_s3_store(s3_endpoint, presign=True)
    store.ensure_bucket()
    png = b"\x89PNG\r\n\x1a\n" + BINARY
    store.put("media/r1/tok/grey.png", png)

    url = direct_url(store, "media/r1/tok/grey.png", 120)
    assert url is not None and url.startswith(f"{s3_endpoint}/{store.bucket}/media/r1/tok/")
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.content == png
    assert r.headers["content-type"] == "image/png"

    params = dict(parse_qsl(urlsplit(url).query))
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(signed_at.timestamp() - time.time()) < 60 and params["X-Amz-Expires"] == "120"
    assert params["X-Amz-Credential"].startswith(ACCESS_KEY + "/")
    assert _sigv4_signature(url, SECRET_KEY) == params["X-Amz-Signature"]
    longer_query = urlencode({**params, "X-Amz-Expires": "9999"})
    longer = urlunsplit(urlsplit(url)._replace(query=longer_query))
    assert _sigv4_signature(longer, SECRET_KEY) != params["X-Amz-Signature"]

    week = dict(parse_qsl(urlsplit(store.presigned_url("media/a.png", 10**9)).query))
    assert int(week["X-Amz-Expires"]) == MAX_PRESIGN_S

    plain = make_s3_store(s3_endpoint, store.bucket)
    assert plain.url_for("media/r1/tok/grey.png", 120) is None
    assert direct_url(plain, "media/r1/tok/grey.png", 120) is None


def test_written_before_lists_old_objects_of_one_prefix(store: BlobStore) -> None:
    store.put("media/a/t/old.png", b"1")
    store.put("media/b/t/old.png", b"2")
    store.put("uploads/u/1/old.bin", b"3")
    store.put("code/old.tar.gz", b"4")
    time.sleep(0.2)
    mark = time.time()
    time.sleep(1.1)  # S3 keeps whole seconds
    store.put("media/c/t/new.png", b"5")
    old = store.written_before("media/", mark, 100)
    assert sorted(old) == ["media/a/t/old.png", "media/b/t/old.png"]
    assert len(store.written_before("media/", mark, 1)) == 1
    assert store.written_before("media/", mark - 60, 100) == []
    assert store.written_before("results/", time.time() + 60, 100) == []  # nothing there
    everything = store.written_before("media/", time.time() + 60, 100)
    assert sorted(everything) == [*sorted(old), "media/c/t/new.png"]
    for key in everything:
        store.delete(key)
    assert store.exists("uploads/u/1/old.bin") and store.exists("code/old.tar.gz")
    if isinstance(store, LocalBlobStore):  # emptied folders go on a later sweep
        store.written_before("media/", time.time() + 60, 100)
        store.written_before("media/", time.time() + 60, 100)
        assert not (store.root / "media" / "a").exists()
        assert (store.root / "media").is_dir()


def test_delete_many_deletes_past_a_thousand_and_ignores_absent_keys(store: BlobStore) -> None:
    keys = [f"media/many/{i:04d}.bin" for i in range(1003)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put(key, b"x"), keys))
    store.put("media/kept/one.bin", b"y")
    store.delete_many([*keys, "media/never/there.bin"])
    assert store.written_before("media/", time.time() + 60, 2000) == ["media/kept/one.bin"]
    store.delete_many([])
    assert store.exists("media/kept/one.bin")


def test_the_files_of_many_requests_share_at_most_256_folders(tmp_path: Path) -> None:
    """A file an endpoint returns lives in a folder by its request id's first two characters,
    not in a new folder per request (on a local disk that was an inode per request)."""
    store = LocalBlobStore(tmp_path)
    ids = [uuid.uuid4().hex for _ in range(300)]
    for rid in ids:
        store.put(media_key(rid, "tok", "a.png"), rid.encode())
    folders = os.listdir(tmp_path / "media")
    assert len(folders) <= 256 and {len(name) for name in folders} == {2}
    assert all(store.get(media_key(rid, "tok", "a.png")) == rid.encode() for rid in ids)
    assert media_key(ids[0], "t", "x.png") == f"media/{ids[0][:2]}/{ids[0]}-t-x.png"
