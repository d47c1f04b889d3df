"""A request trace the simulator replays: the cluster it ran on and its requests.

Trace format (JSON lines). The first line is the cluster::

    {"workers": 32, "gpus_per_worker": 8,
     "tiers": {"enterprise": {"slo_s": 60}, ..., "free": {"slo_s": 1800}},
     "apps": {"video": {"cold_start_s": 90, "num_gpus": 8}, ...}}

and every further line one request, in arrival order::

    {"t": 12.5, "tier": "free", "tenant": "free-7", "app": "video", "service_s": 118.0}

Optional cluster keys (absent = no limit): per tier ``rank`` (0 = most important; without a rank
on every tier, tiers rank by ``slo_s``, tighter first), ``max_queued`` (arrivals beyond it are
shed, through ``scheduler.admit``) and ``tenant_cap`` (in-flight cap of each tenant of the tier);
per app ``max_inflight`` (in-flight cap of the app).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from klieg_platform.scheduler import Tier

UNBOUNDED = 2**62
"""``max_queued`` of a tier whose trace entry sets none."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    name: str
    cold_start_s: float
    num_gpus: int
    max_inflight: int | None = None


@dataclass(frozen=True, slots=True)
class Cluster:
    """The first trace line. ``tenant_caps``: tier name -> in-flight cap of each of its tenants."""

    workers: int
    gpus_per_worker: int
    tiers: tuple[Tier, ...]
    apps: Mapping[str, AppSpec]
    tenant_caps: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The first trace line; optional keys only where a limit is set."""
        tiers = {
            t.name: {"slo_s": t.slo_s, "rank": t.rank}
            | ({"max_queued": t.max_queued} if t.max_queued < UNBOUNDED else {})
            | ({"tenant_cap": self.tenant_caps[t.name]} if t.name in self.tenant_caps else {})
            for t in self.tiers
        }
        apps = {
            a.name: {"cold_start_s": a.cold_start_s, "num_gpus": a.num_gpus}
            | ({} if a.max_inflight is None else {"max_inflight": a.max_inflight})
            for a in self.apps.values()
        }
        return {"workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "tiers": tiers, "apps": apps}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    t: float
    tier: str
    tenant: str
    app: str
    service_s: float


@dataclass(frozen=True, slots=True)
class Trace:
    cluster: Cluster
    requests: tuple[Request, ...]


def _cluster_from_json(doc: Mapping[str, Any]) -> Cluster:
    raw_tiers: Mapping[str, Mapping[str, Any]] = doc["tiers"]
    names = list(raw_tiers)
    if all("rank" in raw_tiers[n] for n in names):
        names.sort(key=lambda n: int(raw_tiers[n]["rank"]))
    else:
        names.sort(key=lambda n: float(raw_tiers[n]["slo_s"]))
    tiers = tuple(
        Tier(n, float(raw_tiers[n]["slo_s"]), int(raw_tiers[n].get("max_queued", UNBOUNDED)), r)
        for r, n in enumerate(names)
    )
    caps = {n: int(raw_tiers[n]["tenant_cap"]) for n in names if "tenant_cap" in raw_tiers[n]}
    apps = {
        name: AppSpec(
            name,
            float(spec["cold_start_s"]),
            int(spec["num_gpus"]),
            int(spec["max_inflight"]) if "max_inflight" in spec else None,
        )
        for name, spec in doc["apps"].items()
    }
    cluster = Cluster(int(doc["workers"]), int(doc["gpus_per_worker"]), tiers, apps, caps)
    for app in apps.values():
        if not 1 <= app.num_gpus <= cluster.gpus_per_worker:
            raise ValueError(
                f"app {app.name!r} needs {app.num_gpus} GPUs; a worker has "
                f"{cluster.gpus_per_worker}"
            )
        if app.max_inflight is not None and app.max_inflight < 1:
            raise ValueError(f"app {app.name!r}: max_inflight must be >= 1")
    if any(cap < 1 for cap in caps.values()) or cluster.workers < 1:
        raise ValueError("tenant caps and the worker count must be >= 1")
    return cluster


def read_trace(lines: Iterable[str]) -> Trace:
    """Parse a trace (see the module docstring). Requests are stably sorted by ``t``.

    Raises ValueError for an unknown tier or app, or an app larger than a worker.
    """
    it = (line for line in lines if line.strip())
    try:
        cluster = _cluster_from_json(json.loads(next(it)))
    except StopIteration:
        raise ValueError("empty trace") from None
    tier_names = {t.name for t in cluster.tiers}
    requests: list[Request] = []
    for line in it:
        d = json.loads(line)
        r = Request(float(d["t"]), d["tier"], d["tenant"], d["app"], float(d["service_s"]))
        if r.tier not in tier_names or r.app not in cluster.apps:
            raise ValueError(f"request names an unknown tier or app: {line.strip()}")
        requests.append(r)
    requests.sort(key=lambda r: r.t)
    return Trace(cluster, tuple(requests))


def write_trace(trace: Trace, out: TextIO) -> None:
    """Write ``trace`` in the format ``read_trace`` reads."""
    out.write(json.dumps(trace.cluster.to_json()) + "\n")
    for r in trace.requests:
        line = {"t": round(r.t, 3), "tier": r.tier, "tenant": r.tenant, "app": r.app,
                "service_s": round(r.service_s, 3)}  # fmt: skip
        out.write(json.dumps(line) + "\n")
