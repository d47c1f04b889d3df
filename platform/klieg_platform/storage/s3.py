"""S3 blob store (boto3): AWS S3 or any server that speaks S3 (MinIO, SeaweedFS, Ceph RGW, moto).

Objects live in one bucket, under ``prefix/`` when a prefix is given, so several platforms can
share a bucket. With an ``endpoint_url`` the client addresses buckets path-style
(``<endpoint>/<bucket>/<key>``), which every S3 implementation accepts, and computes checksums
only where S3 requires them (servers other than AWS reject some of boto3's newer defaults).

Guarantees: ``put`` is atomic (one PutObject, or for objects over ``multipart_threshold`` one
multipart upload that S3 publishes whole on completion); ``get`` of an absent key raises
``NotFoundError``; every other failure raises ``StorageError`` naming the key. One boto3 client
per store, shared by all threads (boto3 clients are thread-safe).
"""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from klieg.exceptions import NotFoundError
from klieg_platform.storage import StorageError, check_key

MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
MAX_PRESIGN_S = 7 * 24 * 3600
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET = frozenset({"NoSuchBucket", "NotFound", "404"})


class S3BlobStore:
    """Blobs as objects of ``bucket``; call ``ensure_bucket()`` once before use (``open_store``
    does). ``presign``: ``url_for`` hands out presigned GET URLs (else ``None``)."""

    inline_put_bytes = 0

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        presign: bool = False,
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.strip("/")
        self.presign = presign
        self.multipart_threshold = multipart_threshold
        compatible: dict[str, Any] = {}
        if endpoint_url:
            compatible = {
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"mode": "standard", "max_attempts": 4},
            max_pool_connections=32,
            connect_timeout=10,
            read_timeout=120,
            **compatible,
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=PART_SIZE,
            max_concurrency=8,
        )

    def object_name(self, key: str) -> str:
        """The object name of ``key`` in the bucket (``prefix/key``)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        name = self.object_name(key)
        kind = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._errors("put", key):
            if len(data) > self.multipart_threshold:
                self._client.upload_fileobj(
                    io.BytesIO(data),
                    self.bucket,
                    name,
                    ExtraArgs={"ContentType": kind},
                    Config=self._transfer,
                )
            else:
                self._client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentType=kind)

    def get(self, key: str) -> bytes:
        name = self.object_name(key)
        with self._errors("get", key, missing=_MISSING):
            body = self._client.get_object(Bucket=self.bucket, Key=name)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def exists(self, key: str) -> bool:
        name = self.object_name(key)
        try:
            with self._errors("exists", key, missing=_MISSING):
                self._client.head_object(Bucket=self.bucket, Key=name)
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        name = self.object_name(key)
        try:
            with self._errors("delete", key, missing=_MISSING):
                self._client.delete_object(Bucket=self.bucket, Key=name)
        except NotFoundError:
            pass

    def delete_many(self, keys: Sequence[str]) -> None:
        """``DeleteObjects`` of up to a thousand keys per call (S3's limit)."""
        names = [self.object_name(key) for key in keys]
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            with self._errors("delete", keys[start]):
                reply = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": name} for name in chunk], "Quiet": True},
                )
            failed = [e for e in reply.get("Errors", []) if e.get("Code") not in _MISSING]
            if failed:
                first = failed[0]
                raise StorageError(
                    f"S3 delete of {len(failed)} blob(s) failed, first {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )

    def written_before(self, prefix: str, before: float, limit: int) -> list[str]:
        """Keys under ``prefix`` whose objects were last modified before ``before`` (S3 keeps
        whole seconds). A bucket lifecycle rule is the cheaper way on a large bucket; this
        lists the prefix, a thousand objects per call."""
        top = self.object_name(prefix.rstrip("/")) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        found: list[str] = []
        with self._errors("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=top
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if item["LastModified"].timestamp() < before:
                        found.append(str(item["Key"])[strip:])
                        if len(found) >= limit:
                            return found
        return found

    def presigned_url(self, key: str, ttl_s: int) -> str:
        """A GET URL for ``key`` that anyone may fetch for ``ttl_s`` seconds (at most 7 days,
        the SigV4 limit). Made locally, without a request; the key need not exist yet."""
        name = self.object_name(key)
        with self._errors("presign", key):
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": name},
                ExpiresIn=max(1, min(ttl_s, MAX_PRESIGN_S)),
            )
        return url

    def url_for(self, key: str, ttl_s: int) -> str | None:
        """``presigned_url`` when this store presigns (``KLIEG_S3_PRESIGN``), else ``None``."""
        return self.presigned_url(key, ttl_s) if self.presign else None

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists. Safe when several processes race to create it."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NO_BUCKET:
                raise StorageError(f"S3 bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 bucket {self.bucket!r}: {exc}") from exc
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**args)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create S3 bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot create S3 bucket {self.bucket!r}: {exc}") from exc

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    @contextmanager
    def _errors(
        self, op: str, key: str, *, missing: frozenset[str] = frozenset()
    ) -> Iterator[None]:
        """Turn boto3's errors into ``NotFoundError`` (codes in ``missing``) or ``StorageError``."""
        try:
            yield
        except ClientError as exc:
            if _code(exc) in missing:
                raise NotFoundError(f"blob {key!r} not found") from exc
            raise StorageError(f"S3 {op} of blob {key!r} failed: {exc}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageError(f"S3 {op} of blob {key!r} failed: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
