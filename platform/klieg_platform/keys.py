"""Every Redis key and channel name Klieg uses. Nothing else builds key strings.

klieg:req:{id}      hash    one request: routing, status, payload, result, error, logs
klieg:q:{pool}      zset    queued request ids of a pool, scored by enqueue time (ms)
klieg:wake:{pool}   list    wake-up tokens; workers block on it when the queue is empty
klieg:wake:*        list    wake-up tokens for workers that serve every pool
klieg:wake:@{worker} list   wake-up tokens of one worker: it freed a runner others waited for
klieg:pools         set     every pool that has ever had a request
klieg:inflight      zset    dispatched request ids, scored by lease deadline (ms)
klieg:webhooks      zset    completed request ids with a webhook, scored by when the next try is due
                            (ms); a sender's claim pushes the score to its claim deadline
klieg:done          channel request ids as they complete
klieg:aliases       channel "owner/app" whenever an alias of that app moves
klieg:worker:{id}   hash    worker heartbeat (expires)
"""

from __future__ import annotations

PREFIX = "klieg:"
REQUEST_PREFIX = PREFIX + "req:"
QUEUE_PREFIX = PREFIX + "q:"
WAKE_PREFIX = PREFIX + "wake:"
INFLIGHT = PREFIX + "inflight"
POOLS = PREFIX + "pools"
TENANT_INFLIGHT = PREFIX + "inflight:tenant"
APP_INFLIGHT = PREFIX + "inflight:app"
TENANT_CAPS = PREFIX + "caps:tenant"
APP_CAPS = PREFIX + "caps:app"
WORKERS = PREFIX + "workers"
SERVICE_STATS = PREFIX + "stats:service"
COLD_STATS = PREFIX + "stats:cold"
ALL_POOLS = "*"
WORKFLOW_POOL = "workflow"
"""Workflow requests queue here: served by workflow executors, never by ``*`` workers, and not
counted against tenant or app in-flight caps (their nodes are)."""
WEBHOOKS = PREFIX + "webhooks"
SWEEP_CLAIM = PREFIX + "sweep"
"""Held by the gateway sweeping the blob store this period (one per cluster)."""
DONE_CHANNEL = PREFIX + "done"
CANCEL_CHANNEL = PREFIX + "cancel"
ALIAS_CHANNEL = PREFIX + "aliases"


def request(request_id: str) -> str:
    return REQUEST_PREFIX + request_id


def queue(pool: str, tier: str) -> str:
    return f"{QUEUE_PREFIX}{pool}:{tier}"


def wake(pool: str) -> str:
    return WAKE_PREFIX + pool


def logs(request_id: str) -> str:
    return PREFIX + "logs:" + request_id


def chunks(request_id: str) -> str:
    return PREFIX + "chunks:" + request_id


def prewarm(function_key: str) -> str:
    return PREFIX + "prewarm:" + function_key
