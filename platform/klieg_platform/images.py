"""``klieg images build``: the platform image and one env image per env key, through the Docker
SDK (``docker``), the only part of Klieg that needs an engine.

- ``klieg-platform:<tag>`` (CPU pools, ``python:3.11-slim``) and ``klieg-platform-gpu:<tag>``
  (GPU pools, a CUDA runtime base): gateway and worker in one image
  (``infra/images/platform.Dockerfile``), built from this checkout's ``sdk/``, ``platform/``
  and ``pyproject.toml``;
- ``klieg-env:<key>`` per env key of the revisions some alias points to: the platform image
  with that env built and published in it (``infra/images/env.Dockerfile``), so a new node
  pulls it instead of resolving it; GPU functions' envs on the GPU image.

With ``push`` (a registry such as ``registry.example.com/klieg``) every image is tagged under
it and pushed. An engine that does not answer, a failed build step or a refused push is an
``ImageError`` with the engine's own words.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klieg.exceptions import KliegError
from klieg.types import AppSpec

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "infra" / "images"
CPU_BASE = "python:3.11-slim"
GPU_BASE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
SOURCES = ("sdk", "platform", "pyproject.toml", "README.md")
SKIP = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


class ImageError(KliegError):
    status_code = 502
    error_type = "ImageError"


@dataclass(frozen=True)
class Built:
    name: str
    """repository:tag as built here (or under the registry, with ``push``)"""
    pushed: bool


def engine(client: Any | None = None) -> Any:
    """A Docker client that answered a ping; ``ImageError`` saying where none answers."""
    import docker

    try:
        found = client if client is not None else docker.from_env()
        found.ping()
    except Exception as exc:
        where = getattr(getattr(client, "api", None), "base_url", None) or (
            "DOCKER_HOST or unix:///var/run/docker.sock"
        )
        raise ImageError(
            f"no Docker engine answers at {where}: {exc}; only `klieg images` needs one"
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


def env_targets(revisions: Iterable[Any]) -> dict[str, tuple[str, str, bool]]:
    """env key -> (python, lock, whether a GPU function runs on it), per aliased revision."""
    out: dict[str, tuple[str, str, bool]] = {}
    for rev in revisions:
        gpu = any(fn.num_gpus > 0 or fn.gpu for fn in AppSpec.model_validate(rev.spec).functions)
        _, _, had = out.get(rev.env_key, ("", "", False))
        out[rev.env_key] = (rev.python, rev.lock, had or gpu)
    return out


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
        for key, (python, lock, gpu) in sorted(env_targets(revisions).items()):
            doc = json.dumps({"python": python, "lock": lock, "key": key}).encode()
            name = named("klieg-env", key[:32])
            build_one(client, IMAGES / "env.Dockerfile", name, files={"env.json": doc},
                      buildargs={"PLATFORM": platform[gpu]})  # fmt: skip
            out.append(Built(name, False))
    if push:
        for i, b in enumerate(out):
            push_one(client, b.name)
            out[i] = Built(b.name, True)
    return out
