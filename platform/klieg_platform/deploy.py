"""Deploy: (app spec, code archive) -> an immutable revision, and an alias moved to it.

Order matters for "no revision on failure": resolve the env, build it, store the code, and only
then write the revision and move the alias. The revision id is derived from its owner and its
content (app, code hash, env key, spec), so deploying the same thing twice yields the same
revision, and two tenants deploying the same app each get a revision of their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
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


def _check_archive(spec: AppSpec, data: bytes) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = set(tar.getnames())
    except (tarfile.TarError, OSError) as exc:
        raise DeployError(f"the code archive is not a valid tar.gz: {exc}") from exc
    if spec.entrypoint not in names:
        raise DeployError(f"the code archive has no {spec.entrypoint!r}")
    if not spec.functions:
        raise DeployError(f"app {spec.name!r} declares no functions")


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
) -> DeployResult:
    code_hash = archive.digest(code)
    _check_archive(spec, code)
    progress(f"code archive {code_hash[:12]} ({len(code)} bytes)")
    progress(
        f"resolving environment: python {spec.python}, {len(spec.requirements)} requirement(s)"
    )
    locked = packager.lock(EnvSpec(python=spec.python, requirements=spec.requirements), progress)
    env_built = not packager.exists(locked.key)
    packager.build(locked, progress)
    key = code_key(code_hash)
    if not store.exists(key):
        store.put(key, code)
    app = registry.ensure_app(tenant.id, spec.name)
    rid = revision_id(tenant.name, spec, code_hash, locked.key)
    revision, created = registry.put_revision(
        app, rid, spec.model_dump(mode="json"), code_hash, locked.key, locked.python, locked.lock
    )
    progress(f"revision {rid} {'created' if created else 'already existed (same content)'}")
    previous = registry.set_alias(app, alias, rid)
    progress(f"alias {alias} -> {rid}")
    return DeployResult(revision, created, env_built, alias, previous)
