"""Every Redis key and channel name Klieg uses. Nothing else builds key strings; the Lua scripts
(``broker/scripts.py``) get these prefixes baked in.

klieg:req:{id}            hash     one request: the job record (``broker/jobs.py``)
klieg:logs:{id}           list     its log lines (JSON each); expires with the record
klieg:chunks:{id}         stream   the items of a streaming request, closed by an ``end`` entry
klieg:q:{pool}:{tier}     zset     queued request ids of a pool and tier, scored by enqueue time
                                   (ms * 1000, made unique)
klieg:pools               set      every pool that has ever had a request
klieg:wake:{pool}         list     wake-up tokens; workers block on it when the queue is empty
klieg:wake:*              list     wake-up tokens for workers that serve every pool
klieg:wake:@{worker}      list     wake-up tokens of one worker: it freed a runner others waited for
klieg:inflight            zset     leased request ids, scored by lease deadline (ms)
klieg:inflight:tenant     hash     tenant id -> requests in flight
klieg:inflight:app        hash     "owner/app" -> requests in flight
klieg:caps:tenant         hash     tenant id -> in-flight cap (0: none), as of its last enqueue
klieg:caps:app            hash     "owner/app" -> in-flight cap (0: none)
klieg:workers             hash     worker id -> heartbeat JSON (pools, slots, warm, idle, runners,
                                   seen_ms); stale entries are ignored, removed at shutdown
klieg:stats:service       hash     "owner/app" -> running mean service time (ms)
klieg:stats:cold          hash     "owner/app" -> running mean cold-start time (ms)
klieg:webhooks            zset     completed request ids with a webhook, scored by when the next
                                   try is due (ms); a sender's claim pushes it to its deadline
klieg:prewarm:{fn}        string   short claim: one worker starts a min_concurrency runner
klieg:sweep               string   short claim: one gateway sweeps the blob store this period
klieg:done                channel  ids of completed requests that name no reply channel
klieg:reply:{gateway}     channel  one gateway's sync requests as they complete, each with its
                                   outcome (``broker/jobs.py``: ``Outcome.from_reply``)
klieg:cancel              channel  request ids whose running worker must interrupt them
klieg:aliases             channel  "owner/app" whenever an alias or visibility of that app changes
"""

from __future__ import annotations

PREFIX = "klieg:"
REQUEST_PREFIX = PREFIX + "req:"
QUEUE_PREFIX = PREFIX + "q:"
WAKE_PREFIX = PREFIX + "wake:"
LOGS_PREFIX = PREFIX + "logs:"
CHUNKS_PREFIX = PREFIX + "chunks:"
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
    return LOGS_PREFIX + request_id


def chunks(request_id: str) -> str:
    return CHUNKS_PREFIX + request_id


def reply(gateway_id: str) -> str:
    return PREFIX + "reply:" + gateway_id


def prewarm(function_key: str) -> str:
    return PREFIX + "prewarm:" + function_key
