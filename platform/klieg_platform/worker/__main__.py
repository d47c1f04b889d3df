"""``python -m klieg_platform.worker [--pool P ...] [--slots N]``: run one worker agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop

from klieg_platform.config import Settings
from klieg_platform.packager import Packager
from klieg_platform.services import open_broker, open_registry, open_store
from klieg_platform.worker.agent import Worker


async def serve(settings: Settings, pools: tuple[str, ...], slots: int | None) -> None:
    broker = open_broker(settings)
    registry = open_registry(settings)
    worker = Worker(
        settings,
        broker,
        registry,
        Packager(settings),
        open_store(settings),
        pools=pools,
        slots=slots,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await broker.close()
        registry.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="klieg worker")
    parser.add_argument("--pool", action="append", help="pool to serve (repeat); default: all")
    parser.add_argument("--slots", type=int, default=None)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    pools = tuple(args.pool or settings.worker_pools or ("*",))
    uvloop.run(serve(settings, pools, args.slots))


if __name__ == "__main__":
    main()
