"""``python -m klieg_platform.gateway``: serve the gateway with uvicorn on uvloop + httptools.

One server, one app, one lifespan: it listens on ``settings.port`` and, when set, on
``settings.queue_port`` (see ``gateway/listeners.py``), over HTTPS when ``settings.tls_cert`` and
``settings.tls_key`` are both set.
"""

from __future__ import annotations

import uvicorn

from klieg_platform.config import Settings
from klieg_platform.gateway.app import create_app
from klieg_platform.gateway.listeners import sockets

STARTUP_FAILURE = 3


def main() -> None:
    settings = Settings.from_env()
    config = uvicorn.Config(
        create_app(settings),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        ssl_certfile=str(settings.tls_cert) if settings.tls else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls else None,
    )
    server = uvicorn.Server(config)
    server.run(sockets=sockets(settings))
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
