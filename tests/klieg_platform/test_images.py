"""``klieg images build`` through the Docker SDK: against an HTTP server that answers as a Docker
engine does (its recorded build and push streams), the build contexts, tags, build arguments and
pushes it sends; the engine's errors as ``ImageError``; and, where a real engine answers, the
platform image built for real."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from klieg_platform import images

API = "1.45"
BUILT = [  # a build stream as Docker Engine 27 sends it (BuildKit off)
    {"stream": "Step 1/9 : ARG BASE=python:3.11-slim"},
    {"stream": "\n"},
    {"stream": "Step 2/9 : FROM ${BASE}"},
    {"stream": "\n"},
    {"stream": " ---> 3b0ecfb9e8e5\n"},
    {"aux": {"ID": "sha256:5f1d0c7a4b8e2f19a6a3f1e0c9f2b7d8e4a1c6b3d2e5f7a9b0c1d2e3f4a5b6c7"}},
    {"stream": "Successfully built 5f1d0c7a4b8e\n"},
    {"stream": "Successfully tagged klieg-platform:dev\n"},
]
FAILED = [
    {"stream": "Step 7/9 : RUN pip --no-cache-dir install ./sdk ."},
    {"stream": "\n"},
    {"errorDetail": {"code": 1, "message": "The command '/bin/sh -c pip --no-cache-dir install "
                     "./sdk .' returned a non-zero code: 1"},
     "error": "The command '/bin/sh -c pip --no-cache-dir install ./sdk .' returned a non-zero "
              "code: 1"},
]  # fmt: skip
PUSHED = [
    {"status": "The push refers to repository [registry.example.com/klieg/klieg-platform]"},
    {"status": "Pushed", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
    {"status": "dev: digest: sha256:9f8e7d6c5b4a39281706f5e4d3c2b1a0"
               "f9e8d7c6b5a4938271605f4e3d2c1b0a size: 1784"},
    {"progressDetail": {}, "aux": {"Tag": "dev", "Digest": "sha256:9f8e", "Size": 1784}},
]  # fmt: skip


@dataclass
class Engine:
    url: str
    builds: list[tuple[dict[str, list[str]], bytes]]
    pushes: list[str]
    fail_builds: list[bool]


@pytest.fixture
def engine() -> Iterator[Engine]:
    seen = Engine("", [], [], [False])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _lines(self, lines: list[dict[str, Any]]) -> None:
            """A progress stream, chunked as the engine sends it: a JSON line per chunk."""
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for line in lines:
                data = json.dumps(line).encode() + b"\r\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path.endswith("/_ping"):
                self._send(200, b"OK", "text/plain")
            else:
                self._send(404, b'{"message":"page not found"}')

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            if self.headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                body = self.rfile.read(length)
            if parts.path == f"/v{API}/build":
                seen.builds.append((parse_qs(parts.query), body))
                self._lines(FAILED if seen.fail_builds[0] else BUILT)
            elif parts.path.endswith("/push"):
                name = parts.path.split("/images/", 1)[1].removesuffix("/push")
                seen.pushes.append(f"{name}:{parse_qs(parts.query)['tag'][0]}")
                self._lines(PUSHED)
            else:
                self._send(404, b'{"message":"page not found"}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen.url = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        yield seen
    finally:
        server.shutdown()


def client(engine: Engine) -> Any:
    import docker

    return images.engine(docker.DockerClient(base_url=engine.url, version=API))


def members(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]


def revision(key: str, *, gpu: bool) -> Any:
    fn = {"name": "f", "kind": "function", "module": "app", "qualname": "f",
          "gpu": "H100" if gpu else None, "num_gpus": 1 if gpu else 0}  # fmt: skip
    spec = {"name": "a", "functions": [fn]}
    return SimpleNamespace(env_key=key, python="3.11", lock=f"lock of {key}\n", spec=spec)


def test_platform_and_env_images_are_built_tagged_and_pushed(engine: Engine) -> None:
    revs = [revision("a" * 64, gpu=False), revision("b" * 64, gpu=True),
            revision("a" * 64, gpu=False)]  # fmt: skip
    built = images.build_all(client(engine), "v7", revs, push="registry.example.com/klieg")
    names = [b.name for b in built]
    assert names == [
        "registry.example.com/klieg/klieg-platform:v7",
        "registry.example.com/klieg/klieg-platform-gpu:v7",
        f"registry.example.com/klieg/klieg-env:{'a' * 32}",
        f"registry.example.com/klieg/klieg-env-gpu:{'b' * 32}",
    ]
    assert all(b.pushed for b in built) and engine.pushes == names
    (cpu_q, cpu_tar), (gpu_q, _), (env_a_q, env_a_tar), (env_b_q, _) = engine.builds
    assert cpu_q["t"] == [names[0]] and json.loads(cpu_q["buildargs"][0]) == {
        "BASE": images.CPU_BASE
    }
    assert json.loads(gpu_q["buildargs"][0]) == {"BASE": images.GPU_BASE}
    context = members(cpu_tar)
    assert context["Dockerfile"] == (images.IMAGES / "platform.Dockerfile").read_bytes()
    assert "sdk/klieg/__init__.py" in context and "platform/klieg_platform/images.py" in context
    assert "pyproject.toml" in context and not any("__pycache__" in n for n in context)
    # each env on the platform image of its hardware, with its lock
    assert json.loads(env_a_q["buildargs"][0]) == {"PLATFORM": names[0]}
    assert json.loads(env_b_q["buildargs"][0]) == {"PLATFORM": names[1]}
    env = members(env_a_tar)
    assert set(env) == {"Dockerfile", "env.json"}
    assert json.loads(env["env.json"]) == {"python": "3.11", "lock": f"lock of {'a' * 64}\n",
                                           "key": "a" * 64}  # fmt: skip


def test_without_push_nothing_is_pushed_and_no_envs_builds_two(engine: Engine) -> None:
    built = images.build_all(client(engine), "dev", [revision("c" * 64, gpu=False)], envs=False)
    assert [b.name for b in built] == ["klieg-platform:dev", "klieg-platform-gpu:dev"]
    assert engine.pushes == [] and not any(b.pushed for b in built)


def test_a_failed_build_step_is_an_image_error_with_the_engines_words(engine: Engine) -> None:
    engine.fail_builds[0] = True
    with pytest.raises(images.ImageError, match="building klieg-platform:dev: The command"):
        images.build_all(client(engine), "dev", [])


def test_no_engine_is_one_clear_error() -> None:
    import docker

    nowhere = docker.DockerClient(base_url="tcp://127.0.0.1:9", version=API, timeout=2)
    with pytest.raises(images.ImageError) as refused:
        images.engine(nowhere)
    assert str(refused.value) == (
        "no Docker engine answers at http://127.0.0.1:9: connection refused; only `klieg "
        "images` needs one"
    )


@pytest.mark.parametrize(
    ("docker_host", "said"),
    [
        ("tcp://127.0.0.1:9", "at tcp://127.0.0.1:9 (DOCKER_HOST): connection refused"),
        ("unix:///nonexistent/docker.sock",
         "at unix:///nonexistent/docker.sock (DOCKER_HOST): no such file or directory"),
    ],
)  # fmt: skip
def test_the_command_names_the_docker_host_in_one_line(
    docker_host: str, said: str, tmp_path: Any
) -> None:
    """``klieg images build`` where no engine answers: one line on stderr naming DOCKER_HOST's
    value and why, exit status 1, nothing built or written."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLIEG_", "DOCKER_"))}
    env.update(KLIEG_HOME=str(tmp_path / "home"), DOCKER_HOST=docker_host)
    out = subprocess.run(
        [sys.executable, "-m", "klieg.cli", "images", "build", "--manifests", str(tmp_path / "m")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and out.stdout == "", (out.stdout, out.stderr)
    assert out.stderr == (
        f"error: ImageError: no Docker engine answers {said}; only `klieg images` needs one\n"
    )
    assert not (tmp_path / "m").exists()


def _real_engine() -> Any:
    try:
        return images.engine()
    except images.ImageError as exc:
        pytest.skip(f"no Docker engine here, so the images are not built for real: {exc}")


def test_the_platform_image_builds_on_a_real_engine() -> None:
    real = _real_engine()
    built = images.build_all(real, "test", [], envs=False)
    image = real.images.get(built[0].name)
    assert image.attrs["Config"]["Entrypoint"] == ["klieg"]
    out = real.containers.run(built[0].name, ["--help"], remove=True)
    assert b"gateway" in out and b"worker" in out
