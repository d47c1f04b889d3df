"""A fresh database on the machine's PostgreSQL (``KLIEG_TEST_POSTGRES_URL``), for tests and
benchmarks that run a registry on it; dropped afterwards, open connections and all."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

ADMIN_URL = os.environ.get("KLIEG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_database(prefix: str = "klieg_test") -> Iterator[str]:
    """The URL of a new database named ``{prefix}_<random>``; ``psycopg.OperationalError``
    when the server cannot be reached."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


def registry_url(kind: str, home: Path, stack: contextlib.ExitStack, prefix: str) -> str:
    """An empty registry's URL for a test parametrised over both databases: ``sqlite``, a file
    under ``home``; ``postgresql``, a fresh database (``prefix``), dropped when ``stack``
    closes. The test fails, saying why, where PostgreSQL does not answer: it never skips."""
    if kind == "sqlite":
        return f"sqlite:///{home / 'registry.db'}"
    try:
        return stack.enter_context(fresh_database(prefix))
    except psycopg.OperationalError as exc:
        import pytest

        pytest.fail(f"PostgreSQL is required at {ADMIN_URL}: {exc}", pytrace=False)
