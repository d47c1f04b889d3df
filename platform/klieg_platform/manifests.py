"""``klieg manifests check``: what a rendered Klieg deployment (``kubectl kustomize
infra/k8s/overlays/<name>``) must hold before it is applied, beyond the API schemas.

- every Deployment's and StatefulSet's containers have readiness and liveness probes; a
  worker's and the autoscaler's liveness probe reads the ``alive`` file their loop touches in
  ``KLIEG_PROBE_DIR``, a mounted volume;
- every image (init containers' too) has a tag, and not ``latest``;
- a worker (``klieg worker --pool P``) has a preStop hook that drains it and a grace period of
  at least its drain (``KLIEG_DRAIN_S``) and ``local.STOP_MARGIN_S``; it keeps its env store
  on a volume (``images.ENV_STORE``), which every env image's init container seeds; a GPU
  pool's worker has an ``nvidia.com/gpu`` limit, a node selector and a toleration;
- the autoscaler's ``pools.yaml`` (ConfigMap ``klieg-config``) parses, names a worker
  Deployment for every pool, serving that pool, with as many GPUs as the pool's ``slots``;
- the gateway has a Service and a PodDisruptionBudget; a KEDA ScaledObject scales an existing
  Deployment on ``klieg_pool_slots_needed``;
- no Secret holds a placeholder (``replace-me``) unless it is labelled
  ``klieg.dev/environment: development`` (the dev overlay).

A failed check is an ``InvalidRequestError`` naming the object and the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from klieg.exceptions import InvalidRequestError
from klieg_platform.autoscaler import parse_plans
from klieg_platform.config import Settings
from klieg_platform.images import ENV_STORE
from klieg_platform.local import STOP_MARGIN_S

GPU = "nvidia.com/gpu"
PLACEHOLDER = "replace-me"
DEVELOPMENT = ("klieg.dev/environment", "development")


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
    configs = {n: d.get("data") or {} for n, d in by_kind.get("ConfigMap", {}).items()}
    workers: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}
    for doc in [*by_kind.get("Deployment", {}).values(), *by_kind.get("StatefulSet", {}).values()]:
        for c in _pod(doc).get("initContainers") or []:
            _pinned(doc, f"spec.template.spec.initContainers[{c['name']}]", c)
        for c in _pod(doc)["containers"]:
            where = f"spec.template.spec.containers[{c['name']}]"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    raise _fail(doc, f"{where}.{probe}", "every container needs one")
            _pinned(doc, where, c)
            args = list(c.get("args") or [])
            if args[:1] in (["worker"], ["autoscaler"]):
                _alive_probe(doc, where, c, _settings(doc, where, c, configs))
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
        drain_s = _settings(doc, "spec.template.spec.containers[worker]", c, configs).drain_s
        if int(pod.get("terminationGracePeriodSeconds", 30)) < drain_s + STOP_MARGIN_S:
            why = (f"at least its drain (KLIEG_DRAIN_S={drain_s:g}) and {STOP_MARGIN_S:g} s to "
                   "hand back what still runs")  # fmt: skip
            raise _fail(doc, "spec.template.spec.terminationGracePeriodSeconds", why)
        _env_store(doc, c)
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
    for secret in by_kind.get("Secret", {}).values():
        _no_placeholders(secret)


def _pinned(doc: dict[str, Any], where: str, c: dict[str, Any]) -> None:
    image = str(c.get("image", ""))
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@" not in image and tag in ("", "latest"):
        raise _fail(doc, f"{where}.image", f"{image!r}: pin a tag other than latest")


def _settings(
    doc: dict[str, Any], where: str, c: dict[str, Any], configs: Mapping[str, Mapping[str, str]]
) -> Settings:
    """The settings a container's process reads: its ConfigMaps' values, then its own ``env``
    (Secrets are not read: no setting checked here comes from one)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom") or []:
        name = str((source.get("configMapRef") or {}).get("name"))
        env.update({k: str(v) for k, v in configs.get(name, {}).items()})
    env.update({e["name"]: str(e["value"]) for e in c.get("env") or [] if "value" in e})
    try:
        return Settings.from_env(env)
    except ValueError as exc:
        raise _fail(doc, f"{where}.env", f"a setting it cannot read: {exc}") from None


def _mounts(c: dict[str, Any]) -> dict[str, str]:
    """mount path -> volume name"""
    return {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts") or []}


def _alive_probe(doc: dict[str, Any], where: str, c: dict[str, Any], settings: Settings) -> None:
    """A Klieg loop's liveness is the age of the ``alive`` file it touches (``touch_probe``)."""
    if settings.probe_dir is None:
        raise _fail(doc, f"{where}.envFrom", "KLIEG_PROBE_DIR: where its loop touches its probes")
    alive = f"{str(settings.probe_dir).rstrip('/')}/alive"
    command = " ".join(((c.get("livenessProbe") or {}).get("exec") or {}).get("command") or [])
    if alive not in command:
        raise _fail(doc, f"{where}.livenessProbe", f"read the age of {alive}, which its loop "
                    "touches (a check that always passes hides a stuck loop)")  # fmt: skip
    if str(settings.probe_dir).rstrip("/") not in _mounts(c):
        raise _fail(doc, f"{where}.volumeMounts", f"a volume at {settings.probe_dir}")


def _env_store(doc: dict[str, Any], c: dict[str, Any]) -> None:
    """The worker's env store is a volume; every env image's init container seeds that one."""
    volume = _mounts(c).get(ENV_STORE)
    if volume is None:
        raise _fail(doc, "spec.template.spec.containers[worker].volumeMounts",
                    f"a volume at {ENV_STORE} (the env store the env images seed)")  # fmt: skip
    for init in _pod(doc).get("initContainers") or []:
        command = list(init.get("command") or []) + list(init.get("args") or [])
        if "klieg_platform.packager" not in command or "seed" not in command:
            continue
        into = command[command.index("seed") + 1] if command[-1] != "seed" else ""
        if _mounts(init).get(into.rstrip("/")) != volume:
            raise _fail(doc, f"spec.template.spec.initContainers[{init['name']}].volumeMounts",
                        f"seeds {into or '?'}, which is not the worker's {volume!r} volume "
                        f"at {ENV_STORE}")  # fmt: skip


def _no_placeholders(secret: dict[str, Any]) -> None:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(DEVELOPMENT[0]) == DEVELOPMENT[1]:
        return
    values = dict(secret.get("stringData") or {})
    for name, raw in (secret.get("data") or {}).items():
        try:
            values.setdefault(name, base64.b64decode(str(raw)).decode(errors="replace"))
        except (binascii.Error, ValueError):
            continue
    for name, value in values.items():
        if PLACEHOLDER in str(value):
            field = "stringData" if name in (secret.get("stringData") or {}) else "data"
            raise _fail(secret, f"{field}.{name}", f"a placeholder ({PLACEHOLDER}): set the "
                        "real value from your secret store (placeholders are for a Secret "
                        f"labelled {DEVELOPMENT[0]}: {DEVELOPMENT[1]})")  # fmt: skip


def _at(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
