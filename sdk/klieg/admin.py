"""Management API client: keys, deploys, apps, revisions, aliases. Used by the ``klieg`` CLI.

Example::

    from klieg.admin import AdminClient, load_app

    admin = AdminClient()                               # KLIEG_URL, KLIEG_KEY
    app, folder, entry = load_app("apps/echo/app.py")
    done = admin.deploy(app, folder, entry, alias="latest", progress=print)
    print(done["revision"])
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klieg import archive
from klieg.app import App
from klieg.client import Client, raise_for_error
from klieg.exceptions import DeployError, from_wire
from klieg.workflow import WorkflowDoc, load_workflow


def load_app(path: str | Path, name: str | None = None) -> tuple[App, Path, str]:
    """Import an app file and return (its App, its folder, the entrypoint file name)."""
    file = Path(path).resolve()
    if not file.is_file():
        raise DeployError(f"no such app file: {path}")
    module_name = file.stem
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise DeployError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise DeployError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(file.parent))
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if name is not None:
        apps = [a for a in apps if a.name == name]
    if len(apps) != 1:
        raise DeployError(f"{path} must define exactly one klieg.App (found {len(apps)})")
    return apps[0], file.parent, file.name


class AdminClient(Client):
    """Client for the management routes (same URL and key as :class:`klieg.Client`)."""

    def create_key(
        self,
        tenant: str | None = None,
        *,
        label: str | None = None,
        tier: str | None = None,
        scope: str | None = None,
        expires_in_s: float | None = None,
        rate_per_s: float | None = None,
        burst: int | None = None,
    ) -> dict[str, Any]:
        """A new key (``key`` is ``id:secret``, shown once); ``scope``: ``call``, ``deploy`` or
        ``admin`` (the default); ``expires_in_s``: it stops working that long from now;
        ``rate_per_s`` and ``burst``: its rate limit (429 with ``Retry-After`` beyond it)."""
        fields = {"tenant": tenant, "label": label, "tier": tier, "scope": scope,
                  "expires_in_s": expires_in_s, "rate_per_s": rate_per_s,
                  "burst": burst}  # fmt: skip
        body = {k: v for k, v in fields.items() if v is not None}
        out: dict[str, Any] = self._json(self.http.post("/keys", json=body))
        return out

    def list_keys(self) -> list[dict[str, Any]]:
        """The tenant's keys: id, label, scope, created, expiry, revoked, active."""
        keys: list[dict[str, Any]] = self._json(self.http.get("/keys"))["keys"]
        return keys

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker of the fleet with its runners (an admin tenant's admin key)."""
        found: list[dict[str, Any]] = self._json(self.http.get("/workers"))["workers"]
        return found

    def runners(self, app: str | None = None) -> list[dict[str, Any]]:
        """The runners of the tenant's apps (an admin tenant: all), or of ``app`` only: worker,
        app, revision, function, state, idle seconds, GPUs."""
        params = {"app": app} if app else {}
        found: list[dict[str, Any]] = self._json(self.http.get("/runners", params=params))[
            "runners"
        ]
        return found

    def pools(self) -> list[dict[str, Any]]:
        """Per pool: workers, slots, runners by state, queue depth per tier (admin)."""
        found: list[dict[str, Any]] = self._json(self.http.get("/pools"))["pools"]
        return found

    def set_secret(self, name: str, value: str) -> dict[str, Any]:
        """Store (or replace) the tenant's secret ``name``; the answer holds no value."""
        out: dict[str, Any] = self._json(self.http.put(f"/secrets/{name}", json={"value": value}))
        return out

    def list_secrets(self) -> list[dict[str, Any]]:
        """The tenant's secrets: name and when set (values never leave the platform)."""
        found: list[dict[str, Any]] = self._json(self.http.get("/secrets"))["secrets"]
        return found

    def delete_secret(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json(self.http.delete(f"/secrets/{name}"))
        return out

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json(self.http.delete(f"/keys/{key_id}"))
        return out

    def deploy(
        self,
        app: App,
        folder: Path,
        entrypoint: str,
        *,
        alias: str = "latest",
        progress: Callable[[str], None] | None = None,
        reset_scale: bool = False,
    ) -> dict[str, Any]:
        """Upload the app's folder and spec; stream build progress; return the ``done`` event
        (its ``warnings``: GPU functions whose pool no live worker serves). The app's scale
        overrides (``scale``) stay unless ``reset_scale``."""
        params = {"alias": alias, **({"reset_scale": "1"} if reset_scale else {})}
        return self._deploy(f"/apps/{app.name}/deploy", params, app, folder, entrypoint, progress)

    def dev_deploy(
        self,
        app: App,
        folder: Path,
        entrypoint: str,
        *,
        session: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Deploy the app's folder as the dev revision of a ``klieg run`` session (a new
        session when ``session`` is None): no alias of the app moves; it is served at
        ``{owner}/{app}@{session}`` and expires unless ``dev_renew`` keeps it. The ``done``
        event; its ``alias`` is the session."""
        params = {"session": session} if session else {}
        return self._deploy(f"/apps/{app.name}/dev", params, app, folder, entrypoint, progress)

    def dev_renew(self, app: str, session: str) -> dict[str, Any]:
        """Keep a dev session's revision alive (``NotFoundError`` once it has ended)."""
        out: dict[str, Any] = self._json(self.http.put(f"/apps/{app}/dev/{session}"))
        return out

    def dev_end(self, app: str, session: str) -> dict[str, Any]:
        """End a dev session: its alias and revision go (and the app, if the session made it)."""
        out: dict[str, Any] = self._json(self.http.delete(f"/apps/{app}/dev/{session}"))
        return out

    def _deploy(
        self,
        path: str,
        params: dict[str, str],
        app: App,
        folder: Path,
        entrypoint: str,
        progress: Callable[[str], None] | None,
    ) -> dict[str, Any]:
        spec = app.spec(entrypoint)
        code = archive.pack(folder)
        body = {"spec": spec.model_dump(mode="json"), "archive": base64.b64encode(code).decode()}
        with self.http.stream("POST", path, params=params, json=body, timeout=None) as r:
            if not r.is_success:
                r.read()
                raise_for_error(r)
            for line in r.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["event"] == "progress" and progress is not None:
                    progress(event["message"])
                elif event["event"] == "error":
                    raise from_wire(event, 400, DeployError)
                elif event["event"] == "done":
                    done: dict[str, Any] = event
                    return done
        raise DeployError("the deploy stream ended without a result")

    def apps(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._json(self.http.get("/apps"))
        return out

    def revisions(self, app: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._json(self.http.get(f"/apps/{app}/revisions"))
        return out

    def delete_app(self, app: str) -> dict[str, Any]:
        """Delete an app: its aliases go and new requests get 404 at once; requests already
        queued or running finish; then its revisions, and their code and envs where no other
        revision uses them, are collected."""
        out: dict[str, Any] = self._json(self.http.delete(f"/apps/{app}"))
        return out

    def prune_revisions(self, app: str, keep: int | None = None) -> dict[str, Any]:
        """Retire the app's revisions that no alias points to and that are not among its
        ``keep`` newest (the gateway's default when None); they, their code and unused envs
        are collected once no request needs them. ``{"retired": [...], "kept": [...]}``."""
        params = {} if keep is None else {"keep": str(keep)}
        out: dict[str, Any] = self._json(self.http.post(f"/apps/{app}/prune", params=params))
        return out

    def set_alias(self, app: str, alias: str, revision: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json(
            self.http.put(f"/apps/{app}/aliases/{alias}", json={"revision": revision})
        )
        return out

    def rollback(self, app: str, alias: str = "latest") -> dict[str, Any]:
        out: dict[str, Any] = self._json(
            self.http.post(f"/apps/{app}/rollback", params={"alias": alias})
        )
        return out

    def share(self, app: str, visibility: str, tenants: list[str] | None = None) -> dict[str, Any]:
        """Make an app private, public, or shared with the named tenants."""
        body = {"visibility": visibility, "tenants": tenants or []}
        out: dict[str, Any] = self._json(self.http.put(f"/apps/{app}/visibility", json=body))
        return out

    def set_caller_logs(self, app: str, on: bool) -> dict[str, Any]:
        """Let the app's callers (tenants other than its owner) see its requests' logs and full
        errors, or (``on=False``, the default of every app) only error types and messages.

        Example::

            AdminClient().set_caller_logs("echo", True)   # {"app": "echo", "caller_logs": True}
        """
        body = {"caller_logs": on}
        out: dict[str, Any] = self._json(self.http.put(f"/apps/{app}/visibility", json=body))
        return out

    def limit_app(self, app: str, max_inflight: int) -> dict[str, Any]:
        """Cap an app's running requests across the platform (0: no cap)."""
        out: dict[str, Any] = self._json(
            self.http.put(f"/apps/{app}/limits", json={"max_inflight": max_inflight})
        )
        return out

    def scale(
        self,
        app: str,
        *,
        function: str | None = None,
        reset: bool = False,
        **settings: float | int | None,
    ) -> dict[str, Any]:
        """Change a live app's scaling without a redeploy: ``keep_alive``,
        ``min_concurrency``, ``max_concurrency``, ``concurrency_buffer`` for the whole app or
        one ``function`` (None stops overriding a setting); ``reset`` drops the overrides.
        With neither, the scaling as it is. The answer: the overrides and each function's
        effective scaling.

        Example::

            AdminClient().scale("echo", min_concurrency=1, concurrency_buffer=2)
        """
        if not reset and not settings:
            out: dict[str, Any] = self._json(self.http.get(f"/apps/{app}/scale"))
            return out
        body: dict[str, Any] = {**settings, **({"reset": True} if reset else {})}
        if function is not None:
            body["function"] = function
        out = self._json(self.http.put(f"/apps/{app}/scale", json=body))
        return out

    def set_tenant(
        self, name: str, *, tier: str | None = None, max_inflight: int | None = None
    ) -> dict[str, Any]:
        """Change a tenant's tier or in-flight cap (admin tenants only)."""
        body: dict[str, Any] = {}
        if tier is not None:
            body["tier"] = tier
        if max_inflight is not None:
            body["max_inflight"] = max_inflight
        out: dict[str, Any] = self._json(self.http.put(f"/tenants/{name}", json=body))
        return out

    def put_workflow(
        self,
        name: str,
        document: dict[str, Any] | str | Path | WorkflowDoc,
        alias: str = "latest",
    ) -> dict[str, Any]:
        """Store a workflow revision (validated here first) and point ``alias`` at it.

        ``document``: a dict, YAML/JSON text, a file path or a built document. Storing the same
        document again returns the same revision with ``created: false``.

        Example::

            AdminClient().put_workflow("digits-movie", Path("movie.yaml"))["revision"]
        """
        body = {"document": load_workflow(document).to_dict(), "alias": alias}
        out: dict[str, Any] = self._json(self.http.put(f"/workflows/{name}", json=body))
        return out

    def list_workflows(self) -> list[dict[str, Any]]:
        """The caller's workflows: name, aliases, revision count, visibility."""
        out: list[dict[str, Any]] = self._json(self.http.get("/workflows"))["workflows"]
        return out

    def get_workflow(self, name: str) -> dict[str, Any]:
        """A workflow's aliases and revisions (newest first, each with its document)."""
        out: dict[str, Any] = self._json(self.http.get(f"/workflows/{name}"))
        return out

    def set_workflow_alias(self, name: str, alias: str, revision: str) -> dict[str, Any]:
        """Point a workflow's alias at a revision id (or at another alias's revision)."""
        out: dict[str, Any] = self._json(
            self.http.put(f"/workflows/{name}/aliases/{alias}", json={"revision": revision})
        )
        return out

    def rollback_workflow(self, name: str, alias: str = "latest") -> dict[str, Any]:
        """Move a workflow's alias back to its previous revision."""
        out: dict[str, Any] = self._json(
            self.http.post(f"/workflows/{name}/rollback", json={"alias": alias})
        )
        return out

    def share_workflow(
        self, name: str, visibility: str, tenants: list[str] | None = None
    ) -> dict[str, Any]:
        """Make a workflow private, public, or shared with the named tenants."""
        body = {"visibility": visibility, "tenants": tenants or []}
        out: dict[str, Any] = self._json(self.http.put(f"/workflows/{name}/visibility", json=body))
        return out
