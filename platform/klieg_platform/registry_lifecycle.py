"""The registry's lifecycle statements: scale overrides, deleting apps, retiring revisions
(pruned, their app deleted, a dev revision expired) and dropping them once nothing needs them.
``Registry`` inherits them; with ``registry.py`` this is the only module that runs SQL.

A retired revision is one no new request resolves to (``Registry.revision_of``); workers still
read it (``get_revision``) for the requests already queued or running. ``drop_revisions``
deletes retired rows and says which code archives and envs no remaining revision uses: the
caller (``collector.py``) deletes those.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from klieg.exceptions import InvalidRequestError
from klieg_platform.registry_tables import (
    REVISION_COLUMNS,
    REVISION_FROM,
    AppRecord,
    Revision,
    alias_history,
    aliases,
    app_shares,
    apps,
    revision_row,
    revisions,
    scale_overrides,
    tenants,
)
from klieg_platform.scaling import SETTINGS, ScaleOverride

DELETED_MARK = "~"
"""A deleted app's name is ``{name}~{id}``: the name is free again at once (app names have no
``~``)."""


def live_name(name: str) -> str:
    """The name an app had before it was deleted (``name`` itself for a live app)."""
    return name.split(DELETED_MARK, 1)[0]


@dataclass(frozen=True)
class Dropped:
    """What ``drop_revisions`` deleted, and what no remaining revision uses any more."""

    revisions: list[str]
    code_hashes: set[str]
    env_keys: set[str]
    apps: int


class Lifecycle:
    if TYPE_CHECKING:

        def _read(self) -> AbstractContextManager[Connection]: ...

        def _write(self) -> AbstractContextManager[Connection]: ...

        def _lock_app(self, conn: Connection, app: AppRecord) -> None: ...

    # scale overrides: an app's mutable scaling beside its immutable revisions

    def scale_overrides(self, app: AppRecord | None = None) -> dict[str, list[ScaleOverride]]:
        """App id -> its overrides (the app's first, then by function); of ``app`` only, or of
        every app."""
        with self._read() as conn:
            return self._overrides(conn, None if app is None else {app.id})

    def set_scaling(
        self, app: AppRecord, function: str, values: dict[str, float | int | None]
    ) -> list[ScaleOverride]:
        """Override (a value) or stop overriding (None) settings of ``scaling.SETTINGS`` for
        the app (``function`` ``""``) or one of its functions; the others stay as they are.
        The app's overrides as they are now."""
        unknown = set(values) - set(SETTINGS)
        if unknown:
            raise InvalidRequestError(f"unknown scaling settings {sorted(unknown)}")
        o = scale_overrides.c
        where = (o.app_id == app.id) & (o.function == function)
        with self._write() as conn:
            self._lock_app(conn, app)
            row = conn.execute(sa.select(scale_overrides).where(where)).first()
            merged = {name: row._mapping[name] for name in SETTINGS} if row else {}
            merged.update(values)
            conn.execute(sa.delete(scale_overrides).where(where))
            if any(value is not None for value in merged.values()):
                conn.execute(
                    sa.insert(scale_overrides).values(
                        app_id=app.id, function=function, updated_at=time.time(), **merged
                    )
                )
            return self._overrides(conn, {app.id}).get(app.id, [])

    def reset_scaling(self, app: AppRecord, function: str | None = None) -> int:
        """Drop the app's overrides (``function``: that function's only); how many went."""
        o = scale_overrides.c
        query = sa.delete(scale_overrides).where(o.app_id == app.id)
        if function is not None:
            query = query.where(o.function == function)
        with self._write() as conn:
            return int(conn.execute(query).rowcount)

    def _overrides(
        self, conn: Connection, app_ids: set[str] | None
    ) -> dict[str, list[ScaleOverride]]:
        o = scale_overrides.c
        query = sa.select(scale_overrides).order_by(o.app_id, o.function)
        if app_ids is not None:
            if not app_ids:
                return {}
            query = query.where(o.app_id.in_(sorted(app_ids)))
        out: dict[str, list[ScaleOverride]] = {}
        for row in conn.execute(query):
            values = {name: row._mapping[name] for name in (*SETTINGS, "function", "updated_at")}
            out.setdefault(row.app_id, []).append(ScaleOverride(**values))
        return out

    # deleting, retiring and dropping

    def delete_app(self, app: AppRecord) -> list[str]:
        """Delete an app: its aliases go, its name is freed and every revision of it is
        retired (its requests already queued or running finish); the ids retired."""
        now = time.time()
        r = revisions.c
        with self._write() as conn:
            self._lock_app(conn, app)
            retired = [
                str(rid)
                for rid in conn.execute(
                    sa.select(r.id).where(r.app_id == app.id, r.retired_at.is_(None))
                ).scalars()
            ]
            conn.execute(sa.delete(aliases).where(aliases.c.app_id == app.id))
            conn.execute(
                sa.update(apps)
                .where(apps.c.id == app.id)
                .values(deleted_at=now, name=f"{app.name}{DELETED_MARK}{app.id}"[:63])
            )
            conn.execute(
                sa.update(revisions)
                .where(r.app_id == app.id, r.retired_at.is_(None))
                .values(retired_at=now)
            )
        return retired

    def prune_revisions(self, app: AppRecord, keep: int) -> list[str]:
        """Retire the app's revisions that no alias points to and that are not among its
        ``keep`` newest (dev revisions still being renewed are left alone); the ids retired,
        newest first."""
        if keep < 0:
            raise InvalidRequestError("keep must be >= 0")
        r = revisions.c
        now = time.time()
        with self._write() as conn:
            self._lock_app(conn, app)
            live = conn.execute(
                sa.select(r.id, r.expires_at)
                .where(r.app_id == app.id, r.retired_at.is_(None))
                .order_by(r.seq.desc())
            ).all()
            aliased = set(
                conn.execute(
                    sa.select(aliases.c.revision_id).where(aliases.c.app_id == app.id)
                ).scalars()
            )
            retire = [
                str(rid)
                for rid, expires in live[keep:]
                if rid not in aliased and (expires is None or expires <= now)
            ]
            if retire:
                conn.execute(sa.update(revisions).where(r.id.in_(retire)).values(retired_at=now))
        return retire

    def renew_revision(self, revision_id: str, expires_at: float) -> bool:
        """Push a dev revision's expiry to ``expires_at``; False when it is retired or gone."""
        r = revisions.c
        with self._write() as conn:
            done = conn.execute(
                sa.update(revisions)
                .where(r.id == revision_id, r.retired_at.is_(None), r.expires_at.isnot(None))
                .values(expires_at=expires_at)
            )
            return int(done.rowcount) > 0

    def retire(self, revision_ids: list[str]) -> int:
        """Retire these revisions (a dev revision its session removes); how many were live."""
        if not revision_ids:
            return 0
        r = revisions.c
        with self._write() as conn:
            done = conn.execute(
                sa.update(revisions)
                .where(r.id.in_(revision_ids), r.retired_at.is_(None))
                .values(retired_at=time.time())
            )
            return int(done.rowcount)

    def retire_expired(self, now: float | None = None) -> list[str]:
        """Retire the dev revisions whose expiry passed (their session ended without saying
        so), as ``end_session`` would have: their session aliases go, and an app left with no
        live revision is deleted; the "owner/app" of each app touched (its routes changed)."""
        r = revisions.c
        at = time.time() if now is None else now
        query = (
            sa.select(r.id, r.app_id, tenants.c.name.label("owner"), apps.c.name)
            .select_from(REVISION_FROM)
            .where(r.expires_at < at, r.retired_at.is_(None))
        )
        with self._write() as conn:
            expired = conn.execute(query).all()
            if not expired:
                return []
            ids = [str(row.id) for row in expired]
            conn.execute(sa.delete(aliases).where(aliases.c.revision_id.in_(ids)))
            conn.execute(sa.update(revisions).where(r.id.in_(ids)).values(retired_at=at))
            for app_id in {str(row.app_id) for row in expired}:
                self._delete_if_empty(conn, app_id, at)
        return sorted({f"{row.owner}/{live_name(row.name)}" for row in expired})

    def end_session(self, app: AppRecord, alias: str) -> list[str]:
        """End a dev session (``klieg run``): its alias goes, its dev revisions are retired,
        and the app too when it has no live revision left (the session made it); the
        revisions retired."""
        r = revisions.c
        now = time.time()
        with self._write() as conn:
            self._lock_app(conn, app)
            where = (aliases.c.app_id == app.id) & (aliases.c.name == alias)
            current = conn.execute(sa.select(aliases.c.revision_id).where(where)).scalar()
            conn.execute(sa.delete(aliases).where(where))
            retired = []
            if current is not None:
                live_dev = (r.id == current) & r.expires_at.isnot(None) & r.retired_at.is_(None)
                if conn.execute(
                    sa.update(revisions).where(live_dev).values(retired_at=now)
                ).rowcount:
                    retired.append(str(current))
            self._delete_if_empty(conn, app.id, now)
        return retired

    def _delete_if_empty(self, conn: Connection, app_id: str, now: float) -> None:
        """Delete the app (as ``delete_app``) when it has neither a live revision nor an
        alias."""
        r = revisions.c
        live = sa.select(r.id).where(r.app_id == app_id, r.retired_at.is_(None))
        aliased = sa.select(aliases.c.name).where(aliases.c.app_id == app_id)
        if conn.execute(live.limit(1)).first() or conn.execute(aliased.limit(1)).first():
            return
        name = conn.execute(sa.select(apps.c.name).where(apps.c.id == app_id)).scalar()
        if name is None or DELETED_MARK in name:
            return
        conn.execute(
            sa.update(apps)
            .where(apps.c.id == app_id)
            .values(deleted_at=now, name=f"{name}{DELETED_MARK}{app_id}"[:63])
        )

    def retired_revisions(self) -> list[Revision]:
        """Every retired revision still stored (``app``: the name its app had when live)."""
        query = sa.select(*REVISION_COLUMNS).select_from(REVISION_FROM)
        query = query.where(revisions.c.retired_at.isnot(None))
        with self._read() as conn:
            found = [revision_row(row._mapping) for row in conn.execute(query)]
        return [_with_live_name(rev) for rev in found]

    def drop_revisions(self, revision_ids: list[str]) -> Dropped:
        """Delete these revisions where still retired (one brought back meanwhile stays),
        then every deleted app left without revisions; what went, with the code hashes and
        env keys that no remaining revision uses."""
        r = revisions.c
        with self._write() as conn:
            aliased = sa.select(aliases.c.revision_id).where(aliases.c.revision_id == r.id)
            rows = conn.execute(
                sa.select(r.id, r.code_hash, r.env_key).where(
                    r.id.in_(revision_ids), r.retired_at.isnot(None), ~sa.exists(aliased)
                )
            ).all()
            ids = [str(row.id) for row in rows]
            if ids:
                conn.execute(sa.delete(revisions).where(r.id.in_(ids)))
            codes = {str(row.code_hash) for row in rows if row.code_hash}
            envs = {str(row.env_key) for row in rows if row.env_key}
            codes -= _used(conn, r.code_hash, codes)
            envs -= _used(conn, r.env_key, envs)
            gone = list(
                conn.execute(
                    sa.select(apps.c.id).where(
                        apps.c.deleted_at.isnot(None),
                        ~sa.exists(sa.select(r.id).where(r.app_id == apps.c.id)),
                    )
                ).scalars()
            )
            for table in (alias_history, aliases, app_shares, scale_overrides):
                conn.execute(sa.delete(table).where(table.c.app_id.in_(gone)))
            conn.execute(sa.delete(apps).where(apps.c.id.in_(gone)))
        return Dropped(ids, codes, envs, len(gone))


def _with_live_name(rev: Revision) -> Revision:
    return replace(rev, app=live_name(rev.app))


def _used(conn: Connection, column: sa.Column[str], values: set[str]) -> set[str]:
    """Those of ``values`` some remaining revision has in ``column``."""
    if not values:
        return set()
    return {str(v) for v in conn.execute(sa.select(column).where(column.in_(values))).scalars()}
