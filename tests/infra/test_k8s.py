"""``infra/k8s``: each overlay rendered, every object valid against the Kubernetes API schemas of
two minor versions, and the deployment's invariants held (``manifests.check``); values that cannot
work are refused naming their field."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from klieg.exceptions import InvalidRequestError
from klieg_platform import manifests
from klieg_platform.gateway.metrics import NAMES
from tests.e2e.platform import REPO
from tests.infra.kustomize import render

K8S = REPO / "infra" / "k8s"
OVERLAYS = ("dev", "production", "production-keda")
VERSIONS = ("1.33.0", "1.36.0")
CRDS = {"ScaledObject"}


def rendered(overlay: str) -> list[dict[str, Any]]:
    return render(K8S / "overlays" / overlay)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_the_api(overlay: str, version: str) -> None:
    for doc in rendered(overlay):
        if doc["kind"] in CRDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_invariants_hold(overlay: str) -> None:
    docs = rendered(overlay)
    manifests.check(docs)
    images = [c["image"] for d in docs if "template" in d.get("spec", {})
              for c in d["spec"]["template"]["spec"]["containers"]]  # fmt: skip
    assert not any(i.endswith(":latest") or ":" not in i for i in images), images


def test_the_overlays_differ_where_they_should() -> None:
    dev, prod = rendered("dev"), rendered("production")
    assert find(dev, "StatefulSet", "klieg-redis") and find(dev, "StatefulSet", "klieg-postgres")
    assert not [d for d in prod if d["kind"] == "StatefulSet"], "managed stores in production"
    config = find(prod, "ConfigMap", "klieg-config")["data"]
    assert config["KLIEG_REDIS_URL"].startswith("rediss://") and "pools.yaml" in config
    assert find(prod, "Deployment", "klieg-gateway")["spec"]["replicas"] == 3
    gpu = find(prod, "Deployment", "klieg-worker-gpu-h100")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["image"] == "registry.example.com/klieg/klieg-platform-gpu:0.1.0"
    assert find(dev, "Deployment", "klieg-gateway")["spec"]["template"]["spec"]["containers"][0][
        "image"] == "klieg-platform:dev"  # fmt: skip
    assert all(d["metadata"].get("namespace") == "klieg" for d in prod if d["kind"] != "Namespace")


def test_keda_scales_on_the_metric_the_gateway_serves() -> None:
    docs = rendered("production-keda")
    assert "klieg_pool_slots_needed" in NAMES
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    plans = yaml.safe_load(find(docs, "ConfigMap", "klieg-config")["data"]["pools.yaml"])
    for pool, plan in plans["pools"].items():
        so = scaled[plan["deployment"]]
        assert so["spec"]["maxReplicaCount"] == plan["max_workers"]
        trigger = so["spec"]["triggers"][0]["metadata"]
        assert f'pool="{pool}"' in trigger["query"] and int(trigger["threshold"]) == plan["slots"]
    assert not [d for d in docs if d["metadata"]["name"] == "klieg-autoscaler"
                and d["kind"] == "Deployment"], "KEDA and the autoscaler both scaling"  # fmt: skip


def _broken(change: Any) -> list[dict[str, Any]]:
    docs = copy.deepcopy(rendered("production"))
    change(docs)
    return docs


def _gpu_worker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(docs, "Deployment", "klieg-worker-gpu-h100")["spec"]["template"]["spec"]
    worker: dict[str, Any] = pod["containers"][0]
    return worker


def _autoscaler(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(docs, "Deployment", "klieg-autoscaler")["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = find(docs, "ConfigMap", "klieg-config")["data"]
    return data


def test_placeholder_secrets_pass_only_where_labelled_development() -> None:
    dev = rendered("dev")
    secret = find(dev, "Secret", "klieg-keys")
    assert "replace-me" in secret["stringData"]["KLIEG_SIGNING_KEY"]
    manifests.check(dev)
    assert not [d for d in rendered("production") if d["kind"] == "Secret"]
    import base64

    encoded = copy.deepcopy(secret)
    del encoded["metadata"]["labels"], encoded["stringData"]
    encoded["data"] = {"KLIEG_S3_SECRET_KEY": base64.b64encode(b"replace-me").decode()}
    with pytest.raises(InvalidRequestError, match=r"^Secret/klieg-keys: data.KLIEG_S3_SECRET_KEY"):
        manifests.check([encoded])


def _pools(docs: list[dict[str, Any]], text: str) -> None:
    find(docs, "ConfigMap", "klieg-config")["data"]["pools.yaml"] = text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: _gpu_worker(d)["resources"]["limits"].pop("nvidia.com/gpu"),
         "Deployment/klieg-worker-gpu-h100: spec.template.spec.containers[worker].resources"
         ".limits.nvidia.com/gpu"),
        (lambda d: _pools(d, "pools:\n  GPU-H100: {max_workers: 0, slots: 8}\n"),
         "ConfigMap/klieg-config: data.pools.yaml: pools.GPU-H100.max_workers"),
        (lambda d: _gpu_worker(d).pop("readinessProbe"),
         "Deployment/klieg-worker-gpu-h100: spec.template.spec.containers[worker].readinessProbe"),
        (lambda d: _gpu_worker(d).update(image="registry.example.com/klieg/x:latest"),
         "Deployment/klieg-worker-gpu-h100: spec.template.spec.containers[worker].image"),
        (lambda d: _gpu_worker(d)["lifecycle"].pop("preStop"),
         "Deployment/klieg-worker-gpu-h100: spec.template.spec.containers[worker].lifecycle"),
        (lambda d: _pools(d, "pools:\n  GPU-H100: {max_workers: 4, slots: 4, deployment: "
                             "klieg-worker-gpu-h100}\n"),
         "Deployment/klieg-worker-gpu-h100: spec.template.spec.containers[worker].resources"),
        (lambda d: d.remove(find(d, "PodDisruptionBudget", "klieg-gateway")),
         "Deployment/klieg-gateway: metadata.labels: no PodDisruptionBudget"),
        (lambda d: _autoscaler(d)["livenessProbe"].update(
            exec={"command": ["python", "-c", "import os; os.kill(1, 0)"]}),
         "Deployment/klieg-autoscaler: spec.template.spec.containers[autoscaler].livenessProbe"),
        (lambda d: _config(d).update(KLIEG_DRAIN_S="880"),
         "Deployment/klieg-worker-cpu: spec.template.spec.terminationGracePeriodSeconds: at "
         "least its drain (KLIEG_DRAIN_S=880) and 30 s"),
        (lambda d: _gpu_worker(d).update(volumeMounts=[{"name": "probes",
                                                        "mountPath": "/run/klieg"}]),
         "Deployment/klieg-worker-gpu-h100: spec.template.spec.containers[worker].volumeMounts: "
         "a volume at /var/lib/klieg/envs"),
        (lambda d: d.append(yaml.safe_load((K8S / "base" / "secret.yaml").read_text())),
         "Secret/klieg-keys: stringData.KLIEG_SIGNING_KEY: a placeholder (replace-me)"),
    ],
)  # fmt: skip
def test_a_value_that_cannot_work_is_refused_naming_its_field(change: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        manifests.check(_broken(change))
    assert str(refused.value).startswith(field), str(refused.value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_renders_the_same_objects(overlay: str) -> None:
    kubectl = shutil.which("kubectl") or shutil.which("kustomize")
    if kubectl is None:
        pytest.skip(
            "no kubectl or kustomize here: the overlays are rendered by tests/infra/"
            "kustomize.py only (the subset of kustomize they use)"
        )
    verb = ["kustomize"] if kubectl.endswith("kubectl") else ["build"]
    out = subprocess.run([kubectl, *verb, str(K8S / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in manifests.load(out)}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered(overlay)}
    assert theirs.keys() == ours.keys()
    for key, doc in ours.items():
        assert theirs[key]["spec" if "spec" in doc else "metadata"] == doc.get(
            "spec", doc["metadata"]
        ), key
