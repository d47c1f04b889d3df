"""``GET /metrics``: the fleet in the Prometheus text format (``prometheus_client``).

Every figure is read from Redis at scrape time (the scripts' counts, the heartbeats, the
queues), so any gateway answers for the whole fleet and a restarted gateway loses nothing.
Base units, ``_total`` for counters; labels ``pool``, ``tier``, ``owner``, ``app``,
``endpoint`` (its path, ``/`` for the root), ``status``, ``state``, never a request id:

klieg_requests_total{pool,tier,owner,app,endpoint,status}
                                                   completed requests (ok, error, cancelled)
klieg_request_queue_seconds{pool,tier,owner,app,endpoint}
                                                   histogram: enqueue to start (last attempt)
klieg_request_run_seconds{pool,tier,owner,app,endpoint}
                                                   histogram: start to completion
klieg_cold_starts_total{pool,owner,app}            runners started (a runner serves every
                                                   endpoint of its function: no endpoint)
klieg_cold_start_seconds{pool,owner,app}           histogram: runner start to ready
klieg_batch_size{pool,owner,app,endpoint}          histogram: requests per batch run
klieg_webhook_deliveries_total{owner,app,result}   webhook tries: delivered, retried, failed
klieg_queue_depth{pool,tier}                       requests waiting now
klieg_queue_oldest_wait_seconds{pool,tier}         how long the oldest of them has waited
klieg_slo_attainment_ratio{tier}                   requests started within the tier's SLO,
                                                   of those started in the last 10 minutes
                                                   and those waiting past it now
klieg_workers{pool}                                live workers serving the pool
klieg_runners{pool,state}                          starting, busy, idle, stopping
klieg_gpu_slots{pool,state}                        busy, idle (held by an idle runner), free
klieg_zygotes{pool}                                zygotes kept by the workers serving the pool
klieg_zygote_memory_bytes{pool}                    their memory (PSS: pages shared with the
                                                   runners forked from them count in part)
klieg_pool_slots_needed{pool}                      slots to serve what runs and start what waits
                                                   within its SLO (``autoscaler.slots_needed``)

The admin tenant sees every series. Any other tenant's key (scope ``deploy`` or more) sees only
the series of its own apps, and no fleet-wide gauge: another tenant's app names never appear.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from klieg_platform import autoscaler, keys
from klieg_platform.broker.stats import REQUEST_LABELS, Histogram
from klieg_platform.gateway import auth, fleet
from klieg_platform.gateway.contract import answers
from klieg_platform.gateway.state import gateway

_APP = ("owner", "app")
LABELS: dict[str, tuple[str, ...]] = {
    "klieg_requests_total": ("pool", "tier", *_APP, "endpoint", "status"),
    "klieg_request_queue_seconds": ("pool", "tier", *_APP, "endpoint"),
    "klieg_request_run_seconds": ("pool", "tier", *_APP, "endpoint"),
    "klieg_cold_starts_total": ("pool", *_APP),
    "klieg_cold_start_seconds": ("pool", *_APP),
    "klieg_batch_size": ("pool", *_APP, "endpoint"),
    "klieg_webhook_deliveries_total": (*_APP, "result"),
    "klieg_queue_depth": ("pool", "tier"),
    "klieg_queue_oldest_wait_seconds": ("pool", "tier"),
    "klieg_slo_attainment_ratio": ("tier",),
    "klieg_workers": ("pool",),
    "klieg_runners": ("pool", "state"),
    "klieg_gpu_slots": ("pool", "state"),
    "klieg_zygotes": ("pool",),
    "klieg_zygote_memory_bytes": ("pool",),
    "klieg_pool_slots_needed": ("pool",),
}
"""Every metric the admin's scrape has, with its labels (histograms add ``_bucket`` with
``le``, ``_sum`` and ``_count``); ``infra/grafana/klieg-fleet.json`` charts them."""
NAMES = tuple(LABELS)


class _Families(Collector):
    """A collector of families built for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _split_app(app_key: str) -> tuple[str, str]:
    owner, _, app = app_key.partition("/")
    return owner, app


def _label_names(names: tuple[str, ...]) -> list[str]:
    """A count's label names as series labels: its "owner/app" becomes ``owner`` and ``app``."""
    return [n for name in names for n in (("owner", "app") if name == "app" else (name,))]


def _label_values(names: tuple[str, ...], values: tuple[str, ...]) -> list[str]:
    return [v for name, value in zip(names, values, strict=True)
            for v in (_split_app(value) if name == "app" else (value,))]  # fmt: skip


def _histogram(name: str, doc: str, hist: Histogram, keep: Any) -> HistogramMetricFamily:
    """``hist`` as a family; ``keep(owner)`` filters."""
    family = HistogramMetricFamily(name, doc, labels=_label_names(hist.names))
    for labels, counts in sorted(hist.buckets.items()):
        if not keep(_split_app(hist.app_key(labels))[0]):
            continue
        running, buckets = 0, []
        for bound, n in zip((*hist.bounds, float("inf")), counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        family.add_metric(_label_values(hist.names, labels), buckets, hist.sums.get(labels, 0.0))
    return family


def _cold_total(hist: Histogram, keep: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "klieg_cold_starts", "Runners started (cold starts)", labels=_label_names(hist.names)
    )
    for labels, counts in sorted(hist.buckets.items()):
        if keep(_split_app(hist.app_key(labels))[0]):
            family.add_metric(_label_values(hist.names, labels), sum(counts))
    return family


async def families(request: Request) -> list[Metric]:
    gw = gateway(request)
    tenant = auth.caller(request)
    snap = await gw.broker.stats.snapshot()

    def keep(owner: str) -> bool:
        return tenant.admin or owner == tenant.name

    requests = CounterMetricFamily(
        "klieg_requests", "Completed requests by status",
        labels=[*_label_names(REQUEST_LABELS), "status"],
    )  # fmt: skip
    app_at = REQUEST_LABELS.index("app")
    for (*labels, status), n in sorted(snap.requests.items()):
        if keep(_split_app(labels[app_at])[0]):
            requests.add_metric([*_label_values(REQUEST_LABELS, tuple(labels)), status], n)
    out: list[Metric] = [
        requests,
        _histogram("klieg_request_queue_seconds", "Seconds from enqueue to start",
                   snap.queue_s, keep),
        _histogram("klieg_request_run_seconds", "Seconds from start to completion",
                   snap.run_s, keep),
        _cold_total(snap.cold_s, keep),
        _histogram("klieg_cold_start_seconds", "Seconds from runner start to ready",
                   snap.cold_s, keep),
        _histogram("klieg_batch_size", "Requests per batch run", snap.batch, keep),
    ]  # fmt: skip
    hooks = CounterMetricFamily(
        "klieg_webhook_deliveries", "Webhook tries by result", labels=["owner", "app", "result"]
    )
    for (app_key, result), n in sorted(snap.webhooks.items()):
        owner, app = _split_app(app_key)
        if keep(owner):
            hooks.add_metric([owner, app, result], n)
    out.append(hooks)
    if tenant.admin:
        out += await _fleet(request, snap.slo)
    return out


async def _fleet(request: Request, slo: dict[str, tuple[int, int]]) -> list[Metric]:
    gw = gateway(request)
    depths = await gw.broker.queue.depths()
    live = await gw.broker.workers.live()
    pools = fleet.pool_views(fleet.worker_views(live), depths)
    depth = GaugeMetricFamily("klieg_queue_depth", "Requests waiting", labels=["pool", "tier"])
    oldest = GaugeMetricFamily(
        "klieg_queue_oldest_wait_seconds", "Wait of the oldest waiting request",
        labels=["pool", "tier"],
    )  # fmt: skip
    for d in depths:
        depth.add_metric([d.pool, d.tier], d.queued)
        oldest.add_metric([d.pool, d.tier], d.oldest_wait_s)
    attainment = GaugeMetricFamily(
        "klieg_slo_attainment_ratio",
        "Requests started within their tier's SLO, of those started in the last 10 minutes "
        "and those still waiting past it",
        labels=["tier"],
    )
    overdue: dict[str, int] = {}
    for d in depths:
        overdue[d.tier] = overdue.get(d.tier, 0) + d.overdue
    for tier in sorted(slo.keys() | {t for t, n in overdue.items() if n}):
        met, started = slo.get(tier, (0, 0))
        if started + overdue.get(tier, 0):
            attainment.add_metric([tier], met / (started + overdue.get(tier, 0)))
    workers = GaugeMetricFamily("klieg_workers", "Live workers serving a pool", labels=["pool"])
    runners = GaugeMetricFamily("klieg_runners", "Runners by state", labels=["pool", "state"])
    slots = GaugeMetricFamily("klieg_gpu_slots", "Slots by state", labels=["pool", "state"])
    zygotes = GaugeMetricFamily("klieg_zygotes", "Zygotes kept", labels=["pool"])
    zygote_bytes = GaugeMetricFamily(
        "klieg_zygote_memory_bytes", "Memory of the zygotes kept (PSS)", labels=["pool"]
    )
    for p in pools:
        workers.add_metric([p["pool"]], p["workers"])
        zygotes.add_metric([p["pool"]], p["zygotes"]["count"])
        zygote_bytes.add_metric([p["pool"]], p["zygotes"]["memory_bytes"])
        for state in fleet.RUNNER_STATES:
            runners.add_metric([p["pool"], state], p["runners"][state])
        s = p["slots"]
        for state, n in (("busy", s["busy"]), ("idle", s["held"] - s["busy"]), ("free", s["free"])):
            slots.add_metric([p["pool"], state], max(0, n))
    needed = GaugeMetricFamily(
        "klieg_pool_slots_needed",
        "Slots that serve the running requests and start every waiting one within its SLO "
        "(the autoscaler's signal; a KEDA ScaledObject's, with one worker's slots as target)",
        labels=["pool"],
    )
    revisions = await asyncio.to_thread(gw.registry.aliased_revisions)
    names = sorted({p["pool"] for p in pools} - {keys.ALL_POOLS})
    warm = autoscaler.warm_slots(revisions)
    buffer = autoscaler.buffer_slots(revisions)
    demands = await autoscaler.read_demands(
        gw.broker, warm, names, depths=depths, live=live, buffer_slots=buffer
    )
    for pool, demand in demands.items():
        needed.add_metric([pool], autoscaler.slots_needed(demand, gw.broker.queue.tiers))
    return [depth, oldest, attainment, workers, runners, slots, zygotes, zygote_bytes, needed]


def render(found: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(found))
    return generate_latest(registry)


@answers("text/plain")
async def scrape(request: Request) -> Response:
    """The fleet's metrics, Prometheus text format."""
    return Response(render(await families(request)), media_type=CONTENT_TYPE_LATEST)
