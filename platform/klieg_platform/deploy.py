"""Deploy: (app spec, code archive) -> an immutable revision, and an alias moved to it.

Order matters for "no revision on failure": resolve the env, build it, store the code, and only
then write the revision and move the alias. The revision id is derived from its owner and its
content (app, code hash, env key, spec), so deploying the same thing twice yields the same
revision, and two tenants deploying the same app each get a revision of their own.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import sys
import tarfile
import time
from dataclasses import dataclass

from klieg import archive
from klieg.exceptions import DeployError
from klieg.types import AppSpec
from klieg_platform.packager import EnvSpec, Packager, Progress
from klieg_platform.registry import Registry, Revision, Tenant
from klieg_platform.storage import BlobStore, code_key


@dataclass(frozen=True)
class DeployResult:
    revision: Revision
    created: bool
    env_built: bool
    alias: str
    previous: str | None


def revision_id(owner: str, spec: AppSpec, code_hash: str, env_key: str) -> str:
    """``rev-`` + 20 hex digits. Revision ids are unique across the registry, so the owner is
    part of the hash (as for workflows, ``workflows/store.py``)."""
    doc = {
        "owner": owner,
        "app": spec.name,
        "code": code_hash,
        "env": env_key,
        "spec": spec.model_dump(mode="json"),
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return "rev-" + digest[:20]


def _sources(spec: AppSpec, data: bytes) -> dict[str, bytes]:
    """The archive's Python files by path, once it is checked: a tar.gz holding the entrypoint,
    for an app with functions."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = set(tar.getnames())
            sources = {}
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(".py"):
                    read = tar.extractfile(member)
                    sources[member.name] = read.read() if read else b""
    except (tarfile.TarError, OSError) as exc:
        raise DeployError(f"the code archive is not a valid tar.gz: {exc}") from exc
    if spec.entrypoint not in names:
        raise DeployError(f"the code archive has no {spec.entrypoint!r}")
    if not spec.functions:
        raise DeployError(f"app {spec.name!r} declares no functions")
    return sources


NOT_PRELOADED = frozenset({"klieg", "__future__", *sys.stdlib_module_names})
"""Modules a default preload leaves out: the runtime (always loaded) and the standard library."""


def default_preload(entrypoint: str, sources: dict[str, bytes]) -> tuple[str, ...]:
    """The modules an app's zygote preloads unless it says (``App(preload=...)``): those its
    entrypoint imports, at any depth (``setup()``'s too), and those the app's own modules it
    imports import in turn, less the app's own, the runtime and the standard library. Imports
    under ``if TYPE_CHECKING:`` never run and are left out; a file that does not parse adds
    nothing."""
    local = {path[: -len("/__init__.py")] if path.endswith("/__init__.py") else path[:-3]
             for path in sources}  # fmt: skip
    local = {path.replace("/", ".") for path in local}
    found: set[str] = set()
    seen: set[str] = set()
    todo = [entrypoint]
    while todo:
        path = todo.pop()
        if path in seen or path not in sources:
            continue
        seen.add(path)
        try:
            tree = ast.parse(sources[path])
        except (SyntaxError, ValueError):
            continue
        for name in _imports(tree):
            if name.split(".")[0] in local or name in local:
                module = name.replace(".", "/")
                todo.extend((f"{module}.py", f"{module}/__init__.py"))
            elif name.split(".")[0] not in NOT_PRELOADED:
                found.add(name)
    return tuple(sorted(found))


def _imports(tree: ast.AST) -> list[str]:
    """The absolute module names ``tree`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    out: list[str] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
        todo.extend(ast.iter_child_nodes(node))
    return out


def deploy(
    *,
    registry: Registry,
    packager: Packager,
    store: BlobStore,
    tenant: Tenant,
    spec: AppSpec,
    code: bytes,
    alias: str,
    progress: Progress,
    reset_scale: bool = False,
    dev_ttl_s: float | None = None,
) -> DeployResult:
    """Store ``code`` and a revision of ``spec`` and point ``alias`` at it. The app's scale
    overrides (``klieg apps scale``) outlive the deploy unless ``reset_scale``.

    ``dev_ttl_s``: a dev revision of a ``klieg run`` session, ``alias`` being the session's:
    its id is the session's own (the same content deployed for real is another revision), it
    expires that long from now unless renewed, the lock of an unchanged spec is reused without
    resolving again, and the session's previous revision is retired (its requests already
    queued or running finish)."""
    dev = dev_ttl_s is not None
    code_hash = archive.digest(code)
    sources = _sources(spec, code)
    if spec.preload is None:
        spec = spec.model_copy(update={"preload": default_preload(spec.entrypoint, sources)})
    progress(f"code archive {code_hash[:12]} ({len(code)} bytes)")
    if spec.preload:
        progress(f"preloaded in its zygote: {', '.join(spec.preload)}")
    progress(
        f"resolving environment: python {spec.python}, {len(spec.requirements)} requirement(s)"
    )
    wanted = EnvSpec(python=spec.python, requirements=spec.requirements)
    locked = packager.lock(wanted, progress, cached=dev)
    env_built = not packager.exists(locked.key)
    packager.build(locked, progress)
    key = code_key(code_hash)
    if not store.exists(key):
        store.put(key, code)
    app = registry.ensure_app(tenant.id, spec.name)
    rid = revision_id(tenant.name, spec, code_hash, locked.key)
    if dev:
        rid = dev_revision_id(rid, alias)
    expires_at = time.time() + dev_ttl_s if dev_ttl_s is not None else None
    revision, created = registry.put_revision(
        app, rid, spec.model_dump(mode="json"), code_hash, locked.key, locked.python,
        locked.lock, expires_at=expires_at,
    )  # fmt: skip
    progress(f"revision {rid} {'created' if created else 'already existed (same content)'}")
    # the code or env may have been collected with a retired revision that used them between
    # the steps above and the revision's write: from the write on, nothing collects them
    if not store.exists(key):
        store.put(key, code)
    packager.build(locked)
    previous = registry.set_alias(app, alias, rid)
    progress(f"alias {alias} -> {rid}")
    if dev and previous not in (None, rid):
        registry.retire([str(previous)])
    if reset_scale and registry.reset_scaling(app):
        progress("scale overrides reset: the revision's own scaling applies")
    return DeployResult(revision, created, env_built, alias, previous)


def dev_revision_id(revision: str, session: str) -> str:
    """``dev-`` + 20 hex digits: a dev session's revision of the content ``revision`` names."""
    digest = hashlib.sha256(f"{revision}/{session}".encode()).hexdigest()
    return "dev-" + digest[:20]
