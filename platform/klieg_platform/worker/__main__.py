"""``python -m klieg_platform.worker [--pool P ...] [--slots N] [--no-workflows]``: run one
worker agent and, unless ``--no-workflows``, a workflow executor beside it (workflows cost no
slots: they only queue their nodes and wait)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess

import uvloop

from klieg_platform.cli import worker_arguments
from klieg_platform.config import Settings
from klieg_platform.packager import Packager
from klieg_platform.services import open_broker, open_registry, open_store
from klieg_platform.worker.agent import Worker
from klieg_platform.workflows.executor import WorkflowExecutor


def parse_gpus(value: str | None) -> tuple[int, ...]:
    """``--gpus 4`` -> (0, 1, 2, 3); ``--gpus 2,3`` -> (2, 3); ``--gpus all``: every GPU
    ``nvidia-smi -L`` lists (in a container: those it was given); none -> ()."""
    if not value:
        return ()
    if value == "all":
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                    timeout=30, check=True).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise SystemExit(f"--gpus all: cannot list the GPUs with nvidia-smi ({exc})") from None
        return tuple(range(sum(1 for line in listed.splitlines() if line.startswith("GPU "))))
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
    worker_arguments(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Serve as a worker with the options ``cli.worker_arguments`` defines."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    pools = tuple(args.pool or settings.worker_pools or ("*",))
    gpus = parse_gpus(args.gpus)
    uvloop.run(serve(settings, pools, args.slots, gpus, workflows=not args.no_workflows))


if __name__ == "__main__":
    main()
