"""The ``klieg`` command. Talks to ``KLIEG_URL`` with ``KLIEG_KEY``; the platform package adds
``klieg up``, ``klieg demo`` and ``klieg worker`` through the ``klieg.cli`` entry point group.

Example::

    klieg keys create                      # prints id:secret on its last line
    export KLIEG_KEY=...
    klieg deploy apps/echo/app.py --alias prod
    klieg call local/echo --json '{"text": "hi"}'
    klieg workflow create movie.yaml --name digits-movie
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

from klieg.admin import AdminClient, load_app
from klieg.exceptions import KliegError
from klieg.workflow import load_workflow


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def cmd_keys_create(args: argparse.Namespace) -> int:
    out = AdminClient().create_key(args.tenant, label=args.label, tier=args.tier)
    print(
        f"created key for tenant {out['tenant']}; export it with: export KLIEG_KEY={out['key']}",
        file=sys.stderr,
    )
    print(out["key"])
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    app, folder, entry = load_app(args.path, args.app)
    with AdminClient() as admin:
        done = admin.deploy(
            app,
            folder,
            entry,
            alias=args.alias,
            progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
        )
    env = "built" if done["env_built"] else "reused"
    print(
        f"deployed {done['owner']}/{done['app']} revision {done['revision']} "
        f"(env {done['env_key'][:12]} {env}); alias {done['alias']} -> {done['revision']}"
    )
    return 0


def cmd_apps_list(args: argparse.Namespace) -> int:
    apps = AdminClient().apps()
    if args.json:
        _print_json(apps)
    for a in [] if args.json else apps:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(a["aliases"].items()))
        print(f"{a['owner']}/{a['name']}  {aliases}")
    return 0


def cmd_revisions(args: argparse.Namespace) -> int:
    revs = AdminClient().revisions(args.app)
    if args.json:
        _print_json(revs)
    for r in [] if args.json else revs:
        print(
            f"{r['id']}  env {r['env_key'][:12]}  code {r['code_hash'][:12]}  "
            f"{','.join(r['aliases'])}"
        )
    return 0


def _print_moved(name: str, out: dict[str, Any]) -> None:
    """An alias move (set or rollback) of an app or a workflow."""
    print(f"{name}: {out['alias']} -> {out['revision']} (was {out['previous']})")


def _visibility(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``share``'s ``--public`` / ``--tenants a,b`` / neither as (visibility, tenant names)."""
    if args.public:
        return "public", []
    if args.tenants:
        return "shared", [t for t in args.tenants.split(",") if t]
    return "private", []


def _print_shared(name: str, out: dict[str, Any]) -> None:
    shared = f" with {', '.join(out['shared_with'])}" if out["shared_with"] else ""
    print(f"{name}: {out['visibility']}{shared}")


def _share_args(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--public", action="store_true", help="any tenant")
    who.add_argument("--tenants", help="comma-separated tenant names")


def cmd_alias_set(args: argparse.Namespace) -> int:
    out = AdminClient().set_alias(args.app, args.alias, args.revision)
    _print_moved(out["app"], out)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    out = AdminClient().rollback(args.app, args.alias)
    _print_moved(out["app"], out)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """FILE: ``apps: {NAME: {aliases: {ALIAS: revision-id-or-alias}}}``."""
    with open(args.file) as f:
        doc = yaml.safe_load(f) or {}
    apps = doc.get("apps") if isinstance(doc, dict) else None
    if not isinstance(apps, dict):
        raise KliegError(f"{args.file}: expected a mapping 'apps: {{name: {{aliases: ...}}}}'")
    admin = AdminClient()
    for name, entry in apps.items():
        for alias, ref in ((entry or {}).get("aliases") or {}).items():
            _print_moved(str(name), admin.set_alias(str(name), str(alias), str(ref)))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    payload = json.loads(args.json) if args.json else {}
    client = AdminClient()
    if args.queue:
        handle = client.submit(args.app_id, payload)
        print(f"request {handle.request_id} queued", file=sys.stderr)
        _print_json(client.wait(handle))
    else:
        _print_json(client.run(args.app_id, payload))
    return 0


def cmd_apps_share(args: argparse.Namespace) -> int:
    out = AdminClient().share(args.app, *_visibility(args))
    _print_shared(out["app"], out)
    return 0


def cmd_apps_caller_logs(args: argparse.Namespace) -> int:
    out = AdminClient().set_caller_logs(args.app, args.state == "on")
    shown = "logs and full errors" if out["caller_logs"] else "error types and messages only"
    print(f"{out['app']}: callers see {shown}")
    return 0


def cmd_apps_limit(args: argparse.Namespace) -> int:
    out = AdminClient().limit_app(args.app, args.max_inflight)
    print(f"{out['app']}: at most {out['max_inflight'] or 'unlimited'} running requests")
    return 0


def cmd_tenants_set(args: argparse.Namespace) -> int:
    out = AdminClient().set_tenant(args.name, tier=args.tier, max_inflight=args.max_inflight)
    print(f"tenant {out['tenant']}: tier {out['tier']}, max_inflight {out['max_inflight']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    for line in AdminClient().logs(args.request_id):
        print(f"{line.get('timestamp', '')} {line.get('level', ''):7} {line.get('message', '')}")
    return 0


def cmd_workflow_create(args: argparse.Namespace) -> int:
    path = Path(args.file)
    doc = load_workflow(path)
    name = args.name or doc.name or path.stem
    out = AdminClient().put_workflow(name, doc, alias=args.alias)
    state = "created" if out["created"] else "unchanged (same document)"
    print(
        f"workflow {out['name']} revision {out['revision']} {state}; {out['alias']} -> "
        f"{out['revision']}"
    )
    return 0


def cmd_workflow_list(args: argparse.Namespace) -> int:
    flows = AdminClient().list_workflows()
    if args.json:
        _print_json(flows)
    for w in [] if args.json else flows:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(w["aliases"].items()))
        print(f"{w['name']}  {w['revisions']} revision(s)  {w['visibility']}  {aliases}")
    return 0


def cmd_workflow_show(args: argparse.Namespace) -> int:
    flow = AdminClient().get_workflow(args.name)
    if args.json:
        _print_json(flow)
        return 0
    print(f"workflow {flow['owner']}/{flow['name']} ({flow['visibility']})")
    for r in flow["revisions"]:
        print(f"  {r['id']}  {','.join(r['aliases'])}")
    current = flow["aliases"].get(args.alias)
    doc = next((r["document"] for r in flow["revisions"] if r["id"] == current), None)
    if doc is not None:
        print(f"document at {args.alias} ({current}):")
        print(yaml.safe_dump(doc, sort_keys=False).rstrip())
    return 0


def cmd_workflow_alias(args: argparse.Namespace) -> int:
    out = AdminClient().set_workflow_alias(args.name, args.alias, args.revision)
    _print_moved(out["name"], out)
    return 0


def cmd_workflow_rollback(args: argparse.Namespace) -> int:
    out = AdminClient().rollback_workflow(args.name, args.alias)
    _print_moved(out["name"], out)
    return 0


def cmd_workflow_share(args: argparse.Namespace) -> int:
    out = AdminClient().share_workflow(args.name, *_visibility(args))
    _print_shared(out["name"], out)
    return 0


def _workflow_parser(sub: Any) -> None:
    wf = sub.add_parser("workflow", help="workflows (documents chaining apps)")
    cmds = wf.add_subparsers(dest="workflow_cmd", required=True)
    create = cmds.add_parser("create", help="store a workflow file as a new revision")
    create.add_argument("file", help="workflow document (.yaml, .yml or .json)")
    create.add_argument("--name", help="workflow name (default: the document's, else the stem)")
    create.add_argument("--alias", default="latest")
    create.set_defaults(func=cmd_workflow_create)
    ls = cmds.add_parser("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_workflow_list)
    show = cmds.add_parser("show", help="a workflow's revisions and its document at an alias")
    show.add_argument("name")
    show.add_argument("--alias", default="latest")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_workflow_show)
    alias = cmds.add_parser("alias", help="point a workflow alias at a revision")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("revision", help="revision id, or another alias")
    alias.set_defaults(func=cmd_workflow_alias)
    rb = cmds.add_parser("rollback", help="move a workflow alias back to its previous revision")
    rb.add_argument("name")
    rb.add_argument("--alias", default="latest")
    rb.set_defaults(func=cmd_workflow_rollback)
    sh = cmds.add_parser("share", help="who may call a workflow (default: private)")
    sh.add_argument("name")
    _share_args(sh)
    sh.set_defaults(func=cmd_workflow_share)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klieg", description="Klieg: serverless media apps")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    kc = keys.add_parser("create", help="create a key (bootstraps the first tenant)")
    kc.add_argument("--tenant", help="tenant for the key (admin only, unless bootstrapping)")
    kc.add_argument("--label")
    kc.add_argument("--tier", help="tier of a new tenant")
    kc.set_defaults(func=cmd_keys_create)

    dp = sub.add_parser("deploy", help="deploy an app file as a new immutable revision")
    dp.add_argument("path")
    dp.add_argument("--alias", default="latest")
    dp.add_argument("--app", help="app name, when the file defines several")
    dp.set_defaults(func=cmd_deploy)

    apps = sub.add_parser("apps", help="apps").add_subparsers(dest="apps_cmd", required=True)
    al = apps.add_parser("list")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_apps_list)

    sh = apps.add_parser("share", help="who may call an app (default: private)")
    sh.add_argument("app")
    _share_args(sh)
    sh.set_defaults(func=cmd_apps_share)
    cl = apps.add_parser(
        "caller-logs", help="whether an app's callers see its logs and full errors (default: off)"
    )
    cl.add_argument("app")
    cl.add_argument("state", choices=["on", "off"])
    cl.set_defaults(func=cmd_apps_caller_logs)
    lim = apps.add_parser("limit", help="cap an app's running requests (0: no cap)")
    lim.add_argument("app")
    lim.add_argument("--max-inflight", type=int, required=True)
    lim.set_defaults(func=cmd_apps_limit)

    tenants = sub.add_parser("tenants", help="tenants (admin)").add_subparsers(
        dest="tenants_cmd", required=True
    )
    ts = tenants.add_parser("set", help="change a tenant's tier or in-flight cap")
    ts.add_argument("name")
    ts.add_argument("--tier")
    ts.add_argument("--max-inflight", type=int)
    ts.set_defaults(func=cmd_tenants_set)

    rv = sub.add_parser("revisions", help="revisions of an app, newest first")
    rv.add_argument("app")
    rv.add_argument("--json", action="store_true")
    rv.set_defaults(func=cmd_revisions)

    alias = sub.add_parser("alias", help="aliases").add_subparsers(dest="alias_cmd", required=True)
    aset = alias.add_parser("set")
    aset.add_argument("app")
    aset.add_argument("alias")
    aset.add_argument("revision", help="revision id, or another alias")
    aset.set_defaults(func=cmd_alias_set)

    rb = sub.add_parser("rollback", help="move an alias back to its previous revision")
    rb.add_argument("app")
    rb.add_argument("--alias", default="latest")
    rb.set_defaults(func=cmd_rollback)

    ap = sub.add_parser("apply", help="set the aliases of many apps from a YAML file")
    ap.add_argument("file")
    ap.set_defaults(func=cmd_apply)

    call = sub.add_parser("call", help="call owner/app[/path] and print the result")
    call.add_argument("app_id")
    call.add_argument("--json", help="request body (JSON)")
    call.add_argument("--queue", action="store_true", help="go through the queue API")
    call.set_defaults(func=cmd_call)

    lg = sub.add_parser("logs", help="print a request's log lines")
    lg.add_argument("request_id")
    lg.set_defaults(func=cmd_logs)

    _workflow_parser(sub)

    for ep in entry_points(group="klieg.cli"):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KliegError as exc:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        print(f"error: {exc.error_type}: {detail}", file=sys.stderr)
        code = 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
