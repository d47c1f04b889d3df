"""Where workflow documents live: a workflow ``w`` of tenant T is T's app ``workflows/w``; each
revision's spec is ``{"kind": "workflow", "document": ...}``, so aliases, rollback and
visibility are those of apps."""

from __future__ import annotations

import hashlib

from klieg.exceptions import NotFoundError
from klieg.workflow import WorkflowDoc, load_workflow
from klieg_platform.registry import WORKFLOW_PREFIX, AppRecord, Registry, Revision

WORKFLOW_KIND = "workflow"


def revision_id(owner: str, name: str, doc: WorkflowDoc) -> str:
    """``wf-`` + 24 hex digits derived from the owner, the name and the document's digest.

    Revision ids are unique across the registry, so the owner and name are part of the hash: two
    tenants (or two names) storing the same document get distinct revisions.
    """
    seed = f"{owner}/{name}\n{doc.digest()}".encode()
    return "wf-" + hashlib.sha256(seed).hexdigest()[:24]


def workflow_document(revision: Revision) -> WorkflowDoc:
    """The document a workflow revision stores; ``NotFoundError`` for an app revision."""
    spec = revision.spec
    if spec.get("kind") != WORKFLOW_KIND:
        raise NotFoundError(f"revision {revision.id} is not a workflow")
    return load_workflow(spec["document"])


def stored_workflow(
    registry: Registry, owner: str, name: str, ref: str = "latest"
) -> tuple[AppRecord, Revision, WorkflowDoc] | None:
    """The workflow ``owner/name`` at ``ref`` (an alias, else a revision id), or None.

    Blocking (call it in a thread). Access is not checked: use ``registry.can_call``.
    """
    if not name or "/" in name:
        return None
    app = registry.get_app(owner, WORKFLOW_PREFIX + name)
    revision = registry.revision_of(app, ref) if app is not None else None
    if app is None or revision is None:
        return None
    return app, revision, workflow_document(revision)
