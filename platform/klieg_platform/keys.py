"""Every Redis key and channel name Klieg uses. Nothing else builds key strings; the Lua scripts
(``broker/scripts.py``) get these prefixes baked in.

klieg:req:{id}            hash     one request: the job record (``broker/jobs.py``)
klieg:logs:{id}           list     its log lines (JSON each); expires with the record
klieg:chunks:{id}         stream   the items of a streaming request, closed by an ``end`` entry
klieg:q:{pool}:{tier}     zset     queued request ids of a pool and tier, scored by enqueue time
                                   (ms * 1000, made unique); reserved ones included
klieg:lanes:{pool}:{tier} zset     the tier's eligible lanes ("revision/function#units") scored
                                   by their oldest eligible request: a lane is eligible while its
                                   app is under cap and one of its tenants is
klieg:lane:{pool}:{tier}:{lane}
                          zset     the lane's tenants under cap, scored by their oldest request
klieg:flow:{pool}:{tier}:{lane}:{tenant}
                          zset     that tenant's queued normal-priority request ids in the lane
                                   (FIFO by score), reserved ones excluded
klieg:lowflow:{pool}:{tier}:{lane}:{tenant}
                          zset     the same for its low-priority ones (``X-Fal-Queue-Priority:
                                   low``): the flow's head is its first normal request, else its
                                   first low one; the lane orders its tenants by that head's score
klieg:lanejobs:{pool}:{tier}
                          hash     lane -> how many requests its flows hold
klieg:laneapp:{pool}:{tier}
                          hash     lane -> its "owner/app"
klieg:fnlanes:{pool}:{tier}:{fn}
                          set      the lanes of one "revision/function" that hold requests
klieg:tlanes:{tenant}     set      "{pool}:{tier}:{lane}" of every lane where the tenant has a
                                   flow (the workflow pool excluded: it is never capped)
klieg:alanes:{app}        set      the same for an "owner/app"
klieg:reserved:{pool}     hash     worker id -> the queued request it drains for (out of the
                                   lanes, still in klieg:q)
klieg:reserved-until:{pool}
                          zset     worker id -> when its reservation expires (ms), renewed by
                                   each of its dispatches
klieg:index              string   the lane index's version; absent on data queued before it
                                   (``Queue.reindex`` then builds it from klieg:q)
klieg:pools               set      every pool that has ever had a request
klieg:wake:{pool}         list     wake-up tokens; workers block on it when the queue is empty; a
                                   token is the "revision/function" of the request that woke it,
                                   or WAKE_ANY ("1": anything may be startable, a cap fell)
klieg:wake:*              list     wake-up tokens for workers that serve every pool
klieg:wake:@{worker}      list     wake-up tokens of one worker: it freed a runner others waited
                                   for, or a request was left to its idle runner (expires 60 s on)
klieg:inflight            zset     leased request ids, scored by lease deadline (ms)
klieg:inflight:tenant     hash     tenant id -> requests in flight
klieg:inflight:app        hash     "owner/app" -> requests in flight
klieg:caps:tenant         hash     tenant id -> in-flight cap (0: none), as of its last enqueue
klieg:caps:app            hash     "owner/app" -> in-flight cap (0: none)
klieg:history:{tenant}    zset     the tenant's request ids by enqueue time (ms); each enqueue
                                   trims those older than the result TTL plus a grace and past
                                   the newest ``Settings.history_max``; ids whose record expired
                                   are dropped as they are read
klieg:workers             hash     worker id -> heartbeat JSON (pools, slots, warm, idle, runners,
                                   detail, cold_starts, gpu_ids, draining, hints: the
                                   [function, hint] pairs of its idle runners,
                                   seen_ms); stale entries are ignored, removed at shutdown
klieg:stats:service       hash     "owner/app" -> running mean service time (ms)
klieg:stats:cold          hash     "owner/app" -> running mean cold-start time (ms)
klieg:metrics:requests    hash     "{pool}|{tier}|{owner/app}|{endpoint}|{status}" -> requests
                                   completed (status ok, error or cancelled)
klieg:metrics:queue_s     hash     histogram of seconds queued,
                                   "{pool}|{tier}|{owner/app}|{endpoint}|{i}" -> count in bucket i
                                   (1-based, of ``scripts.DURATIONS``; the last is +Inf), and
                                   "...|sum"
klieg:metrics:run_s       hash     the same for seconds running
klieg:metrics:cold_s      hash     the same for cold starts, "{pool}|{owner/app}|{i}"
klieg:metrics:batch       hash     the same for batch sizes (``scripts.BATCH_SIZES``),
                                   "{pool}|{owner/app}|{endpoint}|{i}"
klieg:metrics:webhooks    hash     "{owner/app}|{result}" -> webhook tries (delivered, retried,
                                   failed: the last try failed)
klieg:metrics:slo:{minute}
                          hash     "{tier}|met" and "{tier}|all": requests started that minute
                                   (epoch ms // 60000) within their tier's SLO, and all; 11 min
klieg:metrics:pending     list     completed requests not yet in the counts above, one line each
                                   ("{status}|{created}|{started}|{finished}|{labels}"); folded in
                                   by a completion once 64 wait, and before every read
klieg:slo                 hash     tier -> SLO (ms) of the queue wait, written by each gateway
klieg:webhooks            zset     completed request ids with a webhook, scored by when the next
                                   try is due (ms); a sender's claim pushes it to its deadline
klieg:prewarm:{fn}#{n}    string   short claim: one worker starts the function's runner n+1
klieg:sweep               string   short claim: one gateway sweeps the blob store this period
klieg:collect             string   short claim: one gateway collects retired revisions this period
klieg:fleet:samples       list     JSON fleet samples, newest first (an hour kept)
klieg:fleet:sampling      string   short claim: one gateway samples the fleet this period
klieg:done                channel  ids of completed requests that name no reply channel
                                   (this and the other fixed channels: see ``channel``)
klieg:reply:{gateway}     channel  one gateway's sync requests as they complete, each with its
                                   outcome (``broker/jobs.py``: ``Outcome.from_reply``)
klieg:cancel              channel  request ids whose running worker must interrupt them
klieg:aliases             channel  "owner/app" whenever an alias or visibility of that app changes
klieg:revoked-keys        channel  key ids as they are revoked (every gateway drops them)
klieg:rate:{key id}       string   a rate-limited key's token bucket, "tokens at_ms"; expires once
                                   full again
"""

from __future__ import annotations

PREFIX = "klieg:"
REQUEST_PREFIX = PREFIX + "req:"
QUEUE_PREFIX = PREFIX + "q:"
LANES_PREFIX = PREFIX + "lanes:"
LANE_PREFIX = PREFIX + "lane:"
FLOW_PREFIX = PREFIX + "flow:"
LOW_FLOW_PREFIX = PREFIX + "lowflow:"
LANE_JOBS_PREFIX = PREFIX + "lanejobs:"
LANE_APP_PREFIX = PREFIX + "laneapp:"
FN_LANES_PREFIX = PREFIX + "fnlanes:"
TENANT_LANES_PREFIX = PREFIX + "tlanes:"
APP_LANES_PREFIX = PREFIX + "alanes:"
INDEX_VERSION = PREFIX + "index"
RESERVED_PREFIX = PREFIX + "reserved:"
RESERVED_UNTIL_PREFIX = PREFIX + "reserved-until:"
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
HISTORY_PREFIX = PREFIX + "history:"
SERVICE_STATS = PREFIX + "stats:service"
COLD_STATS = PREFIX + "stats:cold"
ALL_POOLS = "*"
WORKFLOW_POOL = "workflow"
"""Workflow requests queue here: served by workflow executors, never by ``*`` workers, and not
counted against tenant or app in-flight caps (their nodes are)."""
METRICS_REQUESTS = PREFIX + "metrics:requests"
METRICS_QUEUE_S = PREFIX + "metrics:queue_s"
METRICS_RUN_S = PREFIX + "metrics:run_s"
METRICS_COLD_S = PREFIX + "metrics:cold_s"
METRICS_BATCH = PREFIX + "metrics:batch"
METRICS_WEBHOOKS = PREFIX + "metrics:webhooks"
METRICS_SLO_PREFIX = PREFIX + "metrics:slo:"
METRICS_PENDING = PREFIX + "metrics:pending"
SLO = PREFIX + "slo"
WEBHOOKS = PREFIX + "webhooks"
SWEEP_CLAIM = PREFIX + "sweep"
COLLECT_CLAIM = PREFIX + "collect"
"""Held by the gateway sweeping the blob store this period (one per cluster)."""
FLEET_SAMPLES = PREFIX + "fleet:samples"
"""A list of JSON samples of the fleet, newest first, one per ``FleetSampler`` period."""
FLEET_SAMPLE_CLAIM = PREFIX + "fleet:sampling"
"""Held by the gateway sampling the fleet this period (one per cluster)."""
DONE_CHANNEL = PREFIX + "done"
CANCEL_CHANNEL = PREFIX + "cancel"
ALIAS_CHANNEL = PREFIX + "aliases"
KEYS_CHANNEL = PREFIX + "revoked-keys"
FIXED_CHANNELS = frozenset((DONE_CHANNEL, CANCEL_CHANNEL, ALIAS_CHANNEL, KEYS_CHANNEL))


def channel(name: str, db: int) -> str:
    """The name a fixed channel (``FIXED_CHANNELS``) has on database ``db``. Redis's pub/sub spans
    every database of a server, so clusters sharing one server (each on a database of its own)
    would hear each other's completions, cancels and alias changes: on any database but 0 the
    channel is ``{name}@{db}``. Other names (a gateway's ``reply`` channel, unique already) are
    returned as they are."""
    return f"{name}@{db}" if db and name in FIXED_CHANNELS else name


def request(request_id: str) -> str:
    return REQUEST_PREFIX + request_id


def queue(pool: str, tier: str) -> str:
    return f"{QUEUE_PREFIX}{pool}:{tier}"


def lane(function_key: str, units: int) -> str:
    """A lane's name: the requests of one "revision/function" taking ``units`` (at least 1)."""
    return f"{function_key}#{max(units, 1)}"


def lanes(pool: str, tier: str) -> str:
    return f"{LANES_PREFIX}{pool}:{tier}"


def lane_jobs(pool: str, tier: str) -> str:
    """Hash: lane name -> how many requests of the lane wait in the pool and tier's index."""
    return f"{LANE_JOBS_PREFIX}{pool}:{tier}"


def lane_apps(pool: str, tier: str) -> str:
    """Hash: lane name -> the "owner/app" its requests belong to."""
    return f"{LANE_APP_PREFIX}{pool}:{tier}"


def app_lanes(app_key: str) -> str:
    """The lanes an "owner/app" has requests in, as "{pool}:{tier}:{lane}"."""
    return APP_LANES_PREFIX + app_key


def lane_tenants(pool: str, tier: str, lane_name: str) -> str:
    return f"{LANE_PREFIX}{pool}:{tier}:{lane_name}"


def flow(pool: str, tier: str, lane_name: str, tenant: str, *, low: bool = False) -> str:
    """A tenant's queued requests in a lane: its normal ones, or (``low``) its low ones."""
    return f"{LOW_FLOW_PREFIX if low else FLOW_PREFIX}{pool}:{tier}:{lane_name}:{tenant}"


def reserved(pool: str) -> str:
    return RESERVED_PREFIX + pool


def reserved_until(pool: str) -> str:
    return RESERVED_UNTIL_PREFIX + pool


def wake(pool: str) -> str:
    return WAKE_PREFIX + pool


WAKE_ANY = "1"
"""A wake token that names no function: anything may be startable now (a cap fell, a slot
freed). Other tokens name the "revision/function" that woke the list (``Wakes.wait``)."""
OWN_WAKE_MARK = "@"
"""``wake(OWN_WAKE_MARK + worker id)`` is one worker's own wake list."""


def own_wake(worker_id: str) -> str:
    """The pool name of one worker's own wake list (``wake(own_wake(id))``)."""
    return OWN_WAKE_MARK + worker_id


def logs(request_id: str) -> str:
    return LOGS_PREFIX + request_id


def chunks(request_id: str) -> str:
    return CHUNKS_PREFIX + request_id


def reply(gateway_id: str) -> str:
    return PREFIX + "reply:" + gateway_id


def rate(key_id: str) -> str:
    return PREFIX + "rate:" + key_id


def history(tenant_id: str) -> str:
    return HISTORY_PREFIX + tenant_id


def metrics_slo(minute: int) -> str:
    """SLO attainment counts of one minute (epoch ms // 60000)."""
    return f"{METRICS_SLO_PREFIX}{minute}"


def prewarm(function_key: str) -> str:
    return PREFIX + "prewarm:" + function_key
