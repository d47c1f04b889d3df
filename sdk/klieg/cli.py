"""The ``klieg`` command. Talks to ``KLIEG_URL`` with ``KLIEG_KEY``; the platform package adds
``klieg up``, ``klieg demo`` and ``klieg worker`` through the ``klieg.cli`` entry point group.

Example::

    klieg keys create                      # prints id:secret on its last line
    klieg keys create --scope call --expires-in 30d
    klieg keys list && klieg keys revoke k_...
    export KLIEG_KEY=...
    klieg deploy apps/echo/app.py --alias prod
    klieg call local/echo --json '{"text": "hi"}' --logs
    klieg workflow create movie.yaml --name digits-movie

Every failure (a refused key, an unreachable gateway, an error reply, bad input) is one line on
stderr, ``error: <error type>: <detail>``, and a non-zero exit status; ``KLIEG_DEBUG=1`` prints
the traceback above that line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import yaml

from klieg.admin import load_app
from klieg.cli_lifecycle import admin_for, lifecycle_parsers, print_json, prune
from klieg.exceptions import InvalidRequestError, KliegError
from klieg.workflow import load_workflow

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a writer whose reader left (``klieg ... | head``)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h`` or ``30d`` in seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 90s, 15m, 12h, 30d)"
        ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive: {text!r}")
    return seconds


def cmd_keys_create(args: argparse.Namespace) -> int:
    out = admin_for(args).create_key(
        args.tenant,
        label=args.label,
        tier=args.tier,
        scope=args.scope,
        expires_in_s=args.expires_in,
        rate_per_s=args.rate,
        burst=args.burst,
    )
    print(
        f"created key for tenant {out['tenant']}; export it with: export KLIEG_KEY={out['key']}",
        file=sys.stderr,
    )
    print(out["key"])
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        found = admin.list_keys()
    for key in found:
        state = "active" if key["active"] else ("revoked" if key["revoked_at"] else "expired")
        expires = "never" if key["expires_at"] is None else _when(key["expires_at"])
        label = key["label"] or ""
        print(f"{key['key_id']}  {key['scope']:<6}  {state:<7}  expires {expires}  {label}")
    return 0


def _when(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch_s))


def cmd_workers(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        found = admin.workers()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no live workers", file=sys.stderr)
    for w in found:
        flags = "  draining" if w["draining"] else ""
        gpus = f"  gpus {','.join(map(str, w['gpu_ids']))}" if w["gpu_ids"] else ""
        memory = w.get("memory") or {}
        budget = memory.get("budget_bytes") or 0
        used = f"  memory {_mib(memory.get('used_bytes'))}" + (f"/{_mib(budget)}" if budget else "")
        print(
            f"{w['id']}  pools {','.join(w['pools'])}  slots {w['slots_held']}/{w['slots']}"
            f"{gpus}{used}  cold starts {w['cold_starts']}  seen {w['seen_s_ago']}s ago{flags}"
        )
        for r in w["runners"]:
            idle = f" {r['idle_s']}s" if r["state"] == "idle" else ""
            held = f"  gpus {','.join(map(str, r['gpus']))}" if r["gpus"] else ""
            size = f"  {_mib(r['memory_bytes'])}" if r.get("memory_bytes") else ""
            print(f"    {r['function']}  {r['state']}{idle}{held}{size}")
        for z in w.get("zygotes", []):
            what = f"revision {z['revision']}" if z.get("revision") else f"env {z['env']}"
            size = f"  {_mib(z['memory_bytes'])}" if z.get("memory_bytes") else ""
            code = f"  code {','.join(z['code'])}" if z.get("code") else ""
            print(
                f"    zygote of {what}  pid {z['pid']}{size}  preload "
                f"{','.join(z['preload']) or '-'}{code}  idle {z['idle_s']}s  forks {z['forks']}"
            )
    return 0


def _mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.0f} MiB"


def cmd_runners(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        found = admin.runners(args.app)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no runners", file=sys.stderr)
    by_revision: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in found:
        by_revision.setdefault((r["app"], r["revision"]), []).append(r)
    for (app, revision), runners in sorted(by_revision.items()):
        print(f"{app or '?'}  revision {revision}")
        for r in runners:
            idle = f" {r['idle_s']}s" if r["state"] == "idle" else ""
            held = f"  gpus {','.join(map(str, r['gpus']))}" if r["gpus"] else ""
            print(f"    {r['function']}  {r['state']}{idle}  on {r['worker']}{held}")
    return 0


def cmd_pools(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        found = admin.pools()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no pools yet", file=sys.stderr)
    for p in found:
        slots, runners = p["slots"], p["runners"]
        states = " ".join(f"{n} {runners[n]}" for n in runners if runners[n])
        print(
            f"{p['pool']}  workers {p['workers']}  slots {slots['busy']} busy/{slots['held']} held"
            f"/{slots['total']}  runners {states or 'none'}  queued {p['queued']}"
        )
        for q in p["queue"]:
            if q["queued"]:
                wait = q["oldest_wait_s"]
                print(f"    {q['tier']:<10}  {q['queued']} queued, oldest {wait:.1f}s")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        out = admin.revoke_key(args.key_id)
    print(f"{out['key_id']} {'revoked' if out['revoked'] else 'was already revoked'}")
    return 0


def cmd_secrets_set(args: argparse.Namespace) -> int:
    """The value comes from stdin (never the command line, where ps and shell history see it);
    one trailing newline is dropped."""
    value = sys.stdin.read()
    value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise InvalidRequestError("no value on stdin: echo -n VALUE | klieg secrets set NAME")
    with admin_for(args) as admin:
        out = admin.set_secret(args.name, value)
    print(f"secret {out['name']} set")
    return 0


def cmd_secrets_list(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        for secret in admin.list_secrets():
            print(f"{secret['name']}  set {_when(secret['updated_at'])}")
    return 0


def cmd_secrets_delete(args: argparse.Namespace) -> int:
    with admin_for(args) as admin:
        admin.delete_secret(args.name)
    print(f"secret {args.name} deleted")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    app, folder, entry = load_app(args.path, args.app)
    with admin_for(args) as admin:
        done = admin.deploy(
            app,
            folder,
            entry,
            alias=args.alias,
            progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
            reset_scale=args.reset_scale,
        )
    env = "built" if done["env_built"] else "reused"
    print(
        f"deployed {done['owner']}/{done['app']} revision {done['revision']} "
        f"(env {done['env_key'][:12]} {env}); alias {done['alias']} -> {done['revision']}"
    )
    for warning in done.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_apps_list(args: argparse.Namespace) -> int:
    apps = admin_for(args).apps()
    if args.json:
        print_json(apps)
    for a in [] if args.json else apps:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(a["aliases"].items()))
        print(f"{a['owner']}/{a['name']}  {aliases}")
    return 0


def cmd_revisions(args: argparse.Namespace) -> int:
    """``klieg revisions APP`` lists; ``klieg revisions prune APP [--keep N]`` prunes."""
    words = args.words
    if words[0] == "prune" and len(words) == 2:
        return prune(args, words[1])
    if len(words) != 1:
        raise InvalidRequestError("usage: klieg revisions APP, or klieg revisions prune APP")
    if args.keep is not None:
        raise InvalidRequestError("--keep goes with klieg revisions prune APP")
    revs = admin_for(args).revisions(words[0])
    if args.json:
        print_json(revs)
    for r in [] if args.json else revs:
        print(
            f"{r['id']}  env {r['env_key'][:12]}  code {r['code_hash'][:12]}"
            f"{' (preloaded)' if r.get('preload_code') else ''}  {','.join(r['aliases'])}"
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
    out = admin_for(args).set_alias(args.app, args.alias, args.revision)
    _print_moved(out["app"], out)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    out = admin_for(args).rollback(args.app, args.alias)
    _print_moved(out["app"], out)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """FILE: ``apps: {NAME: {aliases: {ALIAS: revision-id-or-alias}}}``."""
    shape = f"{args.file}: expected a mapping 'apps: {{name: {{aliases: {{alias: revision}}}}}}'"
    with open(args.file) as f:
        try:
            doc = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise InvalidRequestError(f"{args.file} is not YAML: {exc}") from None
    apps = doc.get("apps") if isinstance(doc, dict) else None
    if not isinstance(apps, dict):
        raise InvalidRequestError(shape)
    plan: list[tuple[str, str, str]] = []
    for name, entry in apps.items():
        aliases = entry.get("aliases") if isinstance(entry, dict) else entry
        if not isinstance(aliases or {}, dict):
            raise InvalidRequestError(f"{shape}; got {entry!r} for {name}")
        plan += [(str(name), str(alias), str(ref)) for alias, ref in (aliases or {}).items()]
    admin = admin_for(args)
    for name, alias, ref in plan:
        _print_moved(name, admin.set_alias(name, alias, ref))
    return 0


def cmd_apps_share(args: argparse.Namespace) -> int:
    out = admin_for(args).share(args.app, *_visibility(args))
    _print_shared(out["app"], out)
    return 0


def cmd_apps_caller_logs(args: argparse.Namespace) -> int:
    out = admin_for(args).set_caller_logs(args.app, args.state == "on")
    shown = "logs and full errors" if out["caller_logs"] else "error types and messages only"
    print(f"{out['app']}: callers see {shown}")
    return 0


def cmd_apps_limit(args: argparse.Namespace) -> int:
    out = admin_for(args).limit_app(args.app, args.max_inflight)
    print(f"{out['app']}: at most {out['max_inflight'] or 'unlimited'} running requests")
    return 0


def cmd_tenants_set(args: argparse.Namespace) -> int:
    out = admin_for(args).set_tenant(args.name, tier=args.tier, max_inflight=args.max_inflight)
    print(f"tenant {out['tenant']}: tier {out['tier']}, max_inflight {out['max_inflight']}")
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    since = time.time() - args.since if args.since is not None else None
    with admin_for(args) as client:
        page = client.requests(
            args.app, status=args.status, since=since, limit=args.limit, after=args.after
        )
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    if not page["requests"]:
        print("no requests", file=sys.stderr)
    for r in page["requests"]:
        ended = r["outcome"] or r["status"]
        error = f"  {r['error_type']}" if r["error_type"] else ""
        timing = _timings(r)
        print(f"{r['request_id']}  {_when(r['created_at'])}  {_target(r)}  {ended}{error}{timing}")
    if page["next"]:
        print(f"older ones: --after {page['next']}", file=sys.stderr)
    return 0


def _target(request: dict[str, Any]) -> str:
    """``owner/app`` and the endpoint's path, the root endpoint as the app alone."""
    endpoint = (request["endpoint"] or "/").rstrip("/")
    return f"{request['app']}{endpoint}"


def _timings(request: dict[str, Any]) -> str:
    """A request's timings, as ``klieg requests`` and ``klieg request`` print them."""
    names = (("queued", "queue_s"), ("ran", "run_s"), ("cold", "cold_start_s"),
             ("setup", "setup_s"))  # fmt: skip
    return "".join(
        f"  {name} {request[key]:.3f}s" for name, key in names if request.get(key) is not None
    )


def cmd_request(args: argparse.Namespace) -> int:
    with admin_for(args) as client:
        found = client.request(args.request_id, with_output=True)
    outcome, output = found["outcome"], found["output"]
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    timing = _timings(found)
    print(f"{found['request_id']}  {_target(found)}  revision "
          f"{found['revision']}  {outcome or found['status']}{timing}")  # fmt: skip
    stored = "(stored in the blob store)" if found["input_stored"] else json.dumps(found["input"])
    print(f"input: {stored}")
    if found["error"]:
        print(f"error: {found['error_type']}: {found['error']}")
    if output is not None:
        print(f"output: {json.dumps(output)}")
    for line in found["logs"]:
        print(f"  {line.get('timestamp', '')} {line.get('level', ''):7} {line.get('message', '')}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    for line in admin_for(args).logs(args.request_id):
        print(f"{line.get('timestamp', '')} {line.get('level', ''):7} {line.get('message', '')}")
    return 0


def cmd_workflow_create(args: argparse.Namespace) -> int:
    path = Path(args.file)
    doc = load_workflow(path)
    name = args.name or doc.name or path.stem
    out = admin_for(args).put_workflow(name, doc, alias=args.alias)
    state = "created" if out["created"] else "unchanged (same document)"
    print(
        f"workflow {out['name']} revision {out['revision']} {state}; {out['alias']} -> "
        f"{out['revision']}"
    )
    return 0


def cmd_workflow_list(args: argparse.Namespace) -> int:
    flows = admin_for(args).list_workflows()
    if args.json:
        print_json(flows)
    for w in [] if args.json else flows:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(w["aliases"].items()))
        print(f"{w['name']}  {w['revisions']} revision(s)  {w['visibility']}  {aliases}")
    return 0


def cmd_workflow_show(args: argparse.Namespace) -> int:
    flow = admin_for(args).get_workflow(args.name)
    if args.json:
        print_json(flow)
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
    out = admin_for(args).set_workflow_alias(args.name, args.alias, args.revision)
    _print_moved(out["name"], out)
    return 0


def cmd_workflow_rollback(args: argparse.Namespace) -> int:
    out = admin_for(args).rollback_workflow(args.name, args.alias)
    _print_moved(out["name"], out)
    return 0


def cmd_workflow_share(args: argparse.Namespace) -> int:
    out = admin_for(args).share_workflow(args.name, *_visibility(args))
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klieg", description="Klieg: serverless media apps")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        help="seconds to wait for each reply of the gateway (default 600; a deploy's build "
        "stream is not limited)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    kc = keys.add_parser("create", help="create a key (bootstraps the first tenant)")
    kc.add_argument("--tenant", help="tenant for the key (admin only, unless bootstrapping)")
    kc.add_argument("--label")
    kc.add_argument("--tier", help="tier of a new tenant")
    kc.add_argument(
        "--scope", choices=["call", "deploy", "admin"], default=None,
        help="call: call apps; deploy: also manage apps; admin (default): also keys and tenants",
    )  # fmt: skip
    kc.add_argument("--expires-in", type=duration, help="lifetime, e.g. 12h or 30d")
    kc.add_argument("--rate", type=float, help="requests per second it may send (429 beyond)")
    kc.add_argument("--burst", type=int, help="requests it may send at once (default: --rate)")
    kc.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="the tenant's keys").set_defaults(func=cmd_keys_list)
    kr = keys.add_parser("revoke", help="revoke a key (every gateway refuses it at once)")
    kr.add_argument("key_id")
    kr.set_defaults(func=cmd_keys_revoke)

    rq = sub.add_parser("requests", help="your requests, newest first")
    rq.add_argument("app", nargs="?", help="only this app (name or owner/name)")
    rq.add_argument("--status", help="IN_QUEUE, IN_PROGRESS, COMPLETED, ok, error or cancelled")
    rq.add_argument("--since", type=duration, help="only those of the last 90s, 15m, 12h, 30d")
    rq.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    rq.add_argument("--after", help="the page after this cursor (printed under a full page)")
    rq.add_argument("--json", action="store_true", help="print the JSON the gateway answered")
    rq.set_defaults(func=cmd_requests)
    one = sub.add_parser("request", help="one of your requests: input, output, logs, timings")
    one.add_argument("request_id")
    one.add_argument("--json", action="store_true", help="print the JSON the gateway answered")
    one.set_defaults(func=cmd_request)
    wk = sub.add_parser("workers", help="live workers and their runners (admin)")
    wk.add_argument("--json", action="store_true", help="print the JSON the gateway answered")
    wk.set_defaults(func=cmd_workers)
    rn = sub.add_parser("runners", help="your apps' runners by revision: state, idle time, GPUs")
    rn.add_argument("app", nargs="?", help="only this app (name or owner/name)")
    rn.add_argument("--json", action="store_true", help="print the JSON the gateway answered")
    rn.set_defaults(func=cmd_runners)
    pl = sub.add_parser("pools", help="pools: workers, slots, runners, queue per tier (admin)")
    pl.add_argument("--json", action="store_true", help="print the JSON the gateway answered")
    pl.set_defaults(func=cmd_pools)
    sec = sub.add_parser("secrets", help="app secrets (values from stdin, never shown again)")
    secrets = sec.add_subparsers(dest="secrets_cmd", required=True)
    ss = secrets.add_parser("set", help="set NAME from stdin: echo -n VALUE | klieg secrets set N")
    ss.add_argument("name")
    ss.set_defaults(func=cmd_secrets_set)
    secrets.add_parser("list", help="names and when set").set_defaults(func=cmd_secrets_list)
    sd = secrets.add_parser("delete", help="delete a secret")
    sd.add_argument("name")
    sd.set_defaults(func=cmd_secrets_delete)

    dp = sub.add_parser("deploy", help="deploy an app file as a new immutable revision")
    dp.add_argument("path")
    dp.add_argument("--alias", default="latest")
    dp.add_argument("--app", help="app name, when the file defines several")
    dp.add_argument(
        "--reset-scale",
        action="store_true",
        help="drop the app's scale overrides (klieg apps scale); they are kept by default",
    )
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

    lifecycle_parsers(sub, apps)

    tenants = sub.add_parser("tenants", help="tenants (admin)").add_subparsers(
        dest="tenants_cmd", required=True
    )
    ts = tenants.add_parser("set", help="change a tenant's tier or in-flight cap")
    ts.add_argument("name")
    ts.add_argument("--tier")
    ts.add_argument("--max-inflight", type=int)
    ts.set_defaults(func=cmd_tenants_set)

    rv = sub.add_parser(
        "revisions",
        help="revisions of an app, newest first; 'prune APP' retires the old unaliased ones",
        usage="klieg revisions [--json] APP | klieg revisions prune APP [--keep N] [--json]",
    )
    rv.add_argument("words", nargs="+", metavar="APP")
    rv.add_argument(
        "--keep", type=int, help="with prune: newest revisions kept besides aliased (default 5)"
    )
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

    lg = sub.add_parser("logs", help="print a request's log lines")
    lg.add_argument("request_id")
    lg.set_defaults(func=cmd_logs)

    _workflow_parser(sub)

    for ep in entry_points(group="klieg.cli"):
        ep.load()(sub)
    return parser


def _one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def _url_of(exc: httpx.HTTPError) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:
        return "the gateway"


def _describe(exc: Exception) -> tuple[str, str]:
    """``(error type, detail)`` of the error a command ended with: Klieg errors by their wire
    type, transport failures as ``UnavailableError`` or ``RequestTimeoutError`` naming the URL,
    other errors by their class name."""
    if isinstance(exc, KliegError):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
        return exc.error_type, detail
    if isinstance(exc, httpx.TimeoutException):
        reason = str(exc) or "timed out"
        return "RequestTimeoutError", f"no reply from {_url_of(exc)} in time ({reason})"
    if isinstance(exc, httpx.ConnectError):
        hint = "is the gateway running, and does KLIEG_URL name it?"
        return "UnavailableError", f"cannot reach {_url_of(exc)}: {exc} ({hint})"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "InvalidRequestError", f"{exc} (KLIEG_URL must start with http:// or https://)"
    if isinstance(exc, httpx.TransportError):
        return "UnavailableError", f"{_url_of(exc)}: {str(exc) or type(exc).__name__}"
    if isinstance(exc, httpx.InvalidURL):
        return "InvalidRequestError", f"not a valid URL: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        return type(exc).__name__, f"{exc.strerror}{where}"
    return type(exc).__name__, str(exc) or "(no message)"


def _say_error(line: str) -> None:
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run(argv: list[str] | None) -> int:
    """Parse ``argv``, run the command, return the exit status; never raises but ``SystemExit``
    (argparse's usage errors, status 2)."""
    debug = os.environ.get("KLIEG_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _say_error("error: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        error_type, detail = _describe(exc)
        _say_error(_one_line(f"error: {error_type}: {detail}"))
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    sys.exit(_run(argv))


if __name__ == "__main__":
    main()
