"""``klieg manifests check``: what a rendered Klieg deployment (``kubectl kustomize
infra/k8s/overlays/<name>``) must hold before it is applied, beyond the API schemas.

- every Deployment's and StatefulSet's containers have readiness and liveness probes;
- every image has a tag, and not ``latest``;
- a worker (``klieg worker --pool P``) has a preStop hook that drains it and a grace period of
  at least ``MIN_WORKER_GRACE_S``; a GPU pool's worker has an ``nvidia.com/gpu`` limit, a node
  selector and a toleration;
- the autoscaler's ``pools.yaml`` (ConfigMap ``klieg-config``) parses, names a worker
  Deployment for every pool, serving that pool, with as many GPUs as the pool's ``slots``;
- the gateway has a Service and a PodDisruptionBudget; a KEDA ScaledObject scales an existing
  Deployment on ``klieg_pool_slots_needed``.

A failed check is an ``InvalidRequestError`` naming the object and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from klieg.exceptions import InvalidRequestError
from klieg_platform.autoscaler import parse_plans

MIN_WORKER_GRACE_S = 300
GPU = "nvidia.com/gpu"


def _fail(doc: dict[str, Any], field: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"{doc['kind']}/{doc['metadata']['name']}: {field}: {why}")


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def load(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (empty documents skipped)."""
    return [d for d in yaml.safe_load_all(text) if d]


def check(docs: Iterable[dict[str, Any]]) -> None:
    objects = list(docs)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in objects:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    workers: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}
    for doc in [*by_kind.get("Deployment", {}).values(), *by_kind.get("StatefulSet", {}).values()]:
        for c in _pod(doc)["containers"]:
            where = f"spec.template.spec.containers[{c['name']}]"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    raise _fail(doc, f"{where}.{probe}", "every container needs one")
            image = str(c.get("image", ""))
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@" not in image and tag in ("", "latest"):
                raise _fail(doc, f"{where}.image", f"{image!r}: pin a tag other than latest")
            args = list(c.get("args") or [])
            if args[:1] == ["worker"]:
                pool = _flag(args, "--pool")
                if pool is None:
                    raise _fail(doc, f"{where}.args", "a worker names its pool (--pool)")
                workers[doc["metadata"]["name"]] = (doc, pool, c)
    for doc, pool, c in workers.values():
        where = "spec.template.spec.containers[worker]"
        pod = _pod(doc)
        if not ((c.get("lifecycle") or {}).get("preStop")):
            raise _fail(doc, f"{where}.lifecycle.preStop", "a worker drains before it stops")
        if int(pod.get("terminationGracePeriodSeconds", 30)) < MIN_WORKER_GRACE_S:
            why = f"at least {MIN_WORKER_GRACE_S} s to finish or hand back its leases"
            raise _fail(doc, "spec.template.spec.terminationGracePeriodSeconds", why)
        if pool.upper().startswith("GPU"):
            limits = (c.get("resources") or {}).get("limits") or {}
            if int(limits.get(GPU, 0) or 0) < 1:
                raise _fail(doc, f"{where}.resources.limits.{GPU}", "a GPU pool needs GPUs")
            if not pod.get("nodeSelector"):
                raise _fail(doc, "spec.template.spec.nodeSelector", "GPU nodes only")
            if not any(t.get("key") == GPU for t in pod.get("tolerations") or []):
                raise _fail(doc, "spec.template.spec.tolerations", f"tolerate the {GPU} taint")
    config = by_kind.get("ConfigMap", {}).get("klieg-config")
    if config is not None and "pools.yaml" in config.get("data", {}):
        try:
            plans = parse_plans(yaml.safe_load(config["data"]["pools.yaml"]))
        except InvalidRequestError as exc:
            raise _fail(config, "data.pools.yaml", str(exc)) from None
        for plan in plans.values():
            found = workers.get(plan.deployment)
            if found is None:
                raise _fail(config, f"data.pools.yaml: pools.{plan.name}.deployment",
                            f"no worker Deployment {plan.deployment!r}")  # fmt: skip
            doc, pool, c = found
            if pool != plan.serves:
                why = f"--pool {pool}, but pools.yaml has it serve {plan.serves}"
                raise _fail(doc, "spec.template.spec.containers[worker].args", why)
            gpus = int(((c.get("resources") or {}).get("limits") or {}).get(GPU, 0) or 0)
            if gpus and gpus != plan.slots:
                why = f"{gpus}, but pools.yaml gives pool {plan.name} {plan.slots} slots"
                field = f"spec.template.spec.containers[worker].resources.limits.{GPU}"
                raise _fail(doc, field, why)
    gateway = by_kind.get("Deployment", {}).get("klieg-gateway")
    if gateway is not None:
        labels = gateway["spec"]["template"]["metadata"]["labels"]
        for kind, path in (("Service", "spec.selector"),
                           ("PodDisruptionBudget", "spec.selector.matchLabels")):  # fmt: skip
            selecting = [d for d in by_kind.get(kind, {}).values()
                         if _at(d, path) and _at(d, path).items() <= labels.items()]  # fmt: skip
            if not selecting:
                raise _fail(gateway, "metadata.labels", f"no {kind} selects the gateways")
    for so in by_kind.get("ScaledObject", {}).values():
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in by_kind.get("Deployment", {}):
            raise _fail(so, "spec.scaleTargetRef.name", f"no Deployment {target!r}")
        queries = [t.get("metadata", {}).get("query", "") for t in so["spec"]["triggers"]]
        if not any("klieg_pool_slots_needed" in q for q in queries):
            raise _fail(so, "spec.triggers", "scale on klieg_pool_slots_needed")


def _at(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
