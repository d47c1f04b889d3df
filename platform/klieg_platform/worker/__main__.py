"""``python -m klieg_platform.worker [--pool P ...] [--slots N] [--no-workflows]``: run one
worker agent and, unless ``--no-workflows``, a workflow executor beside it (workflows cost no
slots: they only queue their nodes and wait)."""

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
from klieg_platform.workflows.executor import WorkflowExecutor


def parse_gpus(value: str | None) -> tuple[int, ...]:
    """``--gpus 4`` -> (0, 1, 2, 3); ``--gpus 2,3`` -> (2, 3); none -> ()."""
    if not value:
        return ()
    if "," in value:
        return tuple(int(v) for v in value.split(",") if v)
    return tuple(range(int(value)))


async def serve(
    settings: Settings,
    pools: tuple[str, ...],
    slots: int | None,
    gpu_ids: tuple[int, ...],
    workflows: bool = True,
) -> None:
    broker = open_broker(settings)
    registry = open_registry(settings)
    store = open_store(settings)
    worker = Worker(
        settings,
        broker,
        registry,
        Packager(settings),
        store,
        pools=pools,
        slots=slots,
        gpu_ids=gpu_ids,
    )
    executor = WorkflowExecutor(settings, broker, registry, store) if workflows else None

    def stop() -> None:
        worker.stop()
        if executor is not None:
            executor.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await asyncio.gather(worker.run(), *([executor.run()] if executor else []))
    finally:
        await broker.close()
        registry.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="klieg worker")
    parser.add_argument("--pool", action="append", help="pool to serve (repeat); default: all")
    parser.add_argument("--slots", type=int, default=None, help="concurrent work (no GPUs)")
    parser.add_argument(
        "--gpus", default=None,
        help="GPU slots: a count (ids 0..N-1) or ids 0,2,3; runners get CUDA_VISIBLE_DEVICES",
    )  # fmt: skip
    parser.add_argument(
        "--no-workflows", action="store_true", help="do not run a workflow executor here"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    pools = tuple(args.pool or settings.worker_pools or ("*",))
    gpus = parse_gpus(args.gpus)
    uvloop.run(serve(settings, pools, args.slots, gpus, workflows=not args.no_workflows))


if __name__ == "__main__":
    main()
