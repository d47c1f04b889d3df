"""Open the shared services a Klieg process needs, from its Settings."""

from __future__ import annotations

from klieg_platform.broker import Broker
from klieg_platform.config import Settings
from klieg_platform.registry import Registry
from klieg_platform.storage import BlobStore
from klieg_platform.storage.local import LocalBlobStore


def open_broker(settings: Settings) -> Broker:
    return Broker.from_url(
        settings.effective_redis_url,
        result_ttl_s=settings.result_ttl_s,
        max_attempts=settings.max_attempts,
        tiers=settings.tiers,
        history_max=settings.history_max,
    )


def open_registry(settings: Settings) -> Registry:
    registry = Registry(settings.effective_database_url)
    registry.create_all()
    return registry


def open_store(settings: Settings) -> BlobStore:
    """S3 when ``s3_bucket`` is set (the bucket is created if missing), else the local store."""
    if not settings.s3_bucket:
        return LocalBlobStore(settings.blob_dir)
    from klieg_platform.storage.s3 import S3BlobStore  # boto3 costs ~0.3 s to import

    store = S3BlobStore(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        prefix=settings.s3_prefix,
        presign=settings.s3_presign,
    )
    store.ensure_bucket()
    return store
