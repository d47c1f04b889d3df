"""Platform subcommands of ``klieg``, registered through the ``klieg.cli`` entry point group:
``klieg up``, ``klieg demo``, ``klieg worker``, ``klieg gateway``, ``klieg autoscaler``. Their
failures are reported by ``klieg``'s ``main`` like every other command's: one ``error:`` line and
a non-zero exit.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klieg.exceptions import InvalidRequestError, KliegError

if TYPE_CHECKING:
    from klieg_platform.config import Settings


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {port}")
    return port


def _settings() -> Settings:
    """``Settings.from_env()``; a KLIEG_* variable that does not parse is a ``ConfigError``."""
    from klieg_platform.config import Settings

    try:
        return Settings.from_env()
    except ValueError as exc:
        detail = f"a KLIEG_* setting does not parse: {exc}"
        raise KliegError(detail, error_type="ConfigError") from None


def _up(args: argparse.Namespace) -> int:
    from klieg_platform.local import up

    settings = _settings()
    if args.port is not None:
        settings = settings.with_(port=args.port)
    if args.home is not None:
        settings = settings.with_(home=Path(args.home).resolve())
    if args.queue_port is not None:
        settings = settings.with_(queue_port=args.queue_port)
    if args.tls:
        from klieg_platform import tls

        made = tls.ensure(settings.home)
        settings = settings.with_(tls_cert=made.cert, tls_key=made.key)
        if settings.queue_port is None:
            settings = settings.with_(queue_port=settings.port + 1)
    return up(settings, ready_file=Path(args.ready_file) if args.ready_file else None)


def _demo(args: argparse.Namespace) -> int:
    from klieg_platform.demo import main

    apps = Path(args.apps)
    if not apps.is_dir():
        raise InvalidRequestError(f"--apps {args.apps}: no such folder")
    return main(port=args.port, apps_dir=apps)


def worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's options, for ``python -m klieg_platform.worker`` and ``klieg worker``."""
    parser.add_argument("--pool", action="append", help="pool to serve (repeat); default: all")
    parser.add_argument("--slots", type=int, default=None, help="concurrent work (no GPUs)")
    parser.add_argument(
        "--gpus", default=None,
        help="GPU slots: a count (ids 0..N-1), ids 0,2,3 or all; runners get CUDA_VISIBLE_DEVICES",
    )  # fmt: skip
    parser.add_argument(
        "--no-workflows", action="store_true", help="do not run a workflow executor here"
    )


def _worker(args: argparse.Namespace) -> int:
    from klieg_platform.worker.__main__ import run

    run(args)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from klieg_platform.gateway.__main__ import main

    main()
    return 0


def _autoscaler(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import signal

    from klieg_platform.autoscaler import Autoscaler, KubernetesAdapter, LocalAdapter, load_plans
    from klieg_platform.broker import UNAVAILABLE
    from klieg_platform.local import settings_env
    from klieg_platform.services import open_broker, open_registry

    plans = load_plans(Path(args.config))
    settings = _settings()
    adapter: Any
    if args.adapter == "kubernetes":
        try:
            adapter = KubernetesAdapter()
        except Exception as exc:
            raise KliegError(
                f"no Kubernetes API to talk to: {exc}", error_type="ConfigError"
            ) from None
    else:
        adapter = LocalAdapter(settings_env(settings))

    # the local adapter's workers belong to the autoscaler that runs them: one round and out
    # would leave them behind, so --once with it only decides
    dry_run = args.dry_run or (args.once and isinstance(adapter, LocalAdapter))

    async def run() -> int:
        broker = open_broker(settings)
        registry = open_registry(settings)
        scaler = Autoscaler(broker, registry, plans, adapter, interval_s=args.interval,
                            dry_run=dry_run, probe_dir=settings.probe_dir)  # fmt: skip
        try:
            if args.once:
                try:
                    step = await scaler.step()
                except UNAVAILABLE as exc:
                    detail = f"Redis at {settings.effective_redis_url} does not answer: {exc}"
                    raise KliegError(detail, error_type="UnavailableError") from None
                print(json.dumps({"decided": step.decided, "applied": step.applied,
                                  "errors": step.errors, "dry_run": dry_run}))  # fmt: skip
                return 1 if step.errors else 0
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, scaler.stop)
            await scaler.run()
            return 0
        finally:
            await broker.close()
            registry.close()
            if isinstance(adapter, LocalAdapter):
                await asyncio.to_thread(adapter.close)

    return asyncio.run(run())


def _images(args: argparse.Namespace) -> int:
    from klieg_platform import images
    from klieg_platform.services import open_registry

    settings = _settings()
    client = images.engine(docker_host=settings.docker_host)
    registry = open_registry(settings)
    try:
        revisions = registry.aliased_revisions() if args.envs else []
    finally:
        registry.close()
    built = images.build_all(
        client, args.tag, revisions, push=args.push,
        gpu_base=args.gpu_base or images.GPU_BASE, envs=args.envs,
    )  # fmt: skip
    for b in built:
        print(f"{b.name}{'  pushed' if b.pushed else ''}")
    if args.manifests:
        for path in images.write_manifests(Path(args.manifests), built):
            print(f"wrote {path}")
    return 0


def _manifests_check(args: argparse.Namespace) -> int:
    import sys

    from klieg_platform import manifests

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    docs = manifests.load(text)
    manifests.check(docs)
    print(f"{len(docs)} objects: every check passed")
    return 0


def register(sub: Any) -> None:
    """Add the platform's subcommands to the ``klieg`` parser."""
    up = sub.add_parser("up", help="run the whole platform locally (embedded Redis, SQLite)")
    up.add_argument("--port", type=_port, default=None, help="gateway port (default 8000)")
    up.add_argument("--home", default=None, help="data folder (default $KLIEG_HOME or ~/.klieg)")
    up.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a local CA under $KLIEG_HOME/tls and a queue listener "
        "(fal-client compatible); prints the exports fal-client needs",
    )
    up.add_argument(
        "--queue-port",
        type=_port,
        default=None,
        help="also listen here as fal's queue host (default with --tls: port + 1)",
    )
    up.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=_up)

    demo = sub.add_parser("demo", help="start the platform, deploy the example apps, call them")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument("--apps", default="apps")
    demo.set_defaults(func=_demo)

    worker = sub.add_parser("worker", help="run a worker agent: its pools, slots, GPUs")
    worker_arguments(worker)
    worker.set_defaults(func=_worker)

    gateway = sub.add_parser("gateway", help="run the gateway")
    gateway.set_defaults(func=_gateway)

    scale = sub.add_parser(
        "autoscaler", help="size each pool's workers from its queue and the tiers' SLOs"
    )
    scale.add_argument("--config", required=True, help="pools.yaml: each pool's scaling settings")
    scale.add_argument(
        "--adapter", choices=("local", "kubernetes"), default="local",
        help="start klieg worker processes here, or scale each pool's Deployment",
    )  # fmt: skip
    scale.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    scale.add_argument(
        "--once", action="store_true",
        help="one round; print it as JSON (with the local adapter: decide only, start nothing)",
    )  # fmt: skip
    scale.add_argument("--dry-run", action="store_true", help="decide, change nothing")
    scale.set_defaults(func=_autoscaler)

    imgs = sub.add_parser("images", help="container images of the platform and of its envs")
    verbs = imgs.add_subparsers(dest="images_cmd", required=True)
    build = verbs.add_parser("build", help="build them with the Docker engine (Docker SDK)")
    build.add_argument("--push", metavar="REGISTRY", help="tag under REGISTRY and push")
    build.add_argument("--tag", default="dev", help="the platform images' tag (default dev)")
    build.add_argument("--gpu-base", default=None, help="base image of GPU pools (CUDA runtime)")
    build.add_argument("--no-envs", dest="envs", action="store_false",
                       help="only the platform images")  # fmt: skip
    build.add_argument(
        "--manifests", metavar="DIR",
        help="write DIR/k8s (a kustomize Component) and DIR/compose.yaml: the workers' init "
        "containers (one-shot services) that seed their env stores from the env images",
    )  # fmt: skip
    build.set_defaults(func=_images)

    mf = sub.add_parser("manifests", help="Kubernetes manifests of a Klieg deployment")
    mverbs = mf.add_subparsers(dest="manifests_cmd", required=True)
    chk = mverbs.add_parser(
        "check", help="check rendered manifests: kubectl kustomize infra/k8s/overlays/X | ... -"
    )
    chk.add_argument("file", help="a multi-document YAML file, or - for stdin")
    chk.set_defaults(func=_manifests_check)
