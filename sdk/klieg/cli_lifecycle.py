"""The ``klieg`` commands of an app's life beyond its deploy: ``call`` (items and logs as they
come), ``run`` (the dev loop), ``apps scale``, ``apps delete`` and ``revisions prune``; and the
helpers every command shares (``admin_for``, ``print_json``). ``cli.py`` wires them in.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from klieg.admin import AdminClient
from klieg.client import RequestHandle, split_app_id
from klieg.exceptions import InvalidRequestError, NotFoundError


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def admin_for(args: argparse.Namespace) -> AdminClient:
    """The management client, with ``--timeout`` when one was given."""
    return AdminClient() if args.timeout is None else AdminClient(timeout=args.timeout)


def _print_log(line: dict[str, Any]) -> None:
    """One log line of a request on stderr, as ``klieg logs`` prints it."""
    level, message = line.get("level", ""), line.get("message", "")
    print(f"{line.get('timestamp', '')} {level:7} {message}", file=sys.stderr, flush=True)


def _print_item(value: Any) -> None:
    """One output (or one item of a generator endpoint) on stdout, at once."""
    print_json(value)
    sys.stdout.flush()


def cmd_call(args: argparse.Namespace) -> int:
    """Sync by default: each item of a generator endpoint is printed as it arrives (the output
    of any other endpoint once). ``--logs``: the request's log lines go to stderr while it
    runs. ``--queue``: submit, print the request id and return; with ``--wait``, follow it and
    print its result (as ``--queue`` alone did before ``--wait`` existed)."""
    try:
        payload = json.loads(args.json) if args.json else {}
    except ValueError as exc:
        raise InvalidRequestError(f"--json is not valid JSON: {exc}") from None
    if args.wait and not args.queue:
        raise InvalidRequestError("--wait goes with --queue (a call without it always waits)")
    priority, hint = args.priority, args.hint
    with admin_for(args) as client:
        if args.queue:
            handle = client.submit(args.app_id, payload, priority=priority, hint=hint)
            if not args.wait:
                print(
                    f"request {handle.request_id} queued; follow it with: klieg request "
                    f"{handle.request_id}",
                    file=sys.stderr,
                )
                print(handle.request_id)
                return 0
            print(f"request {handle.request_id} queued", file=sys.stderr)
            if args.logs:
                client.follow(handle, _print_log)
            _print_item(client.wait(handle))
        elif args.logs:
            _call_with_logs(client, args.app_id, payload, priority)
        else:
            for item in client.call(args.app_id, payload, priority=priority, hint=hint):
                _print_item(item)
    return 0


def _call_with_logs(
    client: AdminClient, app_id: str, payload: dict[str, Any], priority: str | None
) -> None:
    """A call whose log lines go to stderr as they are logged: a generator endpoint through
    its stream (its logs followed beside it), any other through the queue."""
    owner, app, _ = split_app_id(app_id)
    followers: list[threading.Thread] = []

    def follow(request_id: str) -> None:
        handle = RequestHandle(f"{owner}/{app}", request_id, "", "", "")
        thread = threading.Thread(
            target=lambda: client.follow(handle, _print_log), name="klieg-logs", daemon=True
        )
        thread.start()
        followers.append(thread)

    try:
        for item in client.stream(app_id, payload, on_request=follow, priority=priority):
            _print_item(item)
    except NotFoundError:
        if followers:
            raise
        handle = client.submit(app_id, payload, priority=priority)  # not a generator endpoint
        client.follow(handle, _print_log)
        _print_item(client.result(handle.app_id, handle.request_id))
    for thread in followers:
        thread.join(timeout=10)


def cmd_run(args: argparse.Namespace) -> int:
    """The dev loop (``klieg.dev``): serve the app file's folder, reload on save, Ctrl-C to
    stop and remove the session."""
    from klieg.dev import DevSession

    with admin_for(args) as admin:
        DevSession(admin, Path(args.path), args.app).run()
    return 0


SCALE_SETTINGS = ("keep_alive", "min_concurrency", "max_concurrency", "concurrency_buffer")


def cmd_apps_scale(args: argparse.Namespace) -> int:
    """Without settings, the app's scaling as it is; with some, change them live."""
    settings = {n: getattr(args, n) for n in SCALE_SETTINGS if getattr(args, n) is not None}
    if args.reset and settings:
        raise InvalidRequestError("--reset drops the overrides: give no settings with it")
    with admin_for(args) as admin:
        out = admin.scale(args.app, function=args.function, reset=args.reset, **settings)
    if args.json:
        print_json(out)
        return 0
    print(f"{out['app']} (revision {out['revision']}):")
    for fn in out["functions"]:
        print(
            f"  {fn['function']}  keep_alive {fn['keep_alive']:g}s  min {fn['min_concurrency']}"
            f"  max {fn['max_concurrency']}  buffer {fn['concurrency_buffer']}"
        )
    for o in out["overrides"]:
        set_here = ", ".join(f"{n}={o[n]:g}" for n in SCALE_SETTINGS if o[n] is not None)
        print(f"  overridden for {o['function'] or 'the whole app'}: {set_here}")
    if not out["overrides"]:
        print("  no overrides: each function's decorator settings apply")
    return 0


def prune(args: argparse.Namespace, app: str) -> int:
    with admin_for(args) as admin:
        out = admin.prune_revisions(app, args.keep)
    if args.json:
        print_json(out)
        return 0
    for rid in out["retired"]:
        print(f"pruned {rid}")
    print(
        f"{out['app']}: {len(out['retired'])} revision(s) pruned, {len(out['kept'])} kept; "
        "their code and unused envs go once no request needs them",
        file=sys.stderr,
    )
    return 0


def cmd_apps_delete(args: argparse.Namespace) -> int:
    """Asks first on a terminal; elsewhere (a script) only ``--yes`` deletes."""
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidRequestError(f"deleting {args.app} needs --yes")
        answer = input(f"delete app {args.app}, its aliases and revisions? type its name: ")
        if answer.strip() != args.app:
            raise InvalidRequestError("not deleted: the name typed did not match")
    with admin_for(args) as admin:
        out = admin.delete_app(args.app)
    print(
        f"deleted {out['app']}: new requests get 404; {len(out['retired'])} revision(s) are "
        "collected once their queued and running requests finish"
    )
    return 0


def lifecycle_parsers(sub: Any, apps: Any) -> None:
    """``run`` and ``call`` under ``sub``; ``delete`` and ``scale`` under ``apps``."""
    run = sub.add_parser(
        "run", help="serve an app file as a dev session: reload on save, logs here, Ctrl-C ends"
    )
    run.add_argument("path")
    run.add_argument("--app", help="app name, when the file defines several")
    run.set_defaults(func=cmd_run)
    call = sub.add_parser(
        "call", help="call owner/app[@ref][/path] and print its output (each item of a generator)"
    )
    call.add_argument("app_id")
    call.add_argument("--json", help="request body (JSON)")
    call.add_argument("--logs", action="store_true", help="stream its log lines to stderr")
    call.add_argument(
        "--queue", action="store_true", help="submit through the queue and print the request id"
    )
    call.add_argument("--wait", action="store_true", help="with --queue: wait and print the result")
    call.add_argument(
        "--priority",
        choices=("normal", "low"),
        help="queue priority (X-Fal-Queue-Priority): low waits behind your normal requests",
    )
    call.add_argument(
        "--hint", help="runner hint (X-Fal-Runner-Hint): prefer a runner whose app reports it"
    )
    call.set_defaults(func=cmd_call)
    de = apps.add_parser("delete", help="delete an app (running and queued requests finish)")
    de.add_argument("app")
    de.add_argument("--yes", action="store_true", help="do not ask (needed off a terminal)")
    de.set_defaults(func=cmd_apps_delete)
    sc = apps.add_parser(
        "scale", help="change a live app's scaling without a redeploy (none: show it)"
    )
    sc.add_argument("app")
    sc.add_argument("--function", help="only this function (default: every function)")
    sc.add_argument("--keep-alive", type=float, help="seconds an idle runner is kept")
    sc.add_argument("--min-concurrency", type=int, help="runners kept warm across the platform")
    sc.add_argument("--max-concurrency", type=int, help="runners per worker at most")
    sc.add_argument("--concurrency-buffer", type=int, help="warm runners kept beyond the busy ones")
    sc.add_argument("--reset", action="store_true", help="drop the overrides")
    sc.add_argument("--json", action="store_true", help="print the JSON the gateway answered")
    sc.set_defaults(func=cmd_apps_scale)
