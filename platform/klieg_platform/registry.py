"""Registry: tenants, API keys, apps, immutable revisions and aliases, in SQL.

All SQL of the platform goes through this module (SQLAlchemy Core). ``sqlite:///path.db`` is the
default; ``postgresql://user@host:port/db`` selects PostgreSQL through psycopg 3. SQLite runs in
WAL mode with a busy timeout and takes its write lock at ``BEGIN IMMEDIATE``, so one file is safe
to share between threads and between processes (the gateway and a worker).

Guarantees:

- API key secrets are never stored: only ``sha256(secret)`` in hex, compared in constant time.
- Revisions are immutable: there is no update path. Re-putting an existing id is a no-op that
  returns the stored row, also when two writers race on the same id.
- Every alias move (set or rollback) appends a row to the alias history.

Rollback semantics (a stack per alias): each ``set_alias`` that changes the target pushes the new
revision; ``rollback`` pops the top and points the alias at the entry below it. So after deploying
r1, r2, r3 to ``latest``, rollbacks give r2, then r1, then ``NotFoundError``; a rollback never
returns to the revision it just left. A ``set_alias`` after a rollback pushes onto the shortened
stack (the popped entries are gone for good). The stack is derived from the append-only history:
each history row carries the stack depth after the move, and the entry at depth ``d`` is the
newest ``set`` row with that depth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from klieg.exceptions import InvalidRequestError, NotFoundError
from klieg_platform.registry_lifecycle import Lifecycle
from klieg_platform.registry_tables import (
    APP_COLUMNS,
    APP_FROM,
    REVISION_COLUMNS,
    REVISION_FROM,
    SCOPES,
    AliasMove,
    ApiKey,
    AppRecord,
    Grant,
    Revision,
    Tenant,
    add_missing_columns,
    alias_history,
    aliases,
    allowed,
    api_keys,
    app_secrets,
    app_shares,
    apps,
    metadata,
    revision_row,
    revisions,
    tenant_row,
    tenants,
)
from klieg_platform.scaling import effective_doc

__all__ = [
    "ALIAS",
    "APP_NAME",
    "CONTROL",
    "MAX_INFLIGHT",
    "MAX_LABEL",
    "REVISION_ID",
    "SCOPES",
    "TENANT_NAME",
    "TIER",
    "WORKFLOW_NAME",
    "WORKFLOW_PREFIX",
    "AliasMove",
    "ApiKey",
    "AppRecord",
    "Grant",
    "Registry",
    "Revision",
    "Tenant",
    "metadata",
    "workflow_app_name",
]

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ALIAS = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TIER = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
REVISION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""What each name must match in full (the gateway's request bodies take these patterns)."""
MAX_INFLIGHT = 1_000_000
"""The largest in-flight cap of a tenant or an app (0 is no cap)."""
MAX_LABEL = 200
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Control characters: none is part of a name or a label (PostgreSQL's text holds no NUL)."""
_WRITE = "klieg_write"
VISIBILITIES = frozenset({"private", "shared", "public"})
WORKFLOW_PREFIX = "workflows/"
"""Workflow ``w`` of a tenant is stored as its app ``workflows/w`` (app names have no ``/``)."""
WORKFLOW_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,52}")  # the prefix + name fit apps.name
_PG_CREATE_LOCK = 0x6B6C696567  # advisory lock key serialising create_all on PostgreSQL
_SQLITE_BUSY_S = 30.0


def _engine_url(url: str) -> sa.URL:
    """The SQLAlchemy URL for a registry URL; ``ValueError`` for unsupported databases."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "").expanduser()
        return parsed.set(drivername="sqlite+pysqlite", database=str(path))
    raise ValueError(f"unsupported registry URL {url!r}: use sqlite:///path.db or postgresql://")


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidRequestError(f"invalid {what} {value!r}: must match {pattern.pattern}")


def _storable(*values: object) -> bool:
    """Whether each value is text a row could hold: a lookup of anything else finds nothing
    (and never reaches the database, where a NUL is an error on PostgreSQL)."""
    return all(isinstance(v, str) and "\x00" not in v for v in values)


def _check_limit(max_inflight: int) -> None:
    if isinstance(max_inflight, bool) or not isinstance(max_inflight, int):
        raise InvalidRequestError("max_inflight must be a whole number")
    if not 0 <= max_inflight <= MAX_INFLIGHT:
        raise InvalidRequestError(f"max_inflight must be from 0 to {MAX_INFLIGHT}")


def workflow_app_name(name: str) -> str:
    """The app name that stores workflow ``name``; ``InvalidRequestError`` for a bad name."""
    _check(WORKFLOW_NAME, name, "workflow name")
    if name == "rollback":  # POST /workflows/{x}/rollback is a rollback, not a run
        raise InvalidRequestError("'rollback' is reserved and cannot name a workflow")
    return WORKFLOW_PREFIX + name


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_id() -> str:
    return uuid.uuid4().hex


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"timeout": _SQLITE_BUSY_S, "check_same_thread": False}
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy, not pysqlite, emits BEGIN (see below)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction that upgrades to a writer
        # fails with SQLITE_BUSY at once instead of waiting out the busy timeout.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Registry(Lifecycle):
    """The platform's SQL store. Thread-safe; one instance per process is enough."""

    def __init__(self, url: str) -> None:
        self._url = _engine_url(url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        if self._sqlite:
            self._engine = _sqlite_engine(self._url)
        else:
            self._engine = sa.create_engine(self._url, pool_pre_ping=True)

    @property
    def engine(self) -> Engine:
        """The underlying engine, for diagnostics and tests; all writes go through methods."""
        return self._engine

    def create_all(self) -> None:
        """Create missing tables and indexes; idempotent and safe to run from several processes."""
        with self._write() as conn:
            if not self._sqlite:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_CREATE_LOCK)))
            metadata.create_all(conn)
            add_missing_columns(conn)

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One transaction, committed on success; on SQLite it holds the write lock throughout."""
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    # tenants

    def create_tenant(self, name: str, tier: str = "free", admin: bool = False) -> Tenant:
        """A new tenant; ``InvalidRequestError`` if the name is invalid or taken."""
        _check(TENANT_NAME, name, "tenant name")
        _check(TIER, tier, "tier")
        tenant = Tenant(_new_id(), name, tier, time.time(), admin=bool(admin))
        try:
            with self._write() as conn:
                conn.execute(sa.insert(tenants).values(**vars(tenant)))
        except sa.exc.IntegrityError:
            raise InvalidRequestError(f"tenant name {name!r} is taken") from None
        return tenant

    def get_tenant(self, name: str) -> Tenant | None:
        if not _storable(name):
            return None
        with self._read() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.name == name)).first()
        return tenant_row(row._mapping) if row else None

    def get_tenant_by_id(self, tenant_id: str) -> Tenant | None:
        if not _storable(tenant_id):
            return None
        with self._read() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id)).first()
        return tenant_row(row._mapping) if row else None

    def count_tenants(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(tenants)).scalar_one())

    # keys

    def create_key(
        self,
        tenant_id: str,
        label: str | None = None,
        *,
        scope: str = "admin",
        expires_at: float | None = None,
        rate_per_s: float = 0.0,
        burst: int = 0,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret. The secret is returned here once and never stored."""
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
            raise InvalidRequestError(f"a key label is text of at most {MAX_LABEL} characters")
        if label is not None and CONTROL.search(label):
            raise InvalidRequestError("a key label may not hold control characters")
        if scope not in SCOPES:
            raise InvalidRequestError(f"unknown key scope {scope!r}; scopes: {', '.join(SCOPES)}")
        secret = secrets.token_urlsafe(32)
        key = ApiKey(
            id="k_" + secrets.token_hex(8),
            tenant_id=tenant_id,
            label=label,
            created_at=time.time(),
            scope=scope,
            expires_at=expires_at,
            rate_per_s=rate_per_s,
            burst=burst,
        )
        with self._write() as conn:
            found = conn.execute(sa.select(tenants.c.id).where(tenants.c.id == tenant_id)).first()
            if found is None:
                raise NotFoundError(f"unknown tenant id {tenant_id!r}")
            conn.execute(sa.insert(api_keys).values(**vars(key), secret_sha256=_sha256(secret)))
        return key, secret

    def authenticate(self, key_id: str, secret: str) -> Grant | None:
        """The key and its tenant if the key exists, is neither revoked nor expired, and the
        secret matches."""
        if not _storable(key_id, secret):
            return None
        query = (
            sa.select(api_keys, tenants)
            .join(tenants, api_keys.c.tenant_id == tenants.c.id)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None or not hmac.compare_digest(row._mapping[api_keys.c.secret_sha256],
                                                  _sha256(secret)):  # fmt: skip
            return None
        key = _key_row(row._mapping)
        if not key.live(time.time()):
            return None
        return Grant(Tenant(**{c.name: row._mapping[c] for c in tenants.c}), key)

    def list_keys(self, tenant_id: str) -> list[ApiKey]:
        """The tenant's keys, revoked and expired ones included, oldest first."""
        query = (
            sa.select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.created_at)
        )
        with self._read() as conn:
            return [_key_row(row._mapping) for row in conn.execute(query)]

    def get_key(self, key_id: str) -> ApiKey | None:
        if not _storable(key_id):
            return None
        with self._read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key_row(row._mapping) if row else None

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; True if this call revoked it, False if unknown or already revoked."""
        with self._write() as conn:
            result = conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return result.rowcount > 0

    # secrets (sealed: the registry never sees a value)

    def set_secret(self, tenant_id: str, name: str, sealed: str) -> float:
        """Store (or replace) a tenant's sealed secret; when it was set."""
        now = time.time()
        with self._write() as conn:
            where = (app_secrets.c.tenant_id == tenant_id) & (app_secrets.c.name == name)
            conn.execute(sa.delete(app_secrets).where(where))
            conn.execute(
                sa.insert(app_secrets).values(
                    tenant_id=tenant_id, name=name, sealed=sealed, updated_at=now
                )
            )
        return now

    def secret_names(self, tenant_id: str) -> list[tuple[str, float]]:
        """(name, when set) of the tenant's secrets, by name."""
        query = (
            sa.select(app_secrets.c.name, app_secrets.c.updated_at)
            .where(app_secrets.c.tenant_id == tenant_id)
            .order_by(app_secrets.c.name)
        )
        with self._read() as conn:
            return [(row.name, row.updated_at) for row in conn.execute(query)]

    def sealed_secrets(self, tenant_id: str, names: Sequence[str]) -> dict[str, str]:
        """name -> sealed value of those of ``names`` the tenant has set."""
        if not names:
            return {}
        query = sa.select(app_secrets.c.name, app_secrets.c.sealed).where(
            app_secrets.c.tenant_id == tenant_id, app_secrets.c.name.in_(list(names))
        )
        with self._read() as conn:
            return {row.name: row.sealed for row in conn.execute(query)}

    def delete_secret(self, tenant_id: str, name: str) -> bool:
        with self._write() as conn:
            result = conn.execute(
                sa.delete(app_secrets).where(
                    app_secrets.c.tenant_id == tenant_id, app_secrets.c.name == name
                )
            )
            return result.rowcount > 0

    # apps

    def ensure_app(self, owner_id: str, name: str) -> AppRecord:
        """The owner's app of that name, created if absent (race-safe)."""
        _check(APP_NAME, name, "app name")
        return self._ensure_app(owner_id, name)

    def ensure_workflow_app(self, owner_id: str, name: str) -> AppRecord:
        """The app row storing the owner's workflow ``name``, created if absent."""
        return self._ensure_app(owner_id, workflow_app_name(name))

    def _ensure_app(self, owner_id: str, name: str) -> AppRecord:
        query = sa.select(*APP_COLUMNS).select_from(APP_FROM)
        query = query.where(apps.c.owner_id == owner_id, apps.c.name == name)
        try:
            with self._write() as conn:
                row = conn.execute(query).first()
                if row is not None:
                    return AppRecord(**row._mapping)
                owner = conn.execute(sa.select(tenants.c.name).where(tenants.c.id == owner_id))
                owner_name = owner.scalar_one_or_none()
                if owner_name is None:
                    raise NotFoundError(f"unknown tenant id {owner_id!r}")
                app = AppRecord(_new_id(), owner_name, owner_id, name, time.time())
                conn.execute(
                    sa.insert(apps).values(
                        id=app.id, owner_id=owner_id, name=name, created_at=app.created_at
                    )
                )
                return app
        except sa.exc.IntegrityError:
            with self._read() as conn:
                return AppRecord(**conn.execute(query).one()._mapping)

    def get_app(self, owner: str, name: str) -> AppRecord | None:
        """The app ``owner/name``, ``owner`` being the tenant name."""
        if not _storable(owner, name):
            return None
        query = sa.select(*APP_COLUMNS).select_from(APP_FROM).where(apps.c.deleted_at.is_(None))
        with self._read() as conn:
            row = conn.execute(query.where(tenants.c.name == owner, apps.c.name == name)).first()
        return AppRecord(**row._mapping) if row else None

    def list_apps(self, owner_id: str, *, workflows: bool = False) -> list[AppRecord]:
        """The owner's apps by name; with ``workflows``, the app rows of its workflows instead."""
        is_workflow = apps.c.name.startswith(WORKFLOW_PREFIX, autoescape=True)
        query = sa.select(*APP_COLUMNS).select_from(APP_FROM)
        query = query.where(apps.c.owner_id == owner_id, apps.c.deleted_at.is_(None))
        query = query.where(is_workflow if workflows else ~is_workflow).order_by(apps.c.name)
        with self._read() as conn:
            return [AppRecord(**row._mapping) for row in conn.execute(query)]

    # access and limits

    def set_visibility(
        self, app: AppRecord, visibility: str, shared_with: Sequence[str] = ()
    ) -> AppRecord:
        """Make an app private, public, or shared with the named tenants (replacing the list)."""
        if visibility not in VISIBILITIES:
            raise InvalidRequestError(f"visibility must be one of {sorted(VISIBILITIES)}")
        if shared_with and visibility != "shared":
            raise InvalidRequestError("tenants can only be named for a shared app")
        with self._write() as conn:
            ids = []
            for name in shared_with:
                if not _storable(name):
                    raise NotFoundError(f"tenant {name!r} not found")
                found = conn.execute(sa.select(tenants.c.id).where(tenants.c.name == name))
                tenant_id = found.scalar()
                if tenant_id is None:
                    raise NotFoundError(f"tenant {name!r} not found")
                ids.append(tenant_id)
            conn.execute(apps.update().where(apps.c.id == app.id).values(visibility=visibility))
            conn.execute(app_shares.delete().where(app_shares.c.app_id == app.id))
            for tenant_id in sorted(set(ids)):
                conn.execute(app_shares.insert().values(app_id=app.id, tenant_id=tenant_id))
        return replace(app, visibility=visibility)

    def shared_with(self, app: AppRecord) -> list[str]:
        """Names of the tenants a shared app is shared with."""
        query = (
            sa.select(tenants.c.name)
            .select_from(app_shares.join(tenants, app_shares.c.tenant_id == tenants.c.id))
            .where(app_shares.c.app_id == app.id)
            .order_by(tenants.c.name)
        )
        with self._read() as conn:
            return [row[0] for row in conn.execute(query)]

    def can_call(self, app: AppRecord, tenant: Tenant) -> bool:
        """Whether ``tenant`` may call ``app``: its owner always; others per visibility."""
        shares = self.shared_with(app) if app.visibility == "shared" else []
        return allowed(app, shares, tenant)

    def set_tenant_limits(
        self, name: str, *, tier: str | None = None, max_inflight: int | None = None
    ) -> Tenant:
        """Change a tenant's tier and/or in-flight cap (0: no cap)."""
        values: dict[str, Any] = {}
        if tier is not None:
            _check(TIER, tier, "tier")
            values["tier"] = tier
        if max_inflight is not None:
            _check_limit(max_inflight)
            values["max_inflight"] = max_inflight
        if not _storable(name):
            raise NotFoundError(f"tenant {name!r} not found")
        with self._write() as conn:
            if values:
                conn.execute(tenants.update().where(tenants.c.name == name).values(**values))
            row = conn.execute(sa.select(tenants).where(tenants.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"tenant {name!r} not found")
        return tenant_row(row._mapping)

    def set_app_limit(self, app: AppRecord, max_inflight: int) -> AppRecord:
        """Cap an app's running requests across the platform (0: no cap)."""
        _check_limit(max_inflight)
        with self._write() as conn:
            conn.execute(apps.update().where(apps.c.id == app.id).values(max_inflight=max_inflight))
        return replace(app, max_inflight=max_inflight)

    def set_caller_logs(self, app: AppRecord, on: bool) -> AppRecord:
        """Let callers other than the owner see the app's logs and full errors, or not."""
        with self._write() as conn:
            conn.execute(apps.update().where(apps.c.id == app.id).values(caller_logs=bool(on)))
        return replace(app, caller_logs=bool(on))

    # revisions

    def put_revision(
        self,
        app: AppRecord,
        revision_id: str,
        spec: dict[str, Any],
        code_hash: str,
        env_key: str,
        python: str,
        lock: str,
        *,
        expires_at: float | None = None,
    ) -> tuple[Revision, bool]:
        """Insert a revision: ``(new, True)``, or ``(stored, False)`` if the id exists.

        The stored row's content is never changed. A retired one (its app deleted, or pruned)
        is brought back, and moves to ``app`` when its own app was deleted (same owner and
        content: the id says so), instead of being dropped. ``InvalidRequestError`` if the id
        belongs to another live app. ``expires_at``: a dev revision (``klieg run``), retired
        when that passes unless renewed.
        """
        _check(REVISION_ID, revision_id, "revision id")
        if not _storable(code_hash, env_key, python, lock):
            raise InvalidRequestError("a revision's hashes, Python version and lock are text")
        try:
            text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"revision spec is not JSON: {exc}") from None
        values = {
            "id": revision_id,
            "app_id": app.id,
            "spec": text,
            "code_hash": code_hash,
            "env_key": env_key,
            "python": python,
            "lock": lock,
            "created_at": time.time(),
            "expires_at": expires_at,
        }
        revision = Revision(**{**values, "spec": json.loads(text)}, owner=app.owner, app=app.name)
        try:
            with self._write() as conn:
                query = sa.select(revisions.c.id).where(revisions.c.id == revision_id)
                exists = conn.execute(query).first() is not None
                if not exists:
                    conn.execute(sa.insert(revisions).values(**values))
                else:
                    self._revive(conn, app, revision_id, expires_at)
        except sa.exc.IntegrityError:
            exists = True  # a concurrent writer inserted the same id first
        if not exists:
            return revision, True
        stored = self.get_revision(revision_id)
        if stored is None:
            raise NotFoundError(f"app {app.owner}/{app.name} not found")
        if stored.app_id != app.id:
            raise InvalidRequestError(
                f"revision id {revision_id!r} belongs to {stored.owner}/{stored.app}"
            )
        return stored, False

    def _revive(
        self, conn: Connection, app: AppRecord, revision_id: str, expires_at: float | None
    ) -> None:
        """Bring a retired revision back for ``app`` (see ``put_revision``)."""
        r = revisions.c
        owner = sa.select(apps.c.id).where(
            apps.c.id == r.app_id, apps.c.owner_id == app.owner_id, apps.c.deleted_at.isnot(None)
        )
        conn.execute(
            sa.update(revisions)
            .where(r.id == revision_id, r.retired_at.isnot(None), sa.exists(owner))
            .values(app_id=app.id)
        )
        conn.execute(
            sa.update(revisions)
            .where(r.id == revision_id, r.app_id == app.id, r.retired_at.isnot(None))
            .values(retired_at=None, expires_at=expires_at)
        )

    def get_revision(self, revision_id: str) -> Revision | None:
        if not _storable(revision_id):
            return None
        query = sa.select(*REVISION_COLUMNS).select_from(REVISION_FROM)
        with self._read() as conn:
            row = conn.execute(query.where(revisions.c.id == revision_id)).first()
        return revision_row(row._mapping) if row else None

    def aliased_revisions(self) -> list[Revision]:
        """Every app revision some alias points to (the ones that can receive traffic), with
        its app's scale overrides applied to its functions (``scaling.py``: what the keep-warm
        rounds and the autoscaler act on); workflow revisions are left out."""
        query = (
            sa.select(*REVISION_COLUMNS)
            .select_from(REVISION_FROM)
            .where(revisions.c.id.in_(sa.select(aliases.c.revision_id).distinct()))
            .where(~apps.c.name.startswith(WORKFLOW_PREFIX, autoescape=True))
        )
        with self._read() as conn:
            found = [revision_row(row._mapping) for row in conn.execute(query)]
            overrides = self._overrides(conn, {rev.app_id for rev in found})
        return [
            replace(rev, spec=effective_doc(rev.spec, overrides[rev.app_id]))
            if rev.app_id in overrides
            else rev
            for rev in found
        ]

    def list_revisions(self, app: AppRecord) -> list[Revision]:
        """The app's revisions that are not retired, newest first (insertion order, not clock
        order)."""
        query = sa.select(*REVISION_COLUMNS).select_from(REVISION_FROM)
        query = query.where(revisions.c.app_id == app.id, revisions.c.retired_at.is_(None))
        query = query.order_by(revisions.c.seq.desc())
        with self._read() as conn:
            return [revision_row(row._mapping) for row in conn.execute(query)]

    # aliases

    def set_alias(self, app: AppRecord, alias: str, revision_id: str) -> str | None:
        """Point ``alias`` at one of the app's revisions; returns the previous target.

        Setting the current target again changes nothing and records nothing.
        ``NotFoundError`` if the revision is not this app's.
        """
        _check(ALIAS, alias, "alias")
        with self._write() as conn:
            self._lock_app(conn, app)
            owner = conn.execute(
                sa.select(revisions.c.app_id).where(
                    revisions.c.id == revision_id, revisions.c.retired_at.is_(None)
                )
            ).scalar_one_or_none()
            if owner != app.id:
                raise NotFoundError(f"revision {revision_id!r} not found in {app.owner}/{app.name}")
            current = self._current(conn, app, alias)
            if current == revision_id:
                return current
            depth = self._depth(conn, app, alias) + 1
            self._move(conn, app, alias, "set", revision_id, current, depth)
            return current

    def get_alias(self, app: AppRecord, alias: str) -> str | None:
        if not _storable(alias):
            return None
        with self._read() as conn:
            return self._current(conn, app, alias)

    def list_aliases(self, app: AppRecord) -> dict[str, str]:
        query = sa.select(aliases.c.name, aliases.c.revision_id).where(aliases.c.app_id == app.id)
        with self._read() as conn:
            return {name: rev for name, rev in conn.execute(query.order_by(aliases.c.name))}

    def alias_history(self, app: AppRecord, alias: str) -> list[AliasMove]:
        """Every move of ``alias``, oldest first."""
        h = alias_history.c
        query = sa.select(h.alias, h.action, h.revision_id, h.previous_revision_id, h.created_at)
        query = query.where(h.app_id == app.id, h.alias == alias).order_by(h.seq)
        with self._read() as conn:
            return [AliasMove(*row) for row in conn.execute(query)]

    def rollback(self, app: AppRecord, alias: str = "latest") -> str:
        """Pop the alias's stack: move it to the entry below the current one; returns that id.

        ``NotFoundError`` if the alias is unset, has no earlier entry, or that entry's
        revision was pruned (retired or dropped).
        """
        h = alias_history.c
        with self._write() as conn:
            self._lock_app(conn, app)
            current = self._current(conn, app, alias)
            depth = self._depth(conn, app, alias)
            if current is None or depth < 2:
                raise NotFoundError(
                    f"alias {alias!r} of {app.owner}/{app.name} has nothing earlier"
                )
            target = conn.execute(
                sa.select(h.revision_id)
                .where(
                    h.app_id == app.id, h.alias == alias, h.action == "set", h.depth == depth - 1
                )
                .order_by(h.seq.desc())
                .limit(1)
            ).scalar_one()
            live = sa.select(revisions.c.id).where(
                revisions.c.id == target, revisions.c.retired_at.is_(None)
            )
            if conn.execute(live).first() is None:
                raise NotFoundError(
                    f"alias {alias!r} of {app.owner}/{app.name} would go back to revision "
                    f"{target}, which was pruned"
                )
            self._move(conn, app, alias, "rollback", target, current, depth - 1)
            return str(target)

    def resolve(self, owner: str, app: str, ref: str) -> Revision | None:
        """The revision ``ref`` names in ``owner/app``: an alias first, else a revision id."""
        record = self.get_app(owner, app)
        return self.revision_of(record, ref) if record is not None else None

    def revision_of(self, app: AppRecord, ref: str) -> Revision | None:
        """The revision ``ref`` (an alias first, else a revision id) names in ``app``; a
        retired one names none."""
        revision = self.get_revision(self.get_alias(app, ref) or ref)
        if revision is None or revision.app_id != app.id or revision.retired_at is not None:
            return None
        return revision

    def _lock_app(self, conn: Connection, app: AppRecord) -> None:
        """Serialise alias moves of one app (row lock on PostgreSQL; SQLite is already locked)."""
        found = conn.execute(
            sa.select(apps.c.id).where(apps.c.id == app.id).with_for_update()
        ).first()
        if found is None:
            raise NotFoundError(f"app {app.owner}/{app.name} not found")

    def _current(self, conn: Connection, app: AppRecord, alias: str) -> str | None:
        query = sa.select(aliases.c.revision_id)
        query = query.where(aliases.c.app_id == app.id, aliases.c.name == alias)
        return conn.execute(query).scalar_one_or_none()

    def _depth(self, conn: Connection, app: AppRecord, alias: str) -> int:
        h = alias_history.c
        query = sa.select(h.depth).where(h.app_id == app.id, h.alias == alias)
        depth = conn.execute(query.order_by(h.seq.desc()).limit(1)).scalar_one_or_none()
        return int(depth or 0)

    def _move(
        self,
        conn: Connection,
        app: AppRecord,
        alias: str,
        action: str,
        revision_id: str,
        previous: str | None,
        depth: int,
    ) -> None:
        now = time.time()
        if previous is None:
            conn.execute(
                sa.insert(aliases).values(
                    app_id=app.id, name=alias, revision_id=revision_id, updated_at=now
                )
            )
        else:
            conn.execute(
                sa.update(aliases)
                .where(aliases.c.app_id == app.id, aliases.c.name == alias)
                .values(revision_id=revision_id, updated_at=now)
            )
        conn.execute(
            sa.insert(alias_history).values(
                app_id=app.id,
                alias=alias,
                action=action,
                revision_id=revision_id,
                previous_revision_id=previous,
                depth=depth,
                created_at=now,
            )
        )


def _key_row(row: sa.RowMapping) -> ApiKey:
    """An ``ApiKey`` from a row holding the ``api_keys`` columns (joined rows included)."""
    return ApiKey(**{name: row[api_keys.c[name]] for name in ApiKey.__dataclass_fields__})
