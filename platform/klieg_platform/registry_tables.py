"""The registry's SQL schema and row types (``registry.py`` is the only module that queries it).

``add_missing_columns`` brings a database created by an older Klieg up to this schema: new
columns are added with their server defaults (tables are created by ``metadata.create_all``).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("tier", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("max_inflight", sa.Integer, nullable=False, server_default="0"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("label", sa.String(200)),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double),
    sa.Column("scope", sa.String(16), nullable=False, server_default=sa.text("'admin'")),
    sa.Column("expires_at", sa.Double),
    sa.Column("rate_per_s", sa.Double, nullable=False, server_default="0"),
    sa.Column("burst", sa.Integer, nullable=False, server_default="0"),
)

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    # private: its owner only; shared: the owner and the tenants in app_shares; public: anyone
    sa.Column("visibility", sa.String(16), nullable=False, server_default="private"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("max_inflight", sa.Integer, nullable=False, server_default="0"),
    # whether callers other than the owner see its requests' logs and full errors
    sa.Column("caller_logs", sa.Boolean, nullable=False, server_default=sa.false()),
    # set by a delete (the name then carries "~<id>", freeing it): its revisions are retired
    sa.Column("deleted_at", sa.Double),
    sa.UniqueConstraint("owner_id", "name"),
)

app_shares = sa.Table(
    "app_shares",
    metadata,
    sa.Column("app_id", sa.String(32), sa.ForeignKey("apps.id"), primary_key=True),
    sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), primary_key=True),
)

app_secrets = sa.Table(
    "app_secrets",
    metadata,
    sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("sealed", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
"""A tenant's secrets, each sealed with the platform's secrets key (``vault.py``)."""

revisions = sa.Table(
    "revisions",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(128), nullable=False, unique=True),
    sa.Column("app_id", sa.String(32), sa.ForeignKey("apps.id"), nullable=False, index=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("code_hash", sa.String(128), nullable=False),
    sa.Column("env_key", sa.String(128), nullable=False),
    sa.Column("python", sa.String(32), nullable=False),
    sa.Column("lock", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    # retired (pruned, its app deleted, or a dev revision expired): no new request resolves to
    # it; it is dropped, with its code and env unless others use them, once nothing needs it
    sa.Column("retired_at", sa.Double),
    # a dev revision (``klieg run``): retired when this passes unless renewed
    sa.Column("expires_at", sa.Double),
)

scale_overrides = sa.Table(
    "scale_overrides",
    metadata,
    sa.Column("app_id", sa.String(32), sa.ForeignKey("apps.id"), primary_key=True),
    # "": every function of the app; else one function's, over the app's
    sa.Column("function", sa.String(128), primary_key=True),
    sa.Column("keep_alive", sa.Double),
    sa.Column("min_concurrency", sa.Integer),
    sa.Column("max_concurrency", sa.Integer),
    sa.Column("concurrency_buffer", sa.Integer),
    sa.Column("updated_at", sa.Double, nullable=False),
)
"""An app's mutable scaling beside its immutable revisions (``scaling.py``); a null column is
not overridden."""

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("app_id", sa.String(32), sa.ForeignKey("apps.id"), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("revision_id", sa.String(128), sa.ForeignKey("revisions.id"), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("app_id", sa.String(32), sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("alias", sa.String(63), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("revision_id", sa.String(128), nullable=False),
    sa.Column("previous_revision_id", sa.String(128)),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_alias_history_lookup", "app_id", "alias", "depth"),
)


@dataclass(frozen=True)
class Tenant:
    """A customer account; ``admin`` tenants may manage other tenants (gateway policy).
    ``max_inflight``: requests of this tenant running at once (0: no cap)."""

    id: str
    name: str
    tier: str
    created_at: float
    admin: bool = False
    max_inflight: int = 0


SCOPES = ("call", "deploy", "admin")
"""What an API key may do, each scope all that the ones before it may: ``call`` apps and
workflows (and read its own requests), ``deploy`` (manage its tenant's apps and workflows),
``admin`` (keys and tenants as well). A key made without a scope is ``admin``."""


def scope_allows(scope: str, needed: str) -> bool:
    """Whether a key of ``scope`` may do what ``needed`` names (one of ``SCOPES``)."""
    return scope in SCOPES and SCOPES.index(scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class ApiKey:
    """An API key's record (never its secret); ``expires_at``: epoch seconds, None: never."""

    id: str
    tenant_id: str
    label: str | None
    created_at: float
    scope: str = "admin"
    expires_at: float | None = None
    revoked_at: float | None = None
    rate_per_s: float = 0.0
    """Requests per second this key may send (0: no limit), ``burst`` at once."""
    burst: int = 0

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class Grant:
    """What an authenticated API key grants: its tenant, within the key's scope and expiry."""

    tenant: Tenant
    key: ApiKey


@dataclass(frozen=True)
class AppRecord:
    """An app; ``visibility`` is private, shared or public; ``max_inflight`` caps its running
    requests across the platform (0: no cap); ``caller_logs``: callers that are not its owner
    see its requests' logs and errors as the owner does (else only error types and messages)."""

    id: str
    owner: str
    owner_id: str
    name: str
    created_at: float
    visibility: str = "private"
    max_inflight: int = 0
    caller_logs: bool = False


@dataclass(frozen=True)
class Revision:
    id: str
    app_id: str
    owner: str
    app: str
    spec: dict[str, Any]
    code_hash: str
    env_key: str
    python: str
    lock: str
    created_at: float
    retired_at: float | None = None
    expires_at: float | None = None
    """Set on a dev revision (``klieg run``): it is retired when this passes unless renewed."""


@dataclass(frozen=True)
class AliasMove:
    """One row of an alias's history: ``action`` is ``"set"`` or ``"rollback"``."""

    alias: str
    action: str
    revision_id: str
    previous_revision_id: str | None
    created_at: float


APP_COLUMNS = (
    apps.c.id,
    tenants.c.name.label("owner"),
    apps.c.owner_id,
    apps.c.name,
    apps.c.created_at,
    apps.c.visibility,
    apps.c.max_inflight,
    apps.c.caller_logs,
)
APP_FROM = apps.join(tenants, apps.c.owner_id == tenants.c.id)
REVISION_COLUMNS = (
    revisions.c.id,
    revisions.c.app_id,
    tenants.c.name.label("owner"),
    apps.c.name.label("app"),
    revisions.c.spec,
    revisions.c.code_hash,
    revisions.c.env_key,
    revisions.c.python,
    revisions.c.lock,
    revisions.c.created_at,
    revisions.c.retired_at,
    revisions.c.expires_at,
)
REVISION_FROM = revisions.join(apps, revisions.c.app_id == apps.c.id).join(
    tenants, apps.c.owner_id == tenants.c.id
)


def tenant_row(row: sa.RowMapping) -> Tenant:
    return Tenant(**{column.name: row[column.name] for column in tenants.c})


def revision_row(row: sa.RowMapping) -> Revision:
    return Revision(**{**row, "spec": json.loads(row["spec"])})


def allowed(app: AppRecord, shared_with: Collection[str], tenant: Tenant) -> bool:
    """Whether ``tenant`` may call ``app``: its owner always; others per its visibility."""
    if tenant.id == app.owner_id or app.visibility == "public":
        return True
    return app.visibility == "shared" and tenant.name in shared_with


def add_missing_columns(conn: Connection) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for every column of ``metadata`` the database lacks."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            default = column.server_default
            clause = f" DEFAULT {default.arg}" if isinstance(default, sa.DefaultClause) else ""
            nullable = "" if column.nullable else " NOT NULL"
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{clause}{nullable}"
            )
