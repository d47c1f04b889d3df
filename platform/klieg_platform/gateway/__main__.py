"""``python -m klieg_platform.gateway``: serve the gateway with uvicorn on uvloop + httptools."""

from __future__ import annotations

import uvicorn

from klieg_platform.config import Settings
from klieg_platform.gateway.app import create_app


def main() -> None:
    settings = Settings.from_env()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
