"""A real Klieg platform for end-to-end tests: ``klieg up`` as a subprocess, driven over HTTP."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from klieg.admin import AdminClient
from klieg_platform.local import launched

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "apps"
TEST_APPS = Path(__file__).resolve().parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Platform:
    url: str
    home: Path
    key: str = ""

    def admin(self, key: str | None = None) -> AdminClient:
        return AdminClient(self.url, key if key is not None else self.key, timeout=120)

    def http(self, key: str | None = None) -> httpx.Client:
        k = key if key is not None else self.key
        headers = {"Authorization": f"Key {k}"} if k else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def deploy(self, path: Path, alias: str = "latest") -> dict[str, object]:
        from klieg.admin import load_app

        app, folder, entry = load_app(path)
        with self.admin() as admin:
            return admin.deploy(app, folder, entry, alias=alias)


@contextmanager
def running_platform(
    home: Path, *, extra_env: dict[str, str] | None = None, log_name: str = "platform.log"
) -> Iterator[Platform]:
    """Start ``klieg up`` in ``home`` on a free port; stop it (SIGINT) afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    env.update(
        KLIEG_LEASE_S="5",
        KLIEG_SETUP_BACKOFF_S="30",
        KLIEG_MAX_BODY_BYTES=str(1024 * 1024),
    )
    env.update(extra_env or {})
    home.mkdir(parents=True, exist_ok=True)
    with open(home / log_name, "ab") as log, launched(home, free_port(), env=env, log=log) as url:
        yield Platform(url=url, home=home)
