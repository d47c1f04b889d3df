"""A real gateway (uvicorn in a thread, SQLite registry, the machine's Redis) over HTTP, with an
admin tenant ``local``, a second tenant ``other`` and a signing key (for call tokens).
``serve_gateway`` starts one on another registry (PostgreSQL)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from klieg.admin import AdminClient
from klieg_platform.config import Settings
from klieg_platform.gateway.app import create_app
from klieg_platform.registry import Registry
from tests.conftest import MACHINE_REDIS_URL
from tests.e2e.platform import free_port


@dataclass
class Gateway:
    url: str
    admin: AdminClient
    other: AdminClient
    registry: Registry
    settings: Settings


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with serve_gateway(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}") as served:
        yield served


@contextlib.contextmanager
def serve_gateway(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    """A gateway whose registry is ``database_url`` (an empty database), as ``gateway``."""
    settings = Settings(
        home=tmp_path,
        redis_url=MACHINE_REDIS_URL,
        database_url=database_url,
        port=free_port(),
        signing_key="gateway-test-signing-key",
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=settings.port,
            loop="asyncio",
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    registry = Registry(settings.effective_database_url)
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.02)
        assert server.started
        url = f"http://127.0.0.1:{settings.port}"
        with AdminClient(url, "") as anonymous:
            admin = AdminClient(url, anonymous.create_key()["key"], timeout=30)
        other = AdminClient(url, admin.create_key("other")["key"], timeout=30)
        local = registry.get_tenant("local")
        assert local is not None
        for name in ("digits", "imagetools", "private"):
            registry.ensure_app(local.id, name)
        yield Gateway(url, admin, other, registry, settings)
        admin.close()
        other.close()
    finally:
        server.should_exit = True
        thread.join(10)
        registry.close()
