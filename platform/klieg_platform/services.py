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
    )


def open_registry(settings: Settings) -> Registry:
    registry = Registry(settings.effective_database_url)
    registry.create_all()
    return registry


def open_store(settings: Settings) -> BlobStore:
    return LocalBlobStore(settings.blob_dir)
