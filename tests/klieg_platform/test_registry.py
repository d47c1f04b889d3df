"""Registry behaviour, run against SQLite and a real PostgreSQL.

PostgreSQL comes from ``KLIEG_TEST_POSTGRES_URL`` (default: trust auth on 127.0.0.1, database
``test``). The session creates a throwaway database there and drops it at the end; each test
starts from an empty ``public`` schema. An unreachable server fails the tests, it never skips.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from klieg.exceptions import InvalidRequestError, NotFoundError
from klieg_platform.registry import AppRecord, Registry, Revision, Tenant

POSTGRES_ADMIN_URL = os.environ.get(
    "KLIEG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SPEC: dict[str, Any] = {"functions": {"run": {"gpu": "A100", "timeout": 60}}}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a fresh database on the test server, dropped when the session ends."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for the registry tests and is not reachable at "
            f"{POSTGRES_ADMIN_URL} (set KLIEG_TEST_POSTGRES_URL): {exc}",
            pytrace=False,
        )
    name = f"klieg_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry URL for an empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    reg = Registry(db_url)
    reg.create_all()
    yield reg
    reg.close()


@pytest.fixture
def tenant(registry: Registry) -> Tenant:
    return registry.create_tenant("acme", tier="pro")


@pytest.fixture
def app(registry: Registry, tenant: Tenant) -> AppRecord:
    return registry.ensure_app(tenant.id, "echo")


def put(registry: Registry, app: AppRecord, revision_id: str, **spec: Any) -> Revision:
    revision, _ = registry.put_revision(
        app, revision_id, spec or SPEC, "code-" + revision_id, "env-1", "3.11", "numpy==2.0\n"
    )
    return revision


def test_create_all_is_idempotent(registry: Registry, tenant: Tenant) -> None:
    registry.create_all()
    assert registry.get_tenant("acme") == tenant


def test_unsupported_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Registry("mysql://root@localhost/klieg")


def test_tenant_create_get_count(registry: Registry) -> None:
    assert registry.count_tenants() == 0
    created = registry.create_tenant("acme-2")
    assert created.tier == "free"
    assert registry.get_tenant("acme-2") == created
    assert registry.get_tenant("nobody") is None
    assert created.admin is False
    admin = registry.create_tenant("root", tier="enterprise", admin=True)
    assert registry.get_tenant("root") == admin and admin.admin is True
    assert registry.count_tenants() == 2


def test_tenant_duplicate_name_rejected(registry: Registry, tenant: Tenant) -> None:
    with pytest.raises(InvalidRequestError, match="taken"):
        registry.create_tenant("acme")
    assert registry.count_tenants() == 1


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "a_b", "a b", "a" * 64, "é"])
def test_tenant_invalid_name_rejected(registry: Registry, name: str) -> None:
    with pytest.raises(InvalidRequestError):
        registry.create_tenant(name)
    assert registry.count_tenants() == 0


def test_key_authenticates_its_tenant(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.create_key(tenant.id, label="ci")
    assert key.id.startswith("k_") and len(key.id) == 18
    assert key.tenant_id == tenant.id and key.label == "ci"
    assert (grant := registry.authenticate(key.id, secret)) and grant.tenant == tenant
    admin = registry.create_tenant("root", admin=True)
    admin_key, admin_secret = registry.create_key(admin.id)
    assert (grant := registry.authenticate(admin_key.id, admin_secret)) and grant.tenant == admin
    assert registry.authenticate(admin_key.id, secret) is None


def test_key_wrong_secret_or_unknown_id(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.create_key(tenant.id)
    assert registry.authenticate(key.id, secret + "x") is None
    assert registry.authenticate(key.id, "") is None
    assert registry.authenticate("k_0000000000000000", secret) is None


def test_key_for_unknown_tenant(registry: Registry) -> None:
    with pytest.raises(NotFoundError):
        registry.create_key("0" * 32)


def test_revoked_key_no_longer_authenticates(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.create_key(tenant.id)
    other, other_secret = registry.create_key(tenant.id)
    assert registry.revoke_key(key.id) is True
    assert registry.authenticate(key.id, secret) is None
    assert registry.revoke_key(key.id) is False
    assert registry.revoke_key("k_missing") is False
    assert (grant := registry.authenticate(other.id, other_secret)) and grant.tenant == tenant


def test_secret_is_not_stored(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.create_key(tenant.id, label="laptop")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    cells: list[str] = []
    with registry.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                cells.extend(str(value) for value in row)
    assert key.id in cells and digest in cells  # the scan sees the key row
    assert not any(secret in cell for cell in cells)


def test_ensure_app_is_idempotent(registry: Registry, tenant: Tenant) -> None:
    first = registry.ensure_app(tenant.id, "img_gen")
    again = registry.ensure_app(tenant.id, "img_gen")
    assert again == first
    assert first.owner == "acme" and first.owner_id == tenant.id and first.name == "img_gen"
    assert registry.get_app("acme", "img_gen") == first
    assert registry.get_app("acme", "missing") is None
    assert registry.get_app("other", "img_gen") is None


def test_ensure_app_validates(registry: Registry, tenant: Tenant) -> None:
    with pytest.raises(InvalidRequestError):
        registry.ensure_app(tenant.id, "Bad/Name")
    with pytest.raises(NotFoundError):
        registry.ensure_app("0" * 32, "echo")


def test_list_apps_per_owner(registry: Registry, tenant: Tenant) -> None:
    other = registry.create_tenant("other")
    mine = [registry.ensure_app(tenant.id, name) for name in ("zeta", "alpha")]
    theirs = registry.ensure_app(other.id, "alpha")
    assert registry.list_apps(tenant.id) == sorted(mine, key=lambda a: a.name)
    assert registry.list_apps(other.id) == [theirs]
    assert theirs.id != mine[1].id


def test_put_revision_new(registry: Registry, app: AppRecord) -> None:
    revision, created = registry.put_revision(app, "r1", SPEC, "c1", "e1", "3.11", "lock")
    assert created is True
    assert (revision.owner, revision.app, revision.app_id) == ("acme", "echo", app.id)
    assert revision.spec == SPEC and revision.lock == "lock" and revision.python == "3.11"
    assert registry.get_revision("r1") == revision
    assert registry.get_revision("r9") is None


def test_put_revision_is_immutable(registry: Registry, app: AppRecord) -> None:
    first, created = registry.put_revision(app, "r1", SPEC, "c1", "e1", "3.11", "lock")
    second, again = registry.put_revision(app, "r1", {"other": 1}, "c2", "e2", "3.12", "x")
    assert created is True and again is False
    assert second == first
    assert registry.get_revision("r1") == first
    assert len(registry.list_revisions(app)) == 1


def test_put_revision_id_of_another_app(registry: Registry, app: AppRecord) -> None:
    other = registry.ensure_app(app.owner_id, "other")
    put(registry, app, "r1")
    with pytest.raises(InvalidRequestError):
        put(registry, other, "r1")
    assert registry.list_revisions(other) == []


def test_list_revisions_newest_first(registry: Registry, app: AppRecord) -> None:
    other = registry.ensure_app(app.owner_id, "other")
    for rid in ("r-b", "r-c", "r-a"):
        put(registry, app, rid)
    put(registry, other, "r-z")
    assert [r.id for r in registry.list_revisions(app)] == ["r-a", "r-c", "r-b"]


def test_concurrent_put_revision_one_row(registry: Registry, app: AppRecord) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[tuple[Revision, bool]] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(registry.put_revision(app, "same", {"n": n}, "c", "e", "3.11", "lock"))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert errors == []
    assert sum(created for _, created in results) == 1
    assert len({r.spec["n"] for r, _ in results}) == 1  # every caller sees the stored row
    assert len(registry.list_revisions(app)) == 1


def test_alias_set_get_list(registry: Registry, app: AppRecord) -> None:
    put(registry, app, "r1")
    put(registry, app, "r2")
    assert registry.get_alias(app, "latest") is None
    assert registry.set_alias(app, "latest", "r1") is None
    assert registry.set_alias(app, "latest", "r2") == "r1"
    assert registry.set_alias(app, "v1.0", "r1") is None
    assert registry.get_alias(app, "latest") == "r2"
    assert registry.list_aliases(app) == {"latest": "r2", "v1.0": "r1"}
    with pytest.raises(InvalidRequestError):
        registry.set_alias(app, "Bad Alias", "r1")


def test_alias_to_other_apps_revision(registry: Registry, app: AppRecord) -> None:
    other = registry.ensure_app(app.owner_id, "other")
    put(registry, other, "theirs")
    with pytest.raises(NotFoundError):
        registry.set_alias(app, "latest", "theirs")
    with pytest.raises(NotFoundError):
        registry.set_alias(app, "latest", "missing")
    assert registry.list_aliases(app) == {}


def test_rollback_walks_back_like_a_stack(registry: Registry, app: AppRecord) -> None:
    for rid in ("r1", "r2", "r3"):
        put(registry, app, rid)
        registry.set_alias(app, "latest", rid)
    assert registry.rollback(app) == "r2"
    assert registry.get_alias(app, "latest") == "r2"
    assert registry.rollback(app) == "r1"
    assert registry.get_alias(app, "latest") == "r1"
    with pytest.raises(NotFoundError):
        registry.rollback(app)
    assert registry.get_alias(app, "latest") == "r1"
    moves = registry.alias_history(app, "latest")
    assert [(m.action, m.revision_id, m.previous_revision_id) for m in moves] == [
        ("set", "r1", None),
        ("set", "r2", "r1"),
        ("set", "r3", "r2"),
        ("rollback", "r2", "r3"),
        ("rollback", "r1", "r2"),
    ]


def test_rollback_after_new_deploy(registry: Registry, app: AppRecord) -> None:
    for rid in ("r1", "r2", "r3", "r4"):
        put(registry, app, rid)
    for rid in ("r1", "r2", "r3"):
        registry.set_alias(app, "latest", rid)
    assert registry.rollback(app) == "r2"
    registry.set_alias(app, "latest", "r4")
    assert registry.rollback(app) == "r2"  # r3 was popped; it does not come back
    assert registry.rollback(app) == "r1"


def test_rollback_is_per_alias(registry: Registry, app: AppRecord) -> None:
    put(registry, app, "r1")
    put(registry, app, "r2")
    registry.set_alias(app, "latest", "r1")
    registry.set_alias(app, "latest", "r2")
    registry.set_alias(app, "stable", "r1")
    with pytest.raises(NotFoundError):
        registry.rollback(app, "stable")
    with pytest.raises(NotFoundError):
        registry.rollback(app, "unset")
    assert registry.rollback(app, "latest") == "r1"
    assert registry.list_aliases(app) == {"latest": "r1", "stable": "r1"}


def test_set_alias_to_current_target_records_nothing(registry: Registry, app: AppRecord) -> None:
    put(registry, app, "r1")
    put(registry, app, "r2")
    registry.set_alias(app, "latest", "r1")
    registry.set_alias(app, "latest", "r2")
    assert registry.set_alias(app, "latest", "r2") == "r2"
    assert len(registry.alias_history(app, "latest")) == 2
    assert registry.rollback(app) == "r1"


def test_concurrent_set_alias_keeps_one_stack(registry: Registry, app: AppRecord) -> None:
    threads = 6
    ids = [f"r{n}" for n in range(threads)]
    for rid in ids:
        put(registry, app, rid)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(rid: str) -> None:
        try:
            barrier.wait(timeout=10)
            registry.set_alias(app, "latest", rid)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(rid,)) for rid in ids]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert errors == []
    moves = registry.alias_history(app, "latest")
    assert [m.previous_revision_id for m in moves[1:]] == [m.revision_id for m in moves[:-1]]
    current = registry.get_alias(app, "latest")
    assert current is not None
    seen = [current] + [registry.rollback(app) for _ in range(threads - 1)]
    assert sorted(seen) == ids  # each set pushed exactly one stack entry
    with pytest.raises(NotFoundError):
        registry.rollback(app)


def test_resolve_by_alias_and_id(registry: Registry, app: AppRecord) -> None:
    other = registry.ensure_app(app.owner_id, "other")
    r1, r2 = put(registry, app, "r1"), put(registry, app, "r2")
    put(registry, other, "theirs")
    registry.set_alias(app, "latest", "r2")
    assert registry.resolve("acme", "echo", "latest") == r2
    assert registry.resolve("acme", "echo", "r1") == r1
    assert registry.resolve("acme", "echo", "theirs") is None
    assert registry.resolve("acme", "echo", "nope") is None
    assert registry.resolve("acme", "missing", "latest") is None
    assert registry.resolve("nobody", "echo", "r1") is None


def test_sqlite_shared_between_registries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'shared.db'}"
    gateway, worker = Registry(url), Registry(url)
    try:
        gateway.create_all()
        worker.create_all()
        tenant = gateway.create_tenant("acme")
        app = worker.ensure_app(tenant.id, "echo")
        put(worker, app, "r1")
        gateway.set_alias(app, "latest", "r1")
        assert gateway.get_app("acme", "echo") == app
        resolved = worker.resolve("acme", "echo", "latest")
        assert resolved is not None and resolved.id == "r1"
        with worker.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert mode == "wal"
    finally:
        gateway.close()
        worker.close()


WRITER = """
import sys
from klieg_platform.registry import Registry
reg = Registry(sys.argv[1])
reg.create_all()
tenant_id, name = sys.argv[2], sys.argv[3]
for i in range(40):
    app = reg.ensure_app(tenant_id, "shared")
    reg.put_revision(app, f"{name}-{i}", {"i": i}, "c", "e", "3.11", "lock")
    reg.put_revision(app, f"both-{i}", {"i": i}, "c", "e", "3.11", "lock")
    reg.set_alias(app, name, f"{name}-{i}")
reg.close()
"""


def test_sqlite_concurrent_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    reg = Registry(url)
    reg.create_all()
    tenant = reg.create_tenant("acme")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, tenant.id, name], stderr=subprocess.PIPE
        )
        for name in ("gw", "wk")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    app = reg.get_app("acme", "shared")
    assert app is not None
    assert len(reg.list_revisions(app)) == 3 * 40
    assert reg.list_aliases(app) == {"gw": "gw-39", "wk": "wk-39"}
    assert reg.rollback(app, "gw") == "gw-38"
    reg.close()


def test_visibility_private_shared_public(registry: Registry) -> None:
    owner = registry.create_tenant("owner")
    friend = registry.create_tenant("friend")
    stranger = registry.create_tenant("stranger")
    app = registry.ensure_app(owner.id, "gen")
    assert app.visibility == "private"
    assert registry.can_call(app, owner) and not registry.can_call(app, friend)
    app = registry.set_visibility(app, "shared", ["friend"])
    assert registry.shared_with(app) == ["friend"]
    app = registry.get_app("owner", "gen") or app
    assert app.visibility == "shared"
    assert registry.can_call(app, friend) and not registry.can_call(app, stranger)
    app = registry.set_visibility(app, "public")
    assert registry.shared_with(app) == []
    assert registry.can_call(app, stranger)
    with pytest.raises(NotFoundError):
        registry.set_visibility(app, "shared", ["nobody"])
    with pytest.raises(InvalidRequestError):
        registry.set_visibility(app, "secret")
    with pytest.raises(InvalidRequestError):
        registry.set_visibility(app, "private", ["friend"])


def test_tenant_and_app_limits(registry: Registry) -> None:
    tenant = registry.create_tenant("capped", tier="free")
    assert tenant.max_inflight == 0
    changed = registry.set_tenant_limits("capped", tier="api", max_inflight=3)
    assert (changed.tier, changed.max_inflight) == ("api", 3)
    assert registry.get_tenant("capped") == changed
    with pytest.raises(NotFoundError):
        registry.set_tenant_limits("nobody", max_inflight=1)
    with pytest.raises(InvalidRequestError):
        registry.set_tenant_limits("capped", max_inflight=-1)
    app = registry.set_app_limit(registry.ensure_app(tenant.id, "a"), 5)
    assert app.max_inflight == 5
    assert registry.get_app("capped", "a") == app


def test_caller_logs_is_off_until_the_owner_turns_it_on(registry: Registry) -> None:
    owner = registry.create_tenant("owner", tier="free")
    app = registry.ensure_app(owner.id, "shown")
    assert app.caller_logs is False
    on = registry.set_caller_logs(app, True)
    assert on.caller_logs is True and registry.get_app("owner", "shown") == on
    assert registry.list_apps(owner.id) == [on]
    off = registry.set_caller_logs(on, False)
    assert registry.get_app("owner", "shown") == off and off.caller_logs is False


def test_an_apps_table_without_caller_logs_gains_it_off(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE tenants (id VARCHAR(32) PRIMARY KEY, name VARCHAR(63) NOT NULL UNIQUE,"
            " tier VARCHAR(32) NOT NULL, created_at FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE apps (id VARCHAR(32) PRIMARY KEY, owner_id VARCHAR(32) NOT NULL"
            " REFERENCES tenants (id), name VARCHAR(63) NOT NULL,"
            " visibility VARCHAR(16) NOT NULL DEFAULT 'private', created_at FLOAT NOT NULL,"
            " max_inflight INTEGER NOT NULL DEFAULT 0)"
        )
        conn.exec_driver_sql("INSERT INTO tenants VALUES ('t1', 'early', 'free', 1.0)")
        conn.exec_driver_sql(
            "INSERT INTO apps (id, owner_id, name, created_at) VALUES ('a1', 't1', 'old', 1.0)"
        )
    engine.dispose()
    registry = Registry(db_url)
    registry.create_all()
    try:
        old = registry.get_app("early", "old")
        assert old is not None and old.caller_logs is False
        assert registry.set_caller_logs(old, True) == registry.get_app("early", "old")
    finally:
        registry.close()


def test_old_database_gains_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE tenants (id VARCHAR(32) PRIMARY KEY, name VARCHAR(63) NOT NULL UNIQUE,"
            " tier VARCHAR(32) NOT NULL, created_at FLOAT NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO tenants VALUES ('t1', 'early', 'free', 1.0)")
    engine.dispose()
    registry = Registry(url)
    registry.create_all()
    early = registry.get_tenant("early")
    assert early is not None and early.max_inflight == 0 and early.admin is False
    registry.close()


def test_key_scope_and_expiry(registry: Registry, tenant: Tenant) -> None:
    caller, caller_secret = registry.create_key(tenant.id, scope="call")
    short, short_secret = registry.create_key(tenant.id, expires_at=time.time() + 0.3)
    assert (grant := registry.authenticate(caller.id, caller_secret))
    assert grant.key.scope == "call" and grant.key.expires_at is None
    assert (grant := registry.authenticate(short.id, short_secret))
    assert grant.key.scope == "admin"  # the default
    time.sleep(0.4)
    assert registry.authenticate(short.id, short_secret) is None
    with pytest.raises(InvalidRequestError, match="unknown key scope"):
        registry.create_key(tenant.id, scope="root")


def test_list_keys_shows_revoked_and_expired(registry: Registry, tenant: Tenant) -> None:
    a, _ = registry.create_key(tenant.id, label="a")
    b, _ = registry.create_key(tenant.id, label="b", scope="deploy", expires_at=1.0)
    other = registry.create_tenant("other")
    registry.create_key(other.id)
    registry.revoke_key(a.id)
    listed = {key.id: key for key in registry.list_keys(tenant.id)}
    assert set(listed) == {a.id, b.id}
    assert listed[a.id].revoked_at is not None and not listed[a.id].live(time.time())
    assert listed[b.id].scope == "deploy" and not listed[b.id].live(time.time())
    assert registry.get_key(b.id) == listed[b.id]


def test_old_keys_table_gains_scope_admin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE api_keys (id VARCHAR(32) PRIMARY KEY, tenant_id VARCHAR(32) NOT NULL,"
            " secret_sha256 VARCHAR(64) NOT NULL, label VARCHAR(200), created_at FLOAT NOT NULL,"
            " revoked_at FLOAT)"
        )
        conn.exec_driver_sql("INSERT INTO api_keys VALUES ('k_old', 't1', 'x', NULL, 1.0, NULL)")
    engine.dispose()
    registry = Registry(url)
    registry.create_all()
    old = registry.get_key("k_old")
    assert old is not None and old.scope == "admin" and old.expires_at is None
    registry.close()


def test_scale_overrides_merge_clear_and_apply_to_aliased_revisions(
    registry: Registry, app: AppRecord, tenant: Tenant
) -> None:
    functions = [{"name": "gen", "kind": "function", "module": "app", "qualname": "gen",
                  "min_concurrency": 0, "keep_alive": 60.0}]  # fmt: skip
    rev = put(registry, app, "r1", name="echo", functions=functions)
    other = registry.ensure_app(tenant.id, "other")
    put(registry, other, "o1", name="other", functions=functions)
    registry.set_alias(app, "latest", rev.id)
    registry.set_alias(other, "latest", "o1")
    assert registry.scale_overrides() == {}
    registry.set_scaling(app, "", {"keep_alive": 5.0, "min_concurrency": 1})
    after = registry.set_scaling(app, "gen", {"min_concurrency": 2, "concurrency_buffer": 3})
    assert [(o.function, o.values()) for o in after] == [
        ("", {"keep_alive": 5.0, "min_concurrency": 1}),
        ("gen", {"min_concurrency": 2, "concurrency_buffer": 3}),
    ]
    after = registry.set_scaling(app, "gen", {"min_concurrency": None})  # stop overriding it
    assert after[1].values() == {"concurrency_buffer": 3}
    by_id = {r.id: r for r in registry.aliased_revisions()}
    gen = by_id["r1"].spec["functions"][0]
    assert (gen["keep_alive"], gen["min_concurrency"], gen["concurrency_buffer"]) == (5.0, 1, 3)
    assert by_id["o1"].spec["functions"][0]["keep_alive"] == 60.0  # another app's: untouched
    assert registry.get_revision("r1") == rev  # the revision itself never changes
    assert registry.set_scaling(app, "gen", {"concurrency_buffer": None})[0].function == ""
    assert len(registry.scale_overrides(app)[app.id]) == 1  # the emptied row is gone
    with pytest.raises(InvalidRequestError, match="replicas"):
        registry.set_scaling(app, "", {"replicas": 2})
    assert registry.reset_scaling(app) == 1
    assert registry.scale_overrides(app) == {}


def test_a_deleted_app_frees_its_name_and_its_revisions_serve_only_what_was_queued(
    registry: Registry, app: AppRecord, tenant: Tenant
) -> None:
    r1, r2 = put(registry, app, "r1"), put(registry, app, "r2")
    registry.set_alias(app, "latest", "r2")
    registry.set_scaling(app, "", {"keep_alive": 5.0})
    assert sorted(registry.delete_app(app)) == ["r1", "r2"]
    assert registry.get_app("acme", "echo") is None
    assert [a.name for a in registry.list_apps(tenant.id)] == []
    assert registry.resolve("acme", "echo", "latest") is None
    assert registry.aliased_revisions() == []
    stored = registry.get_revision("r2")  # a worker still reads it for queued requests
    assert stored is not None and stored.retired_at is not None
    assert sorted(r.id for r in registry.retired_revisions()) == ["r1", "r2"]
    assert {r.app for r in registry.retired_revisions()} == {"echo"}  # its name when live

    again = registry.ensure_app(tenant.id, "echo")  # the name is free at once
    assert again.id != app.id
    revived, created = registry.put_revision(
        again, "r2", SPEC, r2.code_hash, "env-1", "3.11", "numpy==2.0\n"
    )  # the same content deployed again: the retired revision comes back for the new app
    assert not created and revived.app_id == again.id and revived.retired_at is None
    dropped = registry.drop_revisions(["r1", "r2"])
    assert dropped.revisions == ["r1"] and dropped.apps == 1  # r2 lives on; the old app goes
    assert dropped.code_hashes == {r1.code_hash} and dropped.env_keys == set()
    assert registry.get_revision("r1") is None and registry.get_revision("r2") is not None
    assert registry.scale_overrides() == {}


def test_prune_retires_unaliased_revisions_past_the_newest_and_drop_frees_their_code(
    registry: Registry, app: AppRecord
) -> None:
    for n in range(1, 6):
        put(registry, app, f"r{n}")
        registry.set_alias(app, "latest", f"r{n}")
    registry.set_alias(app, "pinned", "r1")
    assert registry.prune_revisions(app, keep=2) == ["r3", "r2"]
    assert [r.id for r in registry.list_revisions(app)] == ["r5", "r4", "r1"]
    assert registry.resolve("acme", "echo", "r3") is None
    with pytest.raises(NotFoundError, match="not found"):
        registry.set_alias(app, "other", "r3")
    registry.rollback(app)  # latest r5 -> r4
    with pytest.raises(NotFoundError, match="pruned"):
        registry.rollback(app)  # r4 -> r3, which was pruned
    assert registry.prune_revisions(app, keep=0) == ["r5"]  # r4 is latest, r1 pinned
    dropped = registry.drop_revisions(["r2", "r3", "r5"])
    assert sorted(dropped.revisions) == ["r2", "r3", "r5"]
    assert dropped.code_hashes == {"code-r2", "code-r3", "code-r5"}
    assert dropped.env_keys == set()  # r1 and r4 still use env-1
    assert registry.prune_revisions(app, keep=0) == []


def test_a_dev_revision_expires_unless_renewed(registry: Registry, app: AppRecord) -> None:
    dev, _ = registry.put_revision(
        app, "dev1", SPEC, "c", "env-dev", "3.11", "", expires_at=time.time() + 60
    )
    assert dev.expires_at is not None and registry.prune_revisions(app, keep=0) == []
    assert registry.retire_expired(now=time.time() + 30) == []
    assert registry.renew_revision("dev1", time.time() + 120)
    assert registry.retire_expired(now=time.time() + 90) == []
    assert registry.retire_expired(now=time.time() + 150) == ["acme/echo"]
    assert registry.get_app("acme", "echo") is None  # it had nothing else: deleted
    assert not registry.renew_revision("dev1", time.time() + 300)  # retired: too late
    assert registry.drop_revisions(["dev1"]).env_keys == {"env-dev"}
