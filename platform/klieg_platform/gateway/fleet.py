"""The fleet views: workers, pools and their queues, as JSON, for the CLI and the console.

GET /workers   every live worker: pools, slots (total, held by runners, busy), GPU ids and what
               holds each, whether it drains, cold starts so far, when it was last heard from,
               its memory budget and use, each runner's "revision/function", state, idle time,
               memory and the GPUs it holds, and each zygote's env (short key) or revision,
               preload, pid, memory, idle time, forks and live children
GET /pools     per pool: live workers, slots (held by runners, busy, free), runners by state,
               zygotes (how many, their memory), and per tier the requests waiting and the
               oldest one's wait
GET /runners   every runner, with its worker, app, revision and function, state and idle time;
               ``?app=name`` (or ``owner/name``) only that app's

They come from Redis (heartbeats in ``keys.WORKERS``, the queues), so every gateway answers for
the whole fleet. The first two show every tenant's runners, so only an admin tenant's ``admin``
key sees them; ``/runners`` shows a tenant the runners of its own apps (an admin: all).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import PermissionDeniedError
from klieg_platform import keys
from klieg_platform.broker import Broker, Depth, now_ms
from klieg_platform.broker.claims import EachPeriod
from klieg_platform.broker.stats import Snapshot
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.contract import answers, query
from klieg_platform.gateway.state import gateway
from klieg_platform.registry_tables import Tenant

RUNNER_STATES = ("starting", "busy", "idle", "stopping")
"""A runner's states, in the order the views list them."""


def _operator(request: Request) -> None:
    if not auth.caller(request).admin:
        raise PermissionDeniedError("the fleet views are for an admin tenant")


MEMORY_FIGURES = ("budget_bytes", "used_bytes", "evicted_runners", "evicted_zygotes")
"""A worker's memory figures (``worker/memory.py``): its budget (0: none), what its runners and
zygotes take, and how many of each it stopped for the budget so far."""
BUSY_STATES = ("busy", "starting")
"""A runner in these states holds its slots for a request (or for the one it starts for)."""


def gpu_holders(gpu_ids: list[int], runners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each GPU id of a worker with the runner holding it: its "owner/app", function
    ("revision/function") and state; None for a free GPU."""
    held = {g: r for r in runners if r["state"] != "stopping" for g in r["gpus"]}
    return [{
        "id": g, "app": held[g].get("app", "") if g in held else None,
        "function": held[g]["function"] if g in held else None,
        "state": held[g]["state"] if g in held else None,
    } for g in gpu_ids]  # fmt: skip


def worker_view(worker_id: str, doc: dict[str, Any], now: int) -> dict[str, Any]:
    """One heartbeat document as the API shows it."""
    runners = list(doc.get("detail", []))
    held = sum(r["slots"] for r in runners if r["state"] != "stopping")
    gpu_ids = list(doc.get("gpu_ids", []))
    memory = doc.get("memory") or {}
    return {
        "id": worker_id,
        "pools": doc["pools"],
        "slots": int(doc["slots"]),
        "slots_held": held,
        "slots_busy": sum(r["slots"] for r in runners if r["state"] in BUSY_STATES),
        "gpu_ids": gpu_ids,
        "gpus": gpu_holders(gpu_ids, runners),
        "draining": bool(doc.get("draining", False)),
        "cold_starts": int(doc.get("cold_starts", 0)),
        "seen_s_ago": round(max(0, now - int(doc["seen_ms"])) / 1000, 1),
        "memory": {k: int(memory.get(k, 0)) for k in MEMORY_FIGURES},
        "runners": runners,
        "zygotes": list(doc.get("zygotes", [])),
    }


def pool_views(workers: list[dict[str, Any]], depths: list[Depth]) -> list[dict[str, Any]]:
    """Per pool (those that have had a request and those a worker names): workers, slots,
    runners by state, and the queue per tier. A worker serving every pool (``*``) counts in
    each."""
    named = {p for w in workers for p in w["pools"] if p != keys.ALL_POOLS}
    names = sorted({d.pool for d in depths} | named)
    out = []
    for name in names:
        serving = [w for w in workers if name in w["pools"] or keys.ALL_POOLS in w["pools"]]
        states = Counter(r["state"] for w in serving for r in w["runners"])
        busy = sum(w["slots_busy"] for w in serving)
        slots = sum(w["slots"] for w in serving)
        held = sum(w["slots_held"] for w in serving)
        mine = [d for d in depths if d.pool == name]
        queue = [
            {"tier": d.tier, "queued": d.queued, "oldest_wait_s": d.oldest_wait_s} for d in mine
        ]
        zygotes = [z for w in serving for z in w["zygotes"]]
        out.append({
            "pool": name, "workers": len(serving),
            "slots": {"total": slots, "held": held, "busy": busy, "free": max(0, slots - held)},
            "runners": {s: states[s] for s in RUNNER_STATES},
            "zygotes": {"count": len(zygotes),
                        "memory_bytes": sum(z.get("memory_bytes") or 0 for z in zygotes)},
            "queued": sum(d.queued for d in mine), "queue": queue,
        })  # fmt: skip
    return out


def worker_views(live: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The live heartbeats (``Membership.live``) as the API shows them, by worker id."""
    now = now_ms()
    return [worker_view(wid, doc, now) for wid, doc in sorted(live)]


async def fleet_workers(request: Request) -> list[dict[str, Any]]:
    return worker_views(await gateway(request).broker.workers.live())


@answers(bodies.Workers)
async def list_workers(request: Request) -> Response:
    """Every live worker with its runners (an admin tenant only)."""
    _operator(request)
    return JSONResponse({"workers": await fleet_workers(request)})


def runner_views(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every runner of ``workers``, flat, with its worker and its revision apart."""
    out = []
    for w in workers:
        for r in w["runners"]:
            revision, _, function = r["function"].partition("/")
            out.append({
                "worker": w["id"], "pools": w["pools"], "app": r.get("app", ""),
                "revision": revision, "function": function, "state": r["state"],
                "idle_s": r["idle_s"], "gpus": r["gpus"], "slots": r["slots"],
            })  # fmt: skip
    return out


def visible_runners(caller: Tenant, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runners ``caller`` may see: of its own apps (an admin tenant: all)."""
    if caller.admin:
        return found
    return [r for r in found if r["app"].partition("/")[0] == caller.name]


@answers(bodies.Runners)
@query(app={"type": "string", "description": "name or owner/name"})
async def list_runners(request: Request) -> Response:
    """The runners of the caller's apps (an admin tenant: every runner)."""
    app = request.query_params.get("app")
    found = visible_runners(auth.caller(request), runner_views(await fleet_workers(request)))
    if app is not None:
        found = [r for r in found if app in (r["app"], r["app"].partition("/")[2])]
    return JSONResponse({"runners": found})


@answers(bodies.Pools)
async def list_pools(request: Request) -> Response:
    """Per pool: workers, slots, runners and the queue per tier (an admin tenant only)."""
    _operator(request)
    workers = await fleet_workers(request)
    depths = await gateway(request).broker.queue.depths()
    return JSONResponse({"pools": pool_views(workers, depths)})


# ---- the last hour: one sample per period, for the console's charts ---------------------------

HOUR_S = 3600.0
"""The console's charts keep the samples of the last hour."""


def _owner(app_key: str) -> str:
    return app_key.partition("/")[0]


def sample(
    snap: Snapshot, workers: list[dict[str, Any]], depths: list[Depth], at: float
) -> dict[str, Any]:
    """The fleet now, as running totals the console turns into per-period figures: for the whole
    fleet and per owner, requests done, their summed run seconds, cold starts, busy runners;
    and the requests queued (fleet only: queues are not per owner)."""
    owners: dict[str, dict[str, float]] = {}

    def add(owner: str, what: str, value: float) -> None:
        for cell in (owners.setdefault(owner, {}), owners.setdefault("", {})):
            cell[what] = cell.get(what, 0) + value

    for labels, counts in snap.run_s.buckets.items():
        add(_owner(snap.run_s.app_key(labels)), "done", sum(counts))
        add(_owner(snap.run_s.app_key(labels)), "run_s", snap.run_s.sums.get(labels, 0.0))
    for labels, counts in snap.cold_s.buckets.items():
        add(_owner(snap.cold_s.app_key(labels)), "cold", sum(counts))
    for w in workers:
        for r in w["runners"]:
            if r["state"] in BUSY_STATES:
                add(_owner(r.get("app", "")), "busy", 1)
    fleet = owners.pop("", {})
    return {"at": round(at, 1), "queued": sum(d.queued for d in depths), "fleet": fleet,
            "owners": owners}  # fmt: skip


def samples_for(caller: Tenant, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``caller`` may see of the samples: the fleet's for an admin tenant, else its own
    apps' figures (and no queue depth)."""
    out = []
    for s in samples:
        if caller.admin:
            out.append({"at": s["at"], "queued": s["queued"], **s["fleet"]})
        else:
            out.append({"at": s["at"], **s["owners"].get(caller.name, {})})
    return out


class FleetSampler(EachPeriod):
    """Every ``every_s`` (``Settings.fleet_sample_s``), one gateway of the fleet (a claim)
    appends a ``sample``, keeping an hour of them, and
    publishes the tiers' SLOs again (for ``klieg_slo_attainment_ratio``: a Redis that lost them,
    flushed or restarted without its data, has them back within one period)."""

    name = "fleet sample"

    def __init__(self, broker: Broker, every_s: float) -> None:
        super().__init__(broker.claims, keys.FLEET_SAMPLE_CLAIM, every_s)
        self.broker = broker
        self.kept = max(1, round(HOUR_S / every_s))

    async def step(self) -> None:
        await self.take()

    async def take(self) -> dict[str, Any]:
        b = self.broker
        workers = worker_views(await b.workers.live())
        taken = sample(await b.stats.snapshot(), workers, await b.queue.depths(), now_ms() / 1000)
        await b.stats.add_sample(taken, self.kept)
        await b.stats.publish_slos(b.queue.tiers.values())
        return taken
