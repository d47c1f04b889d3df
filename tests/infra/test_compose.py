"""``infra/compose.yaml``: parsed, and held to what a fleet needs: Redis with its append-only
file, PostgreSQL, an S3 server, two gateways behind the proxy, a CPU and a GPU worker (with a
device reservation); every Klieg service's command is one the image's ``klieg`` accepts, built
from the platform Dockerfile, with the same shared settings."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.platform import REPO

INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())  # anchors and merge keys resolved
    found: dict[str, Any] = doc["services"]
    return found


def klieg_parser() -> argparse.ArgumentParser:
    """The parser of the ``klieg`` command the image runs (its ENTRYPOINT)."""
    from klieg.cli import build_parser

    return build_parser()


def test_the_fleet_has_every_part(services: dict[str, Any]) -> None:
    assert {"redis", "postgres", "s3", "gateway-1", "gateway-2", "proxy", "worker-cpu",
            "worker-gpu"} <= set(services)  # fmt: skip
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--appendfsync") + 1] in ("everysec", "always")
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on {dep}, which is not a service"


def test_every_klieg_command_is_one_klieg_accepts(services: dict[str, Any]) -> None:
    parser = klieg_parser()
    klieg = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("klieg-")}
    assert set(klieg) == {"gateway-1", "gateway-2", "worker-cpu", "worker-gpu"}

    for name, svc in klieg.items():
        args = parser.parse_args(svc["command"])
        assert args.func.__name__ in ("_gateway", "_worker"), (name, svc["command"])
        if args.func.__name__ == "_worker":
            assert args.pool == (["GPU-H100"] if name == "worker-gpu" else ["CPU"])
        build = svc["build"]
        assert build["dockerfile"] == "infra/images/platform.Dockerfile"
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()
        gpu = name == "worker-gpu"
        assert ("cuda" in build["args"]["BASE"]) == gpu, name
        assert svc["image"] == ("klieg-platform-gpu:dev" if gpu else "klieg-platform:dev")


def test_they_share_one_set_of_settings(services: dict[str, Any]) -> None:
    from klieg_platform.config import Settings

    envs = [s["environment"] for n, s in services.items() if n.startswith(("gateway", "worker"))]
    assert all(e == envs[0] for e in envs)
    settings = Settings.from_env(envs[0])
    assert settings.s3_bucket == "klieg" and settings.s3_endpoint_url == "http://s3:9000"
    assert settings.effective_redis_url == "redis://redis:6379/0"
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    s3 = services["s3"]["environment"]
    assert (s3["MINIO_ROOT_USER"], s3["MINIO_ROOT_PASSWORD"]) == (
        envs[0]["KLIEG_S3_ACCESS_KEY"],
        envs[0]["KLIEG_S3_SECRET_KEY"],
    )
    from cryptography.fernet import Fernet

    Fernet(envs[0]["KLIEG_SECRETS_KEY"])  # a valid key, or this raises


def test_the_proxy_balances_both_gateways(services: dict[str, Any]) -> None:
    mount = services["proxy"]["volumes"][0].split(":")[0]
    conf = (COMPOSE.parent / mount).read_text()
    upstream = re.search(r"upstream klieg_gateways \{(.*?)\}", conf, re.S)
    assert upstream is not None
    assert re.findall(r"server (\S+):8000", upstream.group(1)) == ["gateway-1", "gateway-2"]
    assert "proxy_buffering off" in conf  # server-sent events pass through as they come
    assert services["proxy"]["ports"] == ["8000:8000"]


def test_the_gpu_flag_compose_uses_is_understood(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:  # fmt: skip
    from klieg_platform.worker.__main__ import parse_gpus

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-2)'\n")  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert parse_gpus("all") == (0, 1)
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(SystemExit, match="--gpus all: cannot list the GPUs"):
        parse_gpus("all")


def _seconds(duration: str) -> float:
    """A compose duration ("5m", "1m30s", "90s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_workers_drain_within_their_grace_and_keep_envs_on_a_volume(
    services: dict[str, Any],
) -> None:
    from klieg_platform.config import Settings
    from klieg_platform.images import ENV_STORE
    from klieg_platform.local import STOP_MARGIN_S

    doc = yaml.safe_load(COMPOSE.read_text())
    volumes = {}
    for name in ("worker-cpu", "worker-gpu"):
        svc = services[name]
        drain_s = Settings.from_env(svc["environment"]).drain_s
        assert _seconds(svc["stop_grace_period"]) >= drain_s + STOP_MARGIN_S, name
        store = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == ENV_STORE]
        assert len(store) == 1 and store[0] in doc["volumes"], (name, svc["volumes"])
        volumes[name] = store[0]
    # envs built on the CPU and on the GPU image share keys, not interpreters: a volume each
    assert volumes["worker-cpu"] != volumes["worker-gpu"]
