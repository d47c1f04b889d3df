"""``klieg images build``: the platform image and one env image per env key, through the Docker
SDK (``docker``), the only part of Klieg that needs an engine.

- ``klieg-platform:<tag>`` (CPU pools, ``python:3.11-slim``) and ``klieg-platform-gpu:<tag>``
  (GPU pools, a CUDA runtime base): gateway and worker in one image
  (``infra/images/platform.Dockerfile``), built from this checkout's ``sdk/``, ``platform/``
  and ``pyproject.toml``;
- ``klieg-env:<key>`` (``klieg-env-gpu:<key>`` for GPU functions' envs, on the GPU image) per
  env key of the revisions some alias points to: the platform image with that env built and
  published in it (``infra/images/env.Dockerfile``).

With ``push`` (a registry such as ``registry.example.com/klieg``) every image is tagged under
it and pushed. An engine that does not answer, a failed build step or a refused push is an
``ImageError`` with the engine's own words.

How a new node uses the env images (``write_manifests``, ``klieg images build --manifests
DIR``): ``DIR/k8s`` is a kustomize Component giving each pool's worker Deployment one init
container per env image of that pool, and ``DIR/compose.yaml`` a compose file adding one
one-shot service per env image that the workers wait for. Each runs ``python -m
klieg_platform.packager seed`` (``packager/seeds.py``) from its image into the volume the
worker's env store lives on (``ENV_STORE``), marker last: the worker finds the env complete and
pulls it with the image instead of resolving and building it.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from klieg.exceptions import KliegError
from klieg.types import AppSpec
from klieg_platform.unreachable import root_cause

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "infra" / "images"
CPU_BASE = "python:3.11-slim"
GPU_BASE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
SOURCES = ("sdk", "platform", "pyproject.toml", "README.md")
SKIP = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
ENV_STORE = "/var/lib/klieg/envs"
"""Where a worker's env store is in the platform images (``$KLIEG_HOME/envs``): a volume in
``infra/k8s`` and ``infra/compose.yaml``, which the env images seed."""
SEED_AT = "/var/lib/klieg/seed"
"""Where an env image's seeding container mounts the worker's env store volume (a folder of the
platform image owned by its user, so a Docker volume first mounted there is writable)."""
SEED = ["python", "-m", "klieg_platform.packager", "seed", SEED_AT]
"""An env image's command in an init container or one-shot service."""


class ImageError(KliegError):
    status_code = 502
    error_type = "ImageError"


@dataclass(frozen=True)
class EnvImage:
    """One env image: env ``key`` on the CPU or GPU platform image, for the functions of
    ``pools`` that run on it."""

    key: str
    gpu: bool
    python: str
    lock: str
    pools: tuple[str, ...]

    @property
    def repository(self) -> str:
        return "klieg-env-gpu" if self.gpu else "klieg-env"


@dataclass(frozen=True)
class Built:
    name: str
    """repository:tag as built here (or under the registry, with ``push``)"""
    pushed: bool
    env: EnvImage | None = None


def engine(client: Any | None = None, docker_host: str | None = None) -> Any:
    """A Docker client that answered a ping; ``ImageError`` naming where none answers (the
    client's URL, or ``docker_host``: ``DOCKER_HOST`` as the SDK read it) and why."""
    import docker

    try:
        found = client if client is not None else docker.from_env()
        found.ping()
    except Exception as exc:
        url = getattr(getattr(client, "api", None), "base_url", None)
        if url:
            where = url
        elif docker_host:
            where = f"{docker_host} (DOCKER_HOST)"
        else:
            where = "unix:///var/run/docker.sock (DOCKER_HOST is not set)"
        raise ImageError(
            f"no Docker engine answers at {where}: {root_cause(exc)}; only `klieg images` needs one"
        ) from None
    if not IMAGES.is_dir():
        raise ImageError(f"no Dockerfiles at {IMAGES}: run klieg images from a Klieg checkout")
    return found


def context_tar(dockerfile: Path, files: dict[str, bytes], sources: Iterable[Path] = ()) -> bytes:
    """A build context: ``Dockerfile``, the extra ``files`` and each source folder or file
    (under its name relative to the checkout), gzip-free so the engine reads it as it comes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", dockerfile.read_bytes())
        for name, data in files.items():
            add(name, data)
        for src in sources:
            paths = [src] if src.is_file() else sorted(src.rglob("*"))
            for path in paths:
                if path.is_file() and not SKIP & set(path.relative_to(REPO).parts):
                    add(str(path.relative_to(REPO)), path.read_bytes())
    return out.getvalue()


def _stream(lines: Iterator[dict[str, Any]], what: str) -> str:
    """Follow an engine's JSON progress stream; the image id it names (``aux.ID``), or an
    ``ImageError`` with the engine's message."""
    image = ""
    for line in lines:
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail", {}).get("message") or line.get("error")
            raise ImageError(f"{what}: {detail}")
        image = line.get("aux", {}).get("ID", image)
    return image


def build_one(
    client: Any, dockerfile: Path, tag: str, *, files: dict[str, bytes] | None = None,
    sources: Iterable[Path] = (), buildargs: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Build ``tag`` from ``dockerfile``; the image id."""
    tar = context_tar(dockerfile, files or {}, sources)
    lines = client.api.build(
        fileobj=io.BytesIO(tar), custom_context=True, tag=tag, buildargs=buildargs or {},
        decode=True, rm=True, pull=True,
    )  # fmt: skip
    return _stream(lines, f"building {tag}")


def push_one(client: Any, name: str) -> None:
    repository, _, tag = name.rpartition(":")
    lines = client.api.push(repository, tag=tag, stream=True, decode=True)
    _stream(lines, f"pushing {name}")


def env_images(revisions: Iterable[Any]) -> list[EnvImage]:
    """The env images the aliased ``revisions`` need: per env key, one on the CPU platform image
    if a CPU function runs on it, one on the GPU image if a GPU function does, each with the
    pools of those functions; sorted by key, CPU first."""
    found: dict[tuple[str, bool], tuple[str, str, set[str]]] = {}
    for rev in revisions:
        for fn in AppSpec.model_validate(rev.spec).functions:
            gpu = bool(fn.num_gpus > 0 or fn.gpu)
            _, _, pools = found.setdefault((rev.env_key, gpu), (rev.python, rev.lock, set()))
            pools.add(fn.pool)
    return [EnvImage(key, gpu, python, lock, tuple(sorted(pools)))
            for (key, gpu), (python, lock, pools) in sorted(found.items())]  # fmt: skip


def build_all(
    client: Any,
    tag: str,
    revisions: Iterable[Any],
    *,
    push: str | None = None,
    gpu_base: str = GPU_BASE,
    envs: bool = True,
) -> list[Built]:
    """The two platform images, then one env image per env key; tagged under ``push`` and
    pushed when it is given."""

    def named(repo: str, version: str) -> str:
        return f"{push.rstrip('/')}/{repo}:{version}" if push else f"{repo}:{version}"

    out: list[Built] = []
    sources = [REPO / s for s in SOURCES]
    platform = {False: named("klieg-platform", tag), True: named("klieg-platform-gpu", tag)}
    for gpu, name in platform.items():
        base = gpu_base if gpu else CPU_BASE
        build_one(client, IMAGES / "platform.Dockerfile", name, sources=sources,
                  buildargs={"BASE": base})  # fmt: skip
        out.append(Built(name, False))
    if envs:
        for env in env_images(revisions):
            doc = json.dumps({"python": env.python, "lock": env.lock, "key": env.key}).encode()
            name = named(env.repository, env.key[:32])
            build_one(client, IMAGES / "env.Dockerfile", name, files={"env.json": doc},
                      buildargs={"PLATFORM": platform[env.gpu]})  # fmt: skip
            out.append(Built(name, False, env))
    if push:
        for i, b in enumerate(out):
            push_one(client, b.name)
            out[i] = Built(b.name, True, b.env)
    return out


# ---- how workers use the env images -------------------------------------------------------------


def worker_deployment(pool: str) -> str:
    """A pool's worker Deployment in ``infra/k8s`` (as ``autoscaler.PoolPlan`` names it)."""
    return f"klieg-worker-{pool.lower()}"


def _seeder(b: Built) -> str:
    assert b.env is not None
    return f"env-{b.env.key[:12]}{'-gpu' if b.env.gpu else ''}"


def k8s_component(built: Sequence[Built]) -> dict[str, Any]:
    """A kustomize Component: each pool's worker Deployment gets one init container per env
    image of that pool, seeding the worker's ``envs`` volume (mounted at ``ENV_STORE``)."""
    per_pool: dict[str, list[dict[str, Any]]] = {}
    for b in built:
        for pool in b.env.pools if b.env else ():
            per_pool.setdefault(pool, []).append({
                "name": _seeder(b), "image": b.name, "command": SEED,
                "volumeMounts": [{"name": "envs", "mountPath": SEED_AT}],
            })  # fmt: skip
    patches = []
    for pool, inits in sorted(per_pool.items()):
        patch = {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": worker_deployment(pool)},
                 "spec": {"template": {"spec": {"initContainers": inits}}}}  # fmt: skip
        patches.append({"patch": yaml.safe_dump(patch, sort_keys=False)})
    return {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
            "patches": patches}  # fmt: skip


def compose_services(built: Sequence[Built], compose: dict[str, Any]) -> dict[str, Any]:
    """A compose file to add to ``compose`` (``infra/compose.yaml``): one one-shot service per
    env image and worker volume, seeding the volume a worker of its pool keeps its env store
    on; that worker waits for it to complete."""
    services: dict[str, Any] = {}
    for name, svc in compose.get("services", {}).items():
        command = list(svc.get("command") or [])
        if command[:1] != ["worker"] or "--pool" not in command:
            continue
        pool = command[command.index("--pool") + 1]
        volume = next((str(v).split(":")[0] for v in svc.get("volumes", [])
                       if str(v).split(":")[1:2] == [ENV_STORE]), None)  # fmt: skip
        waits: dict[str, Any] = {}
        for b in built:
            if b.env is None or pool not in b.env.pools or volume is None:
                continue
            seeder = f"{_seeder(b)}-{volume}"
            services[seeder] = {"image": b.name, "entrypoint": SEED,
                                "volumes": [f"{volume}:{SEED_AT}"]}  # fmt: skip
            waits[seeder] = {"condition": "service_completed_successfully"}
        if waits:
            services[name] = {"depends_on": waits}
    return {"services": services}


def write_manifests(
    folder: Path, built: Sequence[Built], compose: Path | None = None
) -> list[Path]:
    """Write ``folder/k8s/kustomization.yaml`` (``k8s_component``) and ``folder/compose.yaml``
    (``compose_services`` for ``compose``, default ``infra/compose.yaml``); the files written."""
    head = (
        "# Made by `klieg images build --manifests`: the env images, seeding the workers' envs.\n"
    )
    compose_doc = yaml.safe_load((compose or REPO / "infra" / "compose.yaml").read_text())
    (folder / "k8s").mkdir(parents=True, exist_ok=True)
    written = [folder / "k8s" / "kustomization.yaml", folder / "compose.yaml"]
    for path, doc in zip(written, (k8s_component(built), compose_services(built, compose_doc)),
                         strict=True):  # fmt: skip
        path.write_text(head + yaml.safe_dump(doc, sort_keys=False))
    return written
