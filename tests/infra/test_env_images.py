"""The env images in use (``klieg images build --manifests``): the kustomize Component added to
the production overlay renders (here and with ``kubectl kustomize`` where installed) into objects
valid for the API, each pool's worker seeding its env store volume from its pool's env images
before it starts, and ``klieg manifests check`` holds; the compose file added to
``infra/compose.yaml`` gives each worker one-shot services seeding the volume it keeps its envs
on, and makes it wait for them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from klieg_platform import images, manifests
from tests.infra.kustomize import render
from tests.infra.test_compose import COMPOSE
from tests.infra.test_k8s import K8S, VERSIONS, find

REGISTRY = "registry.example.com/klieg"


def revision(key: str, *fns: tuple[str, bool]) -> Any:
    """An aliased revision on env ``key`` with functions (name, on a GPU)."""
    functions = [{"name": n, "kind": "function", "module": "app", "qualname": n,
                  "gpu": "H100" if gpu else None, "num_gpus": 1 if gpu else 0}
                 for n, gpu in fns]  # fmt: skip
    spec = {"name": "a", "functions": functions}
    return SimpleNamespace(env_key=key, python="3.11", lock="six==1.16.0\n", spec=spec)


def built() -> list[images.Built]:
    """What ``build_all`` returns for env a (a CPU and a GPU function) and env b (CPU only)."""
    revs = [revision("a" * 64, ("thumb", False), ("gen", True)), revision("b" * 64, ("ocr", False))]
    found = images.env_images(revs)
    assert [(e.key[0], e.gpu, e.pools) for e in found] == [
        ("a", False, ("CPU",)), ("a", True, ("GPU-H100",)), ("b", False, ("CPU",))]  # fmt: skip
    return [images.Built(f"{REGISTRY}/{e.repository}:{e.key[:32]}", True, e) for e in found]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("env-images")
    paths = images.write_manifests(folder, built())
    assert paths == [folder / "k8s" / "kustomization.yaml", folder / "compose.yaml"]
    overlay = folder / "overlay"
    overlay.mkdir()
    production = os.path.relpath(K8S / "overlays" / "production", overlay)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [production], "components": ["../k8s"],
    }))  # fmt: skip
    return folder


def test_the_component_renders_valid_objects_that_pass_the_checks(written: Path) -> None:
    docs = render(written / "overlay")
    for doc in docs:
        if doc["kind"] != "ScaledObject":
            for version in VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    manifests.check(docs)
    names = {}
    for deployment in ("klieg-worker-cpu", "klieg-worker-gpu-h100"):
        pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
        worker = pod["containers"][0]
        store = next(m["name"] for m in worker["volumeMounts"]
                     if m["mountPath"] == images.ENV_STORE)  # fmt: skip
        for init in pod["initContainers"]:
            assert init["command"] == images.SEED
            assert init["volumeMounts"] == [{"name": store, "mountPath": images.SEED_AT}]
        names[deployment] = [i["image"] for i in pod["initContainers"]]
    cpu, gpu = f"{REGISTRY}/klieg-env", f"{REGISTRY}/klieg-env-gpu"
    assert names == {
        "klieg-worker-cpu": [f"{cpu}:{'a' * 32}", f"{cpu}:{'b' * 32}"],
        "klieg-worker-gpu-h100": [f"{gpu}:{'a' * 32}"],
    }


def test_kubectl_renders_the_component_the_same(written: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: rendered by tests/infra/kustomize.py only")
    out = subprocess.run([kubectl, "kustomize", str(written / "overlay")], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in manifests.load(out)}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in render(written / "overlay")}
    assert theirs.keys() == ours.keys()
    for key in (("Deployment", "klieg-worker-cpu"), ("Deployment", "klieg-worker-gpu-h100")):
        assert theirs[key]["spec"] == ours[key]["spec"], key
    manifests.check(list(theirs.values()))


def test_an_init_container_seeding_another_volume_is_refused(written: Path) -> None:
    from klieg.exceptions import InvalidRequestError

    docs = render(written / "overlay")
    pod = find(docs, "Deployment", "klieg-worker-cpu")["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "elsewhere", "emptyDir": {}})
    pod["initContainers"][0]["volumeMounts"][0]["name"] = "elsewhere"
    field = r"spec.template.spec.initContainers\[env-aaaaaaaaaaaa\].volumeMounts"
    with pytest.raises(
        InvalidRequestError, match=rf"^Deployment/klieg-worker-cpu: {field}: seeds "
    ):
        manifests.check(docs)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of a second file into the first (mappings key by key)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = merged(base[key], value)
        else:
            out[key] = value
    return out


def test_the_compose_file_seeds_each_workers_volume_first(written: Path) -> None:
    base = yaml.safe_load(COMPOSE.read_text())
    fleet = merged(base, yaml.safe_load((written / "compose.yaml").read_text()))
    services = fleet["services"]
    seeders = {n: s for n, s in services.items() if n.startswith("env-")}
    assert sorted(seeders) == ["env-aaaaaaaaaaaa-envs", "env-aaaaaaaaaaaa-gpu-envs-gpu",
                               "env-bbbbbbbbbbbb-envs"]  # fmt: skip
    for worker, volume, names in (
        ("worker-cpu", "envs", ["env-aaaaaaaaaaaa-envs", "env-bbbbbbbbbbbb-envs"]),
        ("worker-gpu", "envs-gpu", ["env-aaaaaaaaaaaa-gpu-envs-gpu"]),
    ):
        svc = services[worker]
        assert f"{volume}:{images.ENV_STORE}" in svc["volumes"] and volume in fleet["volumes"]
        waits = {n: d for n, d in svc["depends_on"].items() if n.startswith("env-")}
        assert waits == {n: {"condition": "service_completed_successfully"} for n in names}
        assert {"redis", "postgres", "s3"} <= set(svc["depends_on"])  # kept from the base
        for name in names:
            assert seeders[name]["entrypoint"] == images.SEED
            assert seeders[name]["volumes"] == [f"{volume}:{images.SEED_AT}"]
    gpu_seeder = seeders["env-aaaaaaaaaaaa-gpu-envs-gpu"]
    assert gpu_seeder["image"] == f"{REGISTRY}/klieg-env-gpu:{'a' * 32}"
