"""A fleet on one machine: two gateways and three workers (two pools) as separate processes,
sharing the machine's PostgreSQL (a database of their own), the machine's Redis (a db number of
their own, flushed before and after) and an S3 server process, behind a round-robin proxy. A
steady stream goes through both gateways; one gateway and one worker are killed mid-stream;
nothing accepted is lost and every result is right."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from klieg_platform import vault
from klieg_platform.config import Settings
from klieg_platform.local import ensure_signing_key, settings_env
from tests.e2e.platform import Platform, free_ports, wait_healthy
from tests.faults.conftest import deploy_steady, record
from tests.faults.proxy import FaultyProxy
from tests.faults.stream import Stream
from tests.klieg_platform.storage.s3server import ACCESS_KEY, SECRET_KEY, moto_server

pytestmark = pytest.mark.timeout(300)
REDIS_DB = int(os.environ.get("KLIEG_FLEET_REDIS_DB", "14"))
POSTGRES = "postgresql://127.0.0.1:5432/test"


@dataclass
class Fleet:
    platform: Platform
    proxy: FaultyProxy
    gateways: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)


def _machine_services() -> tuple[redis.Redis, object]:
    import psycopg

    try:
        r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=5)
        r.ping()
        pg = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5)
    except Exception as exc:
        pytest.skip(f"the machine's Redis or PostgreSQL does not answer: {exc}")
    return r, pg


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    shared, pg = _machine_services()
    database = f"klieg_fleet_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE DATABASE {database}")  # type: ignore[attr-defined]
    shared.flushdb()
    home = tmp_path_factory.mktemp("fleet-home")
    log = open(home / "fleet.log", "ab")  # noqa: SIM115 - closed below
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with moto_server(home / "moto.log") as s3:
            ports = free_ports(2)
            proxy = FaultyProxy(ports)
            settings = ensure_signing_key(Settings.from_env({
                "KLIEG_HOME": str(home),
                "KLIEG_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
                "KLIEG_DATABASE_URL": f"postgresql+psycopg://127.0.0.1:5432/{database}",
                "KLIEG_S3_ENDPOINT_URL": s3, "KLIEG_S3_BUCKET": f"klieg-{uuid.uuid4().hex[:8]}",
                "KLIEG_S3_ACCESS_KEY": ACCESS_KEY, "KLIEG_S3_SECRET_KEY": SECRET_KEY,
                "KLIEG_LEASE_S": "3", "KLIEG_PUBLIC_URL": proxy.url,
            }))  # fmt: skip
            settings = settings.with_(secrets_key=vault.ensure_key(home))
            env = {k: v for k, v in settings_env(settings).items() if k != "KLIEG_WORKER_POOLS"}
            found = Fleet(Platform(url=proxy.url, home=home), proxy)

            def start(args: list[str], **extra: str) -> subprocess.Popen[bytes]:
                proc = subprocess.Popen([sys.executable, "-m", *args], env=env | extra,
                                        stdout=log, stderr=log)  # fmt: skip
                procs.append(proc)
                return proc

            for port in ports:
                found.gateways.append(start(["klieg_platform.gateway"], KLIEG_PORT=str(port)))
            for port in ports:
                wait_healthy(f"http://127.0.0.1:{port}", 90)
            for pool, extra in (("CPU", []), ("CPU", []), ("GPU-H100", ["--slots", "2"])):
                args = ["klieg_platform.worker", "--pool", pool, *extra]
                found.workers.setdefault(pool, []).append(start(args))
            found.platform.bootstrap()
            deploy_steady(found.platform)
            yield found
            proxy.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        shared.flushdb()
        pg.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")  # type: ignore[attr-defined]
        pg.close()  # type: ignore[attr-defined]


def test_the_fleet_shares_one_registry_and_one_store(fleet: Fleet, tmp_path: Path) -> None:
    """A file uploaded through one gateway is served by the other (S3), and an app deployed
    through the proxy is known to both (PostgreSQL)."""
    ports = fleet.proxy.upstream_ports
    alive = [p for p, g in zip(ports, fleet.gateways, strict=True) if g.poll() is None]
    with fleet.platform.http() as http:
        up = http.post("/files/upload", content=b"shared bytes",
                       headers={"content-type": "text/plain"})  # fmt: skip
        assert up.status_code == 201, up.text
    key = {"Authorization": f"Key {fleet.platform.key}"}
    for port in alive:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=key) as http:
            path = up.json()["url"].split("/files/", 1)[1]
            assert http.get(f"/files/{path}").content == b"shared bytes"
            assert "steady" in {a["name"] for a in http.get("/apps").json()}


def test_a_gateway_and_a_worker_killed_mid_stream(fleet: Fleet) -> None:
    with fleet.platform.http() as http:
        pools = {p["pool"]: p for p in http.get("/pools").json()["pools"]}
    assert pools["CPU"]["workers"] == 2 and pools["GPU-H100"]["workers"] == 1, pools
    before = dict(fleet.proxy.connections)

    def kill() -> None:
        fleet.gateways[0].kill()
        fleet.workers["CPU"][0].kill()

    s = Stream(fleet.platform.url, fleet.platform.key, rate=40, threads=12)
    s.run_for(12, during=kill)
    tally = s.settle(timeout_s=120)
    record("fleet: one of two gateways and one of two CPU workers killed", tally)
    used = {port: n - before.get(port, 0) for port, n in fleet.proxy.connections.items()}
    assert all(n > 0 for n in used.values()), f"the proxy did not use both gateways: {used}"
    assert tally.accepted >= 200 and tally.completed >= 200, tally.figures()
    with httpx.Client(base_url=fleet.platform.url, timeout=30) as http:
        assert http.get("/health").status_code == 200  # the other gateway answers alone
    # the workers left alive keep serving
    with fleet.platform.http() as http:
        assert http.post("/local/steady", json={"i": 12, "ms": 0}).json() == {
            "i": 12, "square": 144
        }  # fmt: skip
