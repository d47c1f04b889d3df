"""The platform on the machine's Redis (KLIEG_REDIS_URL) and PostgreSQL (KLIEG_DATABASE_URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.e2e.platform import APPS, running_platform

pytestmark = pytest.mark.timeout(240)

PG_ADMIN = os.environ.get("KLIEG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KLIEG_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture()
def pg_database() -> Iterator[str]:
    name = f"klieg_e2e_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_platform_on_machine_redis_and_postgres(pg_database: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}")
    env = {"KLIEG_REDIS_URL": REDIS_URL, "KLIEG_DATABASE_URL": pg_database}
    with running_platform(tmp_path / "home", extra_env=env) as p:
        p.bootstrap()
        p.deploy(APPS / "echo" / "app.py")
        with p.http() as http:
            r = http.post("/local/echo", json={"text": "external"})
            assert r.status_code == 200 and r.json()["length"] == 8
        assert client.exists("klieg:pools") == 1
        assert not (tmp_path / "home" / "run" / "redis.sock").exists()
        assert not (tmp_path / "home" / "registry.db").exists()
    with psycopg.connect(pg_database) as conn:
        apps = conn.execute("SELECT name FROM apps").fetchall()
    assert ("echo",) in apps
    client.flushdb()
