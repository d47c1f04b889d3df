"""A real Klieg platform for end-to-end tests: ``klieg up`` as a subprocess, driven over HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from klieg.admin import AdminClient
from klieg_platform import tls
from klieg_platform.local import launched

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "apps"
TEST_APPS = Path(__file__).resolve().parent / "apps"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` ports free on 127.0.0.1 and distinct from each other (bound together, then let
    go: asked one at a time, the kernel may hand out the same one twice)."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]


@dataclass
class Platform:
    """A running platform. With TLS, ``bundle`` is its CA + public roots and ``queue_url`` its
    fal-style queue listener; ``AdminClient`` then needs ``SSL_CERT_FILE=bundle``."""

    url: str
    home: Path
    key: str = ""
    bundle: Path | None = None
    queue_url: str | None = None

    def admin(self, key: str | None = None) -> AdminClient:
        return AdminClient(self.url, key if key is not None else self.key, timeout=120)

    def http(self, key: str | None = None) -> httpx.Client:
        k = key if key is not None else self.key
        headers = {"Authorization": f"Key {k}"} if k else {}
        verify = ssl.create_default_context(cafile=self.bundle) if self.bundle else True
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, verify=verify)

    def bootstrap(self) -> Platform:
        """Create the first key (its tenant ``local`` is the admin) and use it from now on."""
        with self.admin(key="") as anonymous:
            self.key = anonymous.create_key()["key"]
        return self

    def deploy(
        self, path: Path, alias: str = "latest", key: str | None = None
    ) -> dict[str, object]:
        """Deploy the app file ``path`` with ``key`` (default the platform's key)."""
        from klieg.admin import load_app

        app, folder, entry = load_app(path)
        with self.admin(key) as admin:
            return admin.deploy(app, folder, entry, alias=alias)


@contextmanager
def running_platform(
    home: Path,
    *,
    extra_env: dict[str, str] | None = None,
    log_name: str = "platform.log",
    with_tls: bool = False,
    prefix: Sequence[str] = (),
) -> Iterator[Platform]:
    """Start ``klieg up`` in ``home`` on a free port; stop it (SIGINT) afterwards.

    ``with_tls``: HTTPS with the home's local CA, plus a queue listener on another free port.
    ``prefix``: a command ``klieg up`` runs under (``local.launched``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    env.update(
        KLIEG_LEASE_S="5",
        KLIEG_DRAIN_S="10",
        KLIEG_SETUP_BACKOFF_S="30",
        KLIEG_DEV_TTL_S="6",
        KLIEG_FLEET_SAMPLE_S="3",
        KLIEG_MAX_BODY_BYTES=str(1024 * 1024),
    )
    env.update(extra_env or {})
    home.mkdir(parents=True, exist_ok=True)
    made = tls.ensure(home) if with_tls else None
    port, queue_port = free_ports(2)
    if made is not None:
        env.update(
            KLIEG_TLS_CERT=str(made.cert),
            KLIEG_TLS_KEY=str(made.key),
            KLIEG_QUEUE_PORT=str(queue_port),
        )
    with (
        open(home / log_name, "ab") as log,
        launched(home, port, env=env, log=log, prefix=prefix) as url,
    ):
        yield Platform(
            url=url,
            home=home,
            bundle=made.bundle if made else None,
            queue_url=f"https://127.0.0.1:{queue_port}" if made else None,
        )


@contextmanager
def platform_process(home: Path, args: list[str], log_name: str, **env: str) -> Iterator[None]:
    """Another process of the platform in ``home``, ``python -m <args>`` (a gateway, a worker),
    over its Redis, registry and keys (``env`` adds settings); its output goes to
    ``home/log_name``; stopped (SIGTERM) afterwards."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    environ.update(KLIEG_HOME=str(home), **env)
    with open(home / log_name, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def another_gateway(platform: Platform) -> Iterator[Platform]:
    """A second gateway process of ``platform`` on a port of its own, once it is healthy."""
    port = free_port()
    with platform_process(platform.home, ["klieg_platform.gateway"], f"gateway-{port}.log",
                          KLIEG_PORT=str(port)):  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 90)
        yield Platform(url=url, home=platform.home, key=platform.key)


def platform_pids(home: Path, module: str) -> list[int]:
    """Pids of this platform's processes running ``python -m <module>`` (found through /proc).

    A child caught between its fork and its exec still shows its parent's command line: a
    process whose parent is also found is that child, not another instance."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if module.encode() in cmdline and f"KLIEG_HOME={home}".encode() in environ:
            ppid = next((int(line.split()[1]) for line in status.splitlines()
                         if line.startswith("PPid:")), 0)  # fmt: skip
            found[int(proc.name)] = ppid
    return [pid for pid, ppid in found.items() if ppid not in found]


def wait_healthy(url: str, timeout_s: float = 60) -> None:
    """Return once ``GET {url}/health`` answers 200 (a gateway that is up and reaches Redis)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not healthy within {timeout_s:g} s")


def until(what: str, check: Callable[[], bool], timeout_s: float = 45) -> None:
    """Return once ``check()`` is true; ``AssertionError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what}")
        time.sleep(0.1)


def wait_for_status(http: httpx.Client, status_url: str, want: str, timeout: float = 60) -> dict:
    """Poll ``status_url`` until its status is ``want``; the last status document."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict = http.get(status_url, params={"logs": "1"}).json()
        if body.get("status") == want:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"status stayed {body.get('status')!r}, wanted {want!r}")
        time.sleep(0.05)
