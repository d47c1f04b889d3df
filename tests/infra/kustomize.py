"""Rendering ``infra/k8s`` overlays where no ``kustomize``/``kubectl`` binary exists: the part
of kustomize its files use (resources, components, namespace, ``labels`` without selectors,
images, inline strategic-merge patches with ``$patch: delete``, lists merged by ``name``).
``test_k8s`` also renders with ``kubectl kustomize`` where one is installed and requires the
same objects."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = list(base)
        for item in patch:
            at = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if at is None:
                out.append(item)
            else:
                out[at] = _merge(out[at], item)
        return out
    return patch


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def render(folder: Path, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The objects ``folder``'s kustomization makes; a Component's patches apply to ``docs``,
    the objects of the kustomization that includes it."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = list(docs or [])
    for res in k.get("resources", []):
        path = (folder / res).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for comp in k.get("components", []):
        docs = render((folder / comp).resolve(), docs)
    for entry in k.get("patches", []):
        patch = yaml.safe_load(entry["patch"])
        at = [i for i, d in enumerate(docs) if _key(d) == _key(patch)]
        assert at, f"{folder}: a patch of {_key(patch)}, which is not there"
        if patch.get("$patch") == "delete":
            docs = [d for d in docs if _key(d) != _key(patch)]
        else:
            docs[at[0]] = _merge(docs[at[0]], patch)
    for doc in docs:
        if "namespace" in k and doc["kind"] not in CLUSTER_SCOPED:
            doc.setdefault("metadata", {})["namespace"] = k["namespace"]
        for rule in k.get("labels", []):
            assert not rule.get("includeSelectors") and not rule.get("includeTemplates"), rule
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(rule["pairs"])
    images = {i["name"]: i for i in k.get("images", [])}
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            name, _, tag = c["image"].partition(":")
            if name in images:
                rule = images[name]
                c["image"] = f"{rule.get('newName', name)}:{rule.get('newTag', tag)}"
    return copy.deepcopy(docs)
