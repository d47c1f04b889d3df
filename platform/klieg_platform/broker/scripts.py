"""Every Lua script of the broker. Each runs atomically in Redis; together they are the only
writers of a request record's status.

A shared prelude bakes in the key prefixes from ``keys.py``, the statuses and field lists of the
job record (``jobs.py``), and defines the steps every script composes from: ``qkey`` (a queue's
key, as ``keys.queue``), ``wake`` (tokens for blocked workers), ``take`` (lease a queued
request: IN_QUEUE -> IN_PROGRESS), ``finish`` (-> COMPLETED + TTL + webhook due + publish) and
``requeue`` (IN_PROGRESS -> IN_QUEUE at its original position). Scripts derive request and queue
keys from the prefixes, so they assume a single Redis node (not Redis Cluster).

The lane index (``backlog.Backlog`` in Redis, keys in ``keys.py``): besides its queue
``klieg:q:{pool}:{tier}``, every queued request that no worker has reserved sits in its flow
(its tenant's requests in its lane, a lane being the requests of one "revision/function" and
size: the normal ones FIFO, then the low ones FIFO, in two zsets); a lane's tenants under cap
are ordered by the score of their flow's head (its first normal request, else its first low
one: ``flow_head``), and a tier's lanes whose app is under cap by their first tenant's.
``index`` and ``unindex`` keep it exact as requests come and go; ``counted`` and ``recap`` take
a tenant's or app's entries out when it reaches its cap and put them back when it falls under
it, so a dispatch finds each tier's oldest eligible request at the head of one zset, however
many capped requests wait.
"""

from __future__ import annotations

import re

from klieg_platform import keys, scheduler
from klieg_platform.broker.jobs import JOB, LOW, REPLY, ROUTING, Status, lua_list

DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
             300.0, 600.0, 1800.0, 3600.0)  # fmt: skip
"""Upper bounds (s) of the buckets of the queue, run and cold-start histograms (then +Inf)."""
BATCH_SIZES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
"""Upper bounds of the batch-size histogram's buckets (then +Inf)."""
SLO_WINDOW_S = 660
"""How long a minute's SLO counts are kept (the attainment covers the last 10 minutes)."""
METRICS_FOLD = 64
"""Completed requests' metric lines that wait on ``keys.METRICS_PENDING`` before a completion
folds them into the counts (``FOLD_METRICS`` folds them before every read)."""


def in_db(source: str, db: int) -> str:
    """``source`` publishing on database ``db``'s channels (``keys.channel``)."""
    for name in keys.FIXED_CHANNELS:
        source = source.replace(f"'{name}'", f"'{keys.channel(name, db)}'")
    return source


PRELUDE = f"""
local REQ, QUEUE, WAKE = '{keys.REQUEST_PREFIX}', '{keys.QUEUE_PREFIX}', '{keys.WAKE_PREFIX}'
local OWN_WAKE, WAKE_ANY = '{keys.wake(keys.OWN_WAKE_MARK)}', '{keys.WAKE_ANY}'
local INFLIGHT, POOLS = '{keys.INFLIGHT}', '{keys.POOLS}'
local HOOKS, DONE, CANCEL = '{keys.WEBHOOKS}', '{keys.DONE_CHANNEL}', '{keys.CANCEL_CHANNEL}'
local T_RUN, A_RUN = '{keys.TENANT_INFLIGHT}', '{keys.APP_INFLIGHT}'
local T_CAP, A_CAP = '{keys.TENANT_CAPS}', '{keys.APP_CAPS}'
local COLD, SERVICE = '{keys.COLD_STATS}', '{keys.SERVICE_STATS}'
local LANES, LANE, FLOW = '{keys.LANES_PREFIX}', '{keys.LANE_PREFIX}', '{keys.FLOW_PREFIX}'
local LOW_FLOW = '{keys.LOW_FLOW_PREFIX}'
local LANE_JOBS, LANE_APP = '{keys.LANE_JOBS_PREFIX}', '{keys.LANE_APP_PREFIX}'
local FN_LANES = '{keys.FN_LANES_PREFIX}'
local T_LANES, A_LANES = '{keys.TENANT_LANES_PREFIX}', '{keys.APP_LANES_PREFIX}'
local RESERVED, RESERVED_UNTIL = '{keys.RESERVED_PREFIX}', '{keys.RESERVED_UNTIL_PREFIX}'
local UNCAPPED = '{keys.WORKFLOW_POOL}'
local LOGS = '{keys.LOGS_PREFIX}'
local S_QUEUED, S_RUNNING = '{Status.IN_QUEUE}', '{Status.IN_PROGRESS}'
local S_DONE = '{Status.COMPLETED}'
local WARM_SHARE, COLD_WEIGHT = {scheduler.WARM_SHARE!r}, {scheduler.COLD_WEIGHT!r}
local HINT_WAIT_MS = {scheduler.HINT_WAIT_S * 1000!r}
local M_REQUESTS, M_PENDING = '{keys.METRICS_REQUESTS}', '{keys.METRICS_PENDING}'
local M_QUEUE, M_RUN = '{keys.METRICS_QUEUE_S}', '{keys.METRICS_RUN_S}'
local M_BATCH = '{keys.METRICS_BATCH}'
local HISTORY = '{keys.HISTORY_PREFIX}'
local M_SLO, SLO = '{keys.METRICS_SLO_PREFIX}', '{keys.SLO}'
local DURATIONS = {{{", ".join(repr(b) for b in DURATIONS)}}}
local BATCH_SIZES = {{{", ".join(repr(b) for b in BATCH_SIZES)}}}

-- count value v in the histogram hash key under labels (bucket i: the first bound >= v)
local function observe(key, labels, v, bounds)
  local i = #bounds + 1
  for b = 1, #bounds do
    if v <= bounds[b] then i = b; break end
  end
  redis.call('HINCRBY', key, labels .. '|' .. i, 1)
  redis.call('HINCRBYFLOAT', key, labels .. '|sum', v)
end

-- the bucket of value v in bounds (the first bound >= v; #bounds + 1: +Inf)
local function bucket(v, bounds)
  for b = 1, #bounds do
    if v <= bounds[b] then return b end
  end
  return #bounds + 1
end

-- the completed requests' lines waiting on M_PENDING (``measure``) go into the metrics' counts:
-- each one's count by status, its queue and run times, and whether it started within its tier's
-- SLO (keys.py: klieg:metrics:*; labels stats.REQUEST_LABELS), one command per count touched
local function fold_metrics()
  local lines = redis.call('LRANGE', M_PENDING, 0, -1)
  if #lines == 0 then return 0 end
  redis.call('DEL', M_PENDING)
  local adds, floats, slos, windows = {{}}, {{}}, {{}}, {{}}
  local function add(into, key, field, v)
    local h = into[key]
    if h == nil then h = {{}}; into[key] = h end
    h[field] = (h[field] or 0) + v
  end
  for _, line in ipairs(lines) do
    local status, created, started, finished, labels =
      string.match(line, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
    add(adds, M_REQUESTS, labels .. '|' .. status, 1)
    started, created = tonumber(started), tonumber(created)
    if started and started > 0 and created then
      local wait_ms = math.max(0, started - created)
      local run_s = math.max(0, tonumber(finished) - started) / 1000
      add(adds, M_QUEUE, labels .. '|' .. bucket(wait_ms / 1000, DURATIONS), 1)
      add(floats, M_QUEUE, labels .. '|sum', wait_ms / 1000)
      add(adds, M_RUN, labels .. '|' .. bucket(run_s, DURATIONS), 1)
      add(floats, M_RUN, labels .. '|sum', run_s)
      local tier = string.match(labels, '^[^|]*|([^|]*)')
      if slos[tier] == nil then
        slos[tier] = tonumber(redis.call('HGET', SLO, tier) or '') or false
      end
      if slos[tier] then
        local win = M_SLO .. math.floor(started / 60000)
        windows[win] = true
        if wait_ms <= slos[tier] then add(adds, win, tier .. '|met', 1) end
        add(adds, win, tier .. '|all', 1)
      end
    end
  end
  for key, h in pairs(adds) do
    for field, v in pairs(h) do redis.call('HINCRBY', key, field, v) end
  end
  for key, h in pairs(floats) do
    for field, v in pairs(h) do redis.call('HINCRBYFLOAT', key, field, v) end
  end
  for win in pairs(windows) do redis.call('EXPIRE', win, {SLO_WINDOW_S}) end
  return #lines
end

-- a completed request's metrics, from r (``finishing``): one line on M_PENDING, "status|
-- created_ms|started_ms|finished_ms|pool|tier|app|endpoint" (the labels last: the endpoint
-- may hold a '|'), folded into the counts once {METRICS_FOLD} wait (readers fold first)
local function measure(r, status, now)
  local line = table.concat({{status, r.created_ms or '', r.started_ms or '', now, r.pool or '',
                             r.tier or '', r.app_key or '', r.endpoint or ''}}, '|')
  if redis.call('RPUSH', M_PENDING, line) >= {METRICS_FOLD} then fold_metrics() end
end

local function qkey(pool, tier) return QUEUE .. pool .. ':' .. tier end

-- fold a sample (ms) into a running mean of hash key's field (new samples weighted 0.2)
local function fold_mean(key, field, sample)
  local old = tonumber(redis.call('HGET', key, field))
  local s = tonumber(sample)
  local mean = old and (0.8 * old + 0.2 * s) or s
  redis.call('HSET', key, field, string.format('%.1f', mean))
end

-- one wake token on list w, which keeps at most 64: the "revision/function" of the request
-- that woke it (``fn``), or WAKE_ANY (anything may be startable now)
local function push_wake(w, fn)
  if redis.call('LPUSH', w, fn or WAKE_ANY) > 64 then redis.call('LTRIM', w, 0, 63) end
end

local function wake(pool, fn)
  push_wake(WAKE .. pool, fn)
  push_wake(WAKE .. '*', fn)
end

-- wake the workers ``holders`` names ("w1|w2") on their own lists (which expire once their
-- worker is gone); the pool's workers when it names none
local function wake_holders(pool, holders)
  if holders == '' then return wake(pool) end
  for w in string.gmatch(holders, '[^|]+') do
    push_wake(OWN_WAKE .. w)
    redis.call('EXPIRE', OWN_WAKE .. w, 60)
  end
end

-- is tenant (run T_RUN, cap T_CAP) or app (A_RUN, A_CAP) ``who`` under its in-flight cap in pool?
local function open(pool, run, cap, who)
  if pool == UNCAPPED then return true end
  local c = tonumber(redis.call('HGET', cap, who) or '0') or 0
  return c <= 0 or (tonumber(redis.call('HGET', run, who) or '0') or 0) < c
end

-- a request's scheduling view (fn: "revision/function"; lane: fn .. '#' .. units; low: queued
-- at low priority); nil if gone
local function load(id)
  local f = redis.call('HMGET', REQ .. id, 'status', 'pool', 'tier', 'score', 'tenant', 'app_key',
                       'revision', 'function', 'gpus', 'priority')
  if not f[1] then return nil end
  local units = math.max(tonumber(f[9] or '0') or 0, 1)
  local fn = (f[7] or '') .. '/' .. (f[8] or '')
  return {{id = id, status = f[1], pool = f[2], tier = f[3], score = tonumber(f[4]),
          tenant = f[5], app = f[6], fn = fn, units = units, lane = fn .. '#' .. units,
          low = f[10] == '{LOW}'}}
end

-- the zset of request j's flow: its normal or its low requests
local function flow_of(j, ref)
  return (j.low and LOW_FLOW or FLOW) .. ref .. ':' .. j.tenant
end

-- the head of tenant's flow in lane ref ("pool:tier:lane"): its first normal request, else its
-- first low one, as {{id, score}} (empty: the flow holds none)
local function flow_head(ref, tenant)
  local h = redis.call('ZRANGE', FLOW .. ref .. ':' .. tenant, 0, 0, 'WITHSCORES')
  if h[1] then return h end
  return redis.call('ZRANGE', LOW_FLOW .. ref .. ':' .. tenant, 0, 0, 'WITHSCORES')
end

local function job_open(j)
  return open(j.pool, T_RUN, T_CAP, j.tenant) and open(j.pool, A_RUN, A_CAP, j.app)
end

-- lane ref ("pool:tier:lane") after its tenants' order changed: its tier's order follows its
-- oldest tenant; ``add``: the lane enters that order (else only an entry already there moves)
local function relane(ref, add)
  local pool, tier, lane = string.match(ref, '^([^:]*):([^:]*):(.*)$')
  local lanes = LANES .. pool .. ':' .. tier
  local first = redis.call('ZRANGE', LANE .. ref, 0, 0, 'WITHSCORES')
  if not first[1] then
    redis.call('ZREM', lanes, lane)
  elseif add then
    redis.call('ZADD', lanes, first[2], lane)
  else
    redis.call('ZADD', lanes, 'XX', first[2], lane)
  end
end

-- request j (queued, not reserved) joins the lane index: its flow; its tenant into the lane's
-- order if under cap; the lane into the tier's order if its app is under cap
local function index(j)
  local at = j.pool .. ':' .. j.tier
  local ref = at .. ':' .. j.lane
  redis.call('ZADD', flow_of(j, ref), j.score, j.id)
  if redis.call('HINCRBY', LANE_JOBS .. at, j.lane, 1) == 1 then
    redis.call('HSET', LANE_APP .. at, j.lane, j.app)
    redis.call('SADD', FN_LANES .. at .. ':' .. j.fn, j.lane)
    if j.pool ~= UNCAPPED then redis.call('SADD', A_LANES .. j.app, ref) end
  end
  if j.pool ~= UNCAPPED then redis.call('SADD', T_LANES .. j.tenant, ref) end
  if flow_head(ref, j.tenant)[1] ~= j.id then return end
  if not open(j.pool, T_RUN, T_CAP, j.tenant) then return end
  redis.call('ZADD', LANE .. ref, j.score, j.tenant)
  if not j.low and redis.call('EXISTS', LOW_FLOW .. ref .. ':' .. j.tenant) == 1 then
    relane(ref, open(j.pool, A_RUN, A_CAP, j.app)) -- ahead of low ones: its tenant may move back
    return
  end
  if redis.call('ZRANGE', LANE .. ref, 0, 0)[1] ~= j.tenant then return end
  if open(j.pool, A_RUN, A_CAP, j.app) then redis.call('ZADD', LANES .. at, j.score, j.lane) end
end

-- request j leaves the lane index (it is taken, reserved or cancelled)
local function unindex(j)
  local at = j.pool .. ':' .. j.tier
  local ref = at .. ':' .. j.lane
  redis.call('ZREM', flow_of(j, ref), j.id)
  local head = flow_head(ref, j.tenant)
  if head[1] then
    redis.call('ZADD', LANE .. ref, 'XX', head[2], j.tenant)
  else
    redis.call('ZREM', LANE .. ref, j.tenant)
    if j.pool ~= UNCAPPED then redis.call('SREM', T_LANES .. j.tenant, ref) end
  end
  relane(ref, false)
  if redis.call('HINCRBY', LANE_JOBS .. at, j.lane, -1) <= 0 then
    redis.call('HDEL', LANE_JOBS .. at, j.lane)
    redis.call('HDEL', LANE_APP .. at, j.lane)
    redis.call('SREM', FN_LANES .. at .. ':' .. j.fn, j.lane)
    if j.pool ~= UNCAPPED then redis.call('SREM', A_LANES .. j.app, ref) end
  end
end

-- a tenant reached its cap: it leaves the orders of its lanes
local function park_tenant(tenant)
  for _, ref in ipairs(redis.call('SMEMBERS', T_LANES .. tenant)) do
    redis.call('ZREM', LANE .. ref, tenant)
    relane(ref, false)
  end
end

-- a tenant fell under its cap: it rejoins the orders of its lanes at its oldest request there,
-- and the workers of those pools are woken (its requests may be all that waits)
local function unpark_tenant(tenant)
  local apps, woken = {{}}, {{}}
  for _, ref in ipairs(redis.call('SMEMBERS', T_LANES .. tenant)) do
    local head = flow_head(ref, tenant)
    if head[1] then
      redis.call('ZADD', LANE .. ref, head[2], tenant)
      local pool, tier, lane = string.match(ref, '^([^:]*):([^:]*):(.*)$')
      local app = redis.call('HGET', LANE_APP .. pool .. ':' .. tier, lane)
      if app and apps[app] == nil then apps[app] = open(pool, A_RUN, A_CAP, app) end
      relane(ref, app and apps[app])
      if not woken[pool] then woken[pool] = true; wake(pool) end
    end
  end
end

-- an app reached its cap: its lanes leave their tiers' orders
local function park_app(app)
  for _, ref in ipairs(redis.call('SMEMBERS', A_LANES .. app)) do
    local pool, tier, lane = string.match(ref, '^([^:]*):([^:]*):(.*)$')
    redis.call('ZREM', LANES .. pool .. ':' .. tier, lane)
  end
end

-- an app fell under its cap: its lanes with a tenant under cap rejoin their tiers' orders, and
-- the workers of those pools are woken
local function unpark_app(app)
  local woken = {{}}
  for _, ref in ipairs(redis.call('SMEMBERS', A_LANES .. app)) do
    relane(ref, true)
    local pool = string.match(ref, '^([^:]*):')
    if not woken[pool] then woken[pool] = true; wake(pool) end
  end
end

-- the in-flight counts of tenant and app move by delta; reaching a cap parks, leaving it unparks
local function counted(tenant, app, delta)
  for _, s in ipairs({{{{T_RUN, T_CAP, tenant, park_tenant, unpark_tenant}},
                      {{A_RUN, A_CAP, app, park_app, unpark_app}}}}) do
    local n = redis.call('HINCRBY', s[1], s[3], delta)
    local cap = tonumber(redis.call('HGET', s[2], s[3]) or '0') or 0
    if cap > 0 then
      local was, now = n - delta < cap, n < cap
      if was and not now then s[4](s[3]) elseif now and not was then s[5](s[3]) end
    end
  end
end

-- who's in-flight cap (hash cap) becomes new; crossing it parks or unparks
local function recap(run, cap, who, new, park, unpark)
  local was_set = redis.call('HGET', cap, who)
  if was_set == new then return end
  local old = tonumber(was_set or '0') or 0
  local running = tonumber(redis.call('HGET', run, who) or '0') or 0
  redis.call('HSET', cap, who, new)
  local was = old <= 0 or running < old
  local now = (tonumber(new) or 0) <= 0 or running < (tonumber(new) or 0)
  if was and not now then park(who) elseif now and not was then unpark(who) end
end

-- worker w's reservation in pool ends; returns the id it held (nil: none)
local function unreserve(pool, w)
  local id = redis.call('HGET', RESERVED .. pool, w)
  redis.call('HDEL', RESERVED .. pool, w)
  redis.call('ZREM', RESERVED_UNTIL .. pool, w)
  return id
end

-- worker w's reservation in pool ends and its request, still queued, rejoins the lane index
local function release(pool, w)
  local id = unreserve(pool, w)
  local j = id and load(id)
  if j and j.status == S_QUEUED then index(j) end
end

-- the worker holding request j's reservation (nil: none)
local function holder(j)
  local held = redis.call('HGETALL', RESERVED .. j.pool)
  for i = 1, #held, 2 do if held[i + 1] == j.id then return held[i] end end
  return nil
end

-- a request stops running: its tenant's and app's in-flight counts go down
local function stopped(rk)
  local f = redis.call('HMGET', rk, 'tenant', 'app_key', 'pool')
  if f[3] == UNCAPPED or not f[1] or not f[2] then return end
  counted(f[1], f[2], -1)
end

-- what ``finish`` reads of record rk, by field name (nil: absent); one read
local function finishing(rk)
  local v = redis.call('HMGET', rk, 'status', 'worker', 'tenant', 'app_key', 'pool', 'tier',
                       'endpoint', 'created_ms', 'started_ms', 'outcome', 'cancelled', 'webhook',
                       'reply_to')
  return {{status = v[1] or nil, worker = v[2] or nil, tenant = v[3] or nil,
          app_key = v[4] or nil, pool = v[5] or nil, tier = v[6] or nil, endpoint = v[7] or nil,
          created_ms = v[8] or nil, started_ms = v[9] or nil, outcome = v[10] or nil,
          cancelled = v[11] or nil, webhook = v[12] or nil, reply_to = v[13] or nil}}
end

-- COMPLETED with the outcome field/value pairs ``fields``; the waiting gateway gets the outcome
-- on its reply channel (jobs.REPLY, one line each after the id), anyone else the id on DONE.
-- r: the record as ``finishing`` read it in this script (nil: read it here)
local function finish(id, now, ttl, fields, r)
  local rk = REQ .. id
  r = r or finishing(rk)
  if r.status == S_RUNNING and r.pool ~= UNCAPPED and r.tenant and r.app_key then
    counted(r.tenant, r.app_key, -1)
  end
  redis.call('HSET', rk, 'status', S_DONE, 'finished_ms', now, unpack(fields))
  local out = {{}}
  for i = 1, #fields, 2 do out[fields[i]] = fields[i + 1] end
  local status = 'error'
  if (out.cancelled or r.cancelled) == '1' then
    status = 'cancelled'
  elseif (out.outcome or r.outcome) == 'ok' then
    status = 'ok'
  end
  measure(r, status, now)
  redis.call('ZREM', INFLIGHT, id)
  redis.call('EXPIRE', rk, ttl)
  redis.call('EXPIRE', LOGS .. id, ttl)
  if r.webhook and r.webhook ~= '' then redis.call('ZADD', HOOKS, now, id) end
  if r.reply_to and r.reply_to ~= '' then
    local reply = {{id}}
    for _, name in ipairs({{{lua_list(REPLY)}}}) do reply[#reply + 1] = out[name] or '' end
    redis.call('PUBLISH', r.reply_to, table.concat(reply, '\\n'))
  else
    redis.call('PUBLISH', DONE, id)
  end
end

local function requeue(id)
  local rk = REQ .. id
  stopped(rk)
  redis.call('HSET', rk, 'status', S_QUEUED, 'worker', '')
  redis.call('ZREM', INFLIGHT, id)
  local j = load(id)
  redis.call('ZADD', qkey(j.pool, j.tier), j.score, id)
  index(j)
  wake(j.pool, j.fn)
end

-- is candidate c better than b by the policy?
local function better(c, b)
  if b == nil then return true end
  if c.over ~= b.over then return c.over end
  if c.over and c.score ~= b.score then return c.score > b.score end
  if c.rank ~= b.rank then return c.rank < b.rank end
  return c.raw < b.raw
end

-- lease queued request j (``load``) to worker ARGV[3] (now ARGV[1], lease ms ARGV[2]); held:
-- the worker whose reservation it is (nil: it is in the lane index). The job's row: id,
-- attempts, more, units, then the record fields of jobs.JOB
local function take(j, held, more, units)
  redis.call('ZREM', qkey(j.pool, j.tier), j.id)
  if held then unreserve(j.pool, held) else unindex(j) end
  local rk = REQ .. j.id
  local f = redis.call('HMGET', rk, {lua_list(JOB)}, 'app_key', 'pool', 'attempts')
  local attempts = (tonumber(f[{len(JOB) + 3}] or '0') or 0) + 1
  redis.call('HSET', rk, 'status', S_RUNNING, 'worker', ARGV[3], 'started_ms', ARGV[1],
             'attempts', attempts)
  redis.call('ZADD', INFLIGHT, tonumber(ARGV[1]) + tonumber(ARGV[2]), j.id)
  if f[{len(JOB) + 2}] ~= UNCAPPED then
    counted(f[{JOB.index("tenant") + 1}], f[{len(JOB) + 1}], 1)
  end
  return {{j.id, tostring(attempts), more, units, unpack(f, 1, {len(JOB)})}}
end

-- tiers from 'name:slo_ms,...' in rank order (first = most important)
local function parse_tiers(spec)
  local tiers = {{}}
  for name, slo in string.gmatch(spec, '([^:,]+):([^,]+)') do
    tiers[#tiers + 1] = {{name = name, slo = tonumber(slo), rank = #tiers}}
  end
  return tiers
end

-- a candidate of tier t at now: request id with queue score raw
local function candidate(id, raw, t, now)
  local enq = math.floor(raw / 1000)
  local score = (now - enq) / t.slo
  return {{id = id, raw = raw, enq = enq, score = score, over = score >= 1, rank = t.rank}}
end

-- how many requests of request id's flow (raw: its queue score) go before it besides those of
-- its tier queued before it: its flow's normal requests queued after it when it is low, less
-- its flow's low requests queued before it when it is normal
local function flow_ahead(id, raw)
  local j = load(id)
  local flow = j.pool .. ':' .. j.tier .. ':' .. j.lane .. ':' .. j.tenant
  if j.low then return redis.call('ZCOUNT', FLOW .. flow, '(' .. raw, '+inf') end
  return -redis.call('ZCOUNT', LOW_FLOW .. flow, '-inf', '(' .. raw)
end

-- how many queued requests of its pool go before request id, as the policy orders them at now
-- (an estimate: caps and later arrivals can change it); -1 when it is not queued
local function position(id, now, tiers)
  local f = redis.call('HMGET', REQ .. id, 'status', 'pool', 'tier', 'score')
  if f[1] ~= S_QUEUED then return -1 end
  local mine
  for _, t in ipairs(tiers) do if t.name == f[3] then mine = t end end
  if mine == nil then return -1 end
  local my_score = tonumber(f[4])
  local wait = now - math.floor(my_score / 1000)
  local over = wait >= mine.slo
  local ahead = 0
  for _, t in ipairs(tiers) do
    local q = qkey(f[2], t.name)
    local overdue = (now - t.slo) * 1000
    if over then
      local cut = (now - wait * t.slo / mine.slo) * 1000
      if t.name == mine.name then
        ahead = ahead + redis.call('ZCOUNT', q, '-inf', '(' .. f[4])
      else
        ahead = ahead + redis.call('ZCOUNT', q, '-inf', '(' .. string.format('%.0f', cut))
      end
    else
      ahead = ahead + redis.call('ZCOUNT', q, '-inf', '(' .. string.format('%.0f', overdue))
      if t.rank < mine.rank then
        ahead = ahead + redis.call('ZCOUNT', q, string.format('%.0f', overdue), '+inf')
      elseif t.name == mine.name then
        ahead = ahead + redis.call('ZCOUNT', q, string.format('%.0f', overdue), '(' .. f[4])
      end
    end
  end
  return ahead + flow_ahead(id, f[4])
end
"""

OWN_PART = "\n-- the script's own part\n"
"""Where a script's own part begins, after the prelude steps it needs (``trim``)."""


def _steps(prelude: str) -> tuple[str, dict[str, str]]:
    """The prelude cut into its head (every line before its first step: key prefixes, statuses,
    constants) and its steps, each ``local function`` with the comment lines above it, by
    name, in order. A step must end at its function's closing ``end`` (nothing else between
    two steps runs)."""
    lines = prelude.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("local function ")]
    begins = []
    for i in starts:
        while i > 0 and lines[i - 1].startswith("--"):
            i -= 1
        begins.append(i)
    steps: dict[str, str] = {}
    for k, (begin, start) in enumerate(zip(begins, starts, strict=True)):
        end = begins[k + 1] if k + 1 < len(begins) else len(lines)
        name = lines[start].removeprefix("local function ").partition("(")[0]
        text = lines[begin:end]
        one_line = text[start - begin].endswith(" end")
        closing = start - begin if one_line else text.index("end", start - begin)
        if any(line.strip() for line in text[closing + 1 :]):
            raise ValueError(f"the prelude runs something after step {name}")
        steps[name] = "\n".join(text)
    return "\n".join(lines[: begins[0]]), steps


def trim(script: str) -> str:
    """``script`` (``PRELUDE`` and its own part) with only the prelude steps its own part
    calls, directly or through other steps, in the prelude's order. Redis runs a script's
    whole text on each call: defining all the steps took about 10 µs of a call, those a
    script needs about 4."""
    own = script.removeprefix(PRELUDE)
    head, steps = _steps(PRELUDE)
    needed: set[str] = set()
    todo = [own]
    while todo:
        text = todo.pop()
        for name, step in steps.items():
            if name not in needed and re.search(rf"\b{name}\b", text):
                needed.add(name)
                todo.append(step)
    kept = [step for name, step in steps.items() if name in needed]
    return "\n".join([head, *kept]) + OWN_PART + own


# ARGV: id, pool, tier, now_ms, max_queued, tenant, tenant cap, app key, app cap, tiers spec
#       ('': no position wanted), history cap (0: none), history cutoff (ms: ids enqueued
#       before it leave the tenant's history), the values of the record's jobs.ROUTING fields
#       in that order (``NewRequest.values``)
# returns {score, 0, position (-1 when not asked)} when queued; {-1, queued_in_tier} when the
# tier's queue is full. The caps given become the tenant's and the app's (one crossing its
# in-flight count parks or unparks it), then the request joins its queue and the lane index.
ENQUEUE = trim(
    PRELUDE
    + f"""
local ROUTING_FIELDS = {{{lua_list(ROUTING)}}}
"""
    + """
local q = qkey(ARGV[2], ARGV[3])
local queued = redis.call('ZCARD', q)
if queued >= tonumber(ARGV[5]) then return {-1, queued} end
local score = tonumber(ARGV[4]) * 1000
local last = redis.call('ZRANGE', q, -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
local record = {'score', string.format('%.0f', score)}
for i, name in ipairs(ROUTING_FIELDS) do
  record[#record + 1] = name
  record[#record + 1] = ARGV[12 + i]
end
redis.call('HSET', REQ .. ARGV[1], unpack(record))
redis.call('ZADD', q, score, ARGV[1])
recap(T_RUN, T_CAP, ARGV[6], ARGV[7], park_tenant, unpark_tenant)
recap(A_RUN, A_CAP, ARGV[8], ARGV[9], park_app, unpark_app)
local j = load(ARGV[1])
index(j)
redis.call('SADD', POOLS, ARGV[2])
local hk, most = HISTORY .. ARGV[6], tonumber(ARGV[11])
redis.call('ZADD', hk, ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', hk, '-inf', '(' .. ARGV[12])
if most > 0 and redis.call('ZCARD', hk) > most then
  redis.call('ZREMRANGEBYRANK', hk, 0, -most - 1)
end
wake(ARGV[2], j.fn)
local pos = -1
if ARGV[10] ~= '' then pos = position(ARGV[1], tonumber(ARGV[4]), parse_tiers(ARGV[10])) end
return {string.format('%.0f', score), 0, pos}
"""
)

# ARGV: now_ms, lease_ms, worker_id, tiers spec, free units, total units, warm here, warm
#       elsewhere, full, max reserved ('': no limit), hinted here, hinted elsewhere, pool...
#       ('*': every pool). "warm here/elsewhere": comma-separated
#       "revision/function" of runners idle on this worker / on other workers (each of the
#       latter optionally followed by "|worker id|worker id...", the workers holding it idle);
#       "full": those whose runners here are all busy at max_concurrency (never candidates: no
#       hoarding); "hinted here/elsewhere": "revision/function<TAB>hint" lines, a hint an idle
#       runner here / on another worker reports (each of the latter optionally followed by
#       "<TAB>worker id|worker id...", the workers whose idle runner reports it).
# The policy of scheduler.pick_for_worker, over the lane index. A request takes max(gpus, 1)
# units. Reservations past their deadline (their worker went silent) first return to the index.
# Candidates: per tier, the oldest request whose tenant and app are under their in-flight caps,
# that this worker could ever hold (units <= total) and whose function is not full: the head of
# the first such lane of the tier's lane order (capped tenants and apps are not in it, reserved
# requests neither). ``best``, the policy's pick among them: if any has waited past its tier's
# SLO, the one with the largest wait/SLO; otherwise the most important tier's. Then:
#   W0. this worker holds a reservation: over cap: the reservation ends (the request returns
#       to the index) and the rules go on; it needs more units than are free: renew it and
#       answer {'', 'blocked', units}; it fits: take it. Without one of its own,
#       the best of the other workers' reservations that fit the free units and are under cap:
#       take it, unless its function is not idle here and a warm candidate (W4's) fits the free
#       units: then the rules go on (the warm work goes first here; the reservation waits for
#       its own worker);
#   W1. best runs on a runner idle here: take it; unless its record's hint is hinted
#       elsewhere and not here and it has waited less than HINT_WAIT_MS: take nothing,
#       {'', 'elsewhere', ms left of HINT_WAIT_MS}, and wake the workers reporting the hint on
#       their own lists (as W2);
#   W2. best's function is idle on another worker: take nothing, {'', 'elsewhere'}, and wake
#       the workers holding it idle on their own lists (the pool's workers when none is named);
#   W2b. best is young and its app's busy runners reach every request of the app in the index
#       within a cold start (running * cold >= queued * mean service, SERVICE and COLD): the
#       rules again, without best's lane (it waits for them, at most a cold start);
#   W3. best needs more units than are free: reserve it for this worker (until now + lease
#       ms, out of the index) and answer {'', 'blocked', units}: only this worker drains for it.
#       With max reserved reservations held in these pools already, backfill instead: these
#       rules again over the candidates that fit the free units;
#   W4. best is young (within its SLO and waited less than its app's measured cold start), or
#       over its SLO: the best of the warm candidates (per tier the oldest request under caps of
#       a function idle here, fitting the total), if it fits the free units and best is young or
#       its wait/SLO is at least WARM_SHARE of best's (for a warm candidate of best's tier or a
#       more important one, times (service / cold start) ** COLD_WEIGHT where best's app's cold
#       start is longer than its mean service time, SERVICE and COLD), with no cold start;
#   W5. otherwise best, with a cold start.
# Cost: a few commands per tier and pool, plus the lanes skipped, the reservations of the pools
# and the warm functions' lanes; never the capped requests queued.
DISPATCH = trim(
    PRELUDE
    + """
local now = tonumber(ARGV[1])
local worker = ARGV[3]
local until_ms = now + tonumber(ARGV[2])
local tiers = parse_tiers(ARGV[4])
local by_name = {}
for _, t in ipairs(tiers) do by_name[t.name] = t end
local free, total = tonumber(ARGV[5]), tonumber(ARGV[6])
local function set_of(csv, items)
  local set, n = {}, 0
  for item in string.gmatch(csv, items or '[^,]+') do set[item] = true; n = n + 1 end
  return set, n
end
local here, n_here = set_of(ARGV[7])
-- items of list (split by pattern ``items``), each "name<sep>holders" or "name" (``named``:
-- matches both): name -> the workers holding it ("w1|w2"; '': unknown), and how many
local function holders_of(list, items, named)
  local map, n = {}, 0
  for item in string.gmatch(list, items) do
    local name, holders = string.match(item, named)
    map[name] = holders
    n = n + 1
  end
  return map, n
end
local elsewhere = holders_of(ARGV[8], '[^,]+', '^([^|]*)|?(.*)$')
local full = set_of(ARGV[9])
local pools = {}
local max_reserved = tonumber(ARGV[10])
local hinted_here = set_of(ARGV[11], '[^\\n]+')
local hinted_elsewhere, n_hinted = holders_of(ARGV[12], '[^\\n]+',
                                              '^([^\\t]*\\t[^\\t]*)\\t?(.*)$')
if ARGV[13] == '*' then
  for _, p in ipairs(redis.call('SMEMBERS', POOLS)) do
    if p ~= UNCAPPED then pools[#pools + 1] = p end
  end
else
  for i = 13, #ARGV do pools[#pools + 1] = ARGV[i] end
end

-- W1's exception: candidate c's hint is reported by an idle runner elsewhere, by none here, and
-- c is young enough to be left to it: the workers reporting it ('': unknown), else false
local function hinted_away(c)
  if n_hinted == 0 or now - c.enq >= HINT_WAIT_MS then return false end
  local hint = redis.call('HGET', REQ .. c.id, 'hint')
  if not hint or hint == '' then return false end
  local pair = c.fn .. '\\t' .. hint
  if hinted_here[pair] then return false end
  return hinted_elsewhere[pair] or false
end
-- '1' when the pools hold another queued request besides the one being taken, else '0'
local function more()
  local queued = 0
  for _, pool in ipairs(pools) do
    for _, t in ipairs(tiers) do
      queued = queued + redis.call('ZCARD', qkey(pool, t.name))
      if queued > 1 then return '1' end
    end
  end
  return '0'
end

-- the head of lane (of pool:tier at) and its score
local function head(at, lane)
  local ref = at .. ':' .. lane
  local tenant = redis.call('ZRANGE', LANE .. ref, 0, 0)[1]
  local h = flow_head(ref, tenant)
  return h[1], tonumber(h[2])
end

-- W4's warm candidate: per tier the oldest request under caps of a function idle here (not
-- full) of at most limit units, and the best of those (nil: none)
local function warm_best(limit)
  local warm
  for _, t in ipairs(tiers) do
    local first
    for _, pool in ipairs(pools) do
      local at = pool .. ':' .. t.name
      for fn in pairs(here) do
        if not full[fn] then
          for _, lane in ipairs(redis.call('SMEMBERS', FN_LANES .. at .. ':' .. fn)) do
            local units = tonumber(string.match(lane, '#(%d+)$'))
            local raw = units <= limit and redis.call('ZSCORE', LANES .. at, lane)
            if raw and (first == nil or tonumber(raw) < first.raw) then
              first = {at = at, lane = lane, units = units, raw = tonumber(raw)}
            end
          end
        end
      end
    end
    if first then
      local id, raw = head(first.at, first.lane)
      local c = candidate(id, raw, t, now)
      c.units = first.units
      if better(c, warm) then warm = c end
    end
  end
  return warm
end

-- W0
local own, others = nil, {}
for _, pool in ipairs(pools) do
  local expired = redis.call('ZRANGEBYSCORE', RESERVED_UNTIL .. pool, '-inf', '(' .. now)
  for _, w in ipairs(expired) do release(pool, w) end
  local held = redis.call('HGETALL', RESERVED .. pool)
  for i = 1, #held, 2 do
    local j = load(held[i + 1])
    if not (j and j.status == S_QUEUED and by_name[j.tier]) then
      unreserve(pool, held[i])
    elseif held[i] == worker then
      own = j
    else
      others[#others + 1] = {w = held[i], j = j}
    end
  end
end
if own then
  if not job_open(own) then
    release(own.pool, worker)
  elseif own.units > free then
    redis.call('ZADD', RESERVED_UNTIL .. own.pool, until_ms, worker)
    return {'', 'blocked', tostring(own.units)}
  else
    return take(own, worker, more(), tostring(own.units))
  end
else
  local pick
  for _, o in ipairs(others) do
    if o.j.units <= math.min(free, total) and job_open(o.j) then
      local c = candidate(o.j.id, o.j.score, by_name[o.j.tier], now)
      c.j, c.w = o.j, o.w
      if better(c, pick) then pick = c end
    end
  end
  if pick and n_here > 0 and not here[pick.j.fn] and warm_best(math.min(free, total)) then
    pick = nil -- this worker's warm work goes first
  end
  if pick then return take(pick.j, pick.w, more(), tostring(pick.j.units)) end
end

local function reserved_count()
  local n = 0
  for _, pool in ipairs(pools) do n = n + redis.call('HLEN', RESERVED .. pool) end
  return n
end

-- app's measured mean service time (ms; 0: none), which W2b and W4 weigh against its cold start
local function service_of(app)
  return tonumber(redis.call('HGET', SERVICE, app) or '0') or 0
end

-- W2b: candidate c (request j, whose app's measured cold start is cold) is young and its app's
-- busy runners reach all its app's queued requests within a cold start
-- (scheduler.busy_runners_first); c's function is idle nowhere (W1 and W2 went first)
local left = {}
local function left_to_busy(j, c, cold)
  if now - c.enq >= cold then return false end
  local service = service_of(j.app)
  if service <= 0 then return false end
  local running = tonumber(redis.call('HGET', A_RUN, j.app) or '0') or 0
  if running <= 0 then return false end
  local queued = 0
  for _, ref in ipairs(redis.call('SMEMBERS', A_LANES .. j.app)) do
    local pool, tier, lane = string.match(ref, '^([^:]*):([^:]*):(.*)$')
    queued = queued + (tonumber(redis.call('HGET', LANE_JOBS .. pool .. ':' .. tier, lane)) or 0)
  end
  return queued * service <= running * cold
end

-- W4's share of best's score a warm candidate needs under overload (scheduler.warm_share), for
-- a best of app, whose measured cold start is cold: less where it is longer than the app's
-- mean service time
local function warm_share(app, cold)
  local service = service_of(app)
  if cold <= service or service <= 0 then return WARM_SHARE end
  return WARM_SHARE * (service / cold) ^ COLD_WEIGHT
end

-- rules 2 and W1-W5 over the requests of at most limit units (W3's backfill: the free units)
local choose
choose = function(limit)
  -- rule 2: per tier the oldest eligible request across the pools, skipping lanes too big or full
  local best
  for _, t in ipairs(tiers) do
    local first
    for _, pool in ipairs(pools) do
      local at = pool .. ':' .. t.name
      local from, found = 0, nil
      while found == nil do
        local lanes = redis.call('ZRANGE', LANES .. at, from, from + 15, 'WITHSCORES')
        if #lanes == 0 then break end
        for i = 1, #lanes, 2 do
          local fn, units = string.match(lanes[i], '^(.*)#(%d+)$')
          if tonumber(units) <= limit and not full[fn] and not left[at .. ':' .. lanes[i]] then
            found = {lane = lanes[i], fn = fn, units = tonumber(units),
                     raw = tonumber(lanes[i + 1])}
            break
          end
        end
        from = from + 16
      end
      if found and (first == nil or found.raw < first.raw) then
        found.at, found.pool = at, pool
        first = found
      end
    end
    if first then
      local id, raw = head(first.at, first.lane)
      local c = candidate(id, raw, t, now)
      c.fn, c.units, c.pool = first.fn, first.units, first.pool
      c.ref = first.at .. ':' .. first.lane
      if better(c, best) then best = c end
    end
  end
  if best == nil then return nil end

  local away = here[best.fn] and hinted_away(best)
  if here[best.fn] and not away then -- W1
    return take(load(best.id), nil, more(), tostring(best.units))
  end
  if away then -- W1's exception: the workers reporting its hint serve it
    wake_holders(best.pool, away)
    return {'', 'elsewhere', string.format('%.0f', HINT_WAIT_MS - (now - best.enq))}
  end
  if elsewhere[best.fn] then -- W2
    wake_holders(best.pool, elsewhere[best.fn])
    return {'', 'elsewhere'}
  end
  local bj = load(best.id)
  local cold = tonumber(redis.call('HGET', COLD, bj.app) or '0') or 0
  if left_to_busy(bj, best, cold) then -- W2b: the rules again, without its lane
    left[best.ref] = true
    return choose(limit)
  end
  if best.units > free then -- W3
    if max_reserved and reserved_count() >= max_reserved then return choose(free) end
    unindex(bj)
    redis.call('HSET', RESERVED .. bj.pool, worker, bj.id)
    redis.call('ZADD', RESERVED_UNTIL .. bj.pool, until_ms, worker)
    return {'', 'blocked', tostring(best.units)}
  end
  local young = not best.over and now - best.enq < cold
  if n_here > 0 and (young or best.over) then -- W4
    local warm = warm_best(limit)
    local close = young or (warm and warm.score >= (warm.rank <= best.rank
      and warm_share(bj.app, cold) or WARM_SHARE) * best.score)
    if warm and warm.units <= free and close then
      return take(load(warm.id), nil, more(), tostring(warm.units))
    end
  end
  return take(bj, nil, more(), tostring(best.units)) -- W5
end
return choose(total)
"""
)

# ARGV: now_ms, lease_ms, worker_id, tiers spec, pool, revision, function, endpoint, n
# Fills a batch: leases up to n queued requests of one endpoint (revision, function, endpoint
# path) of ``pool`` to the worker whose runner is gathering them, in the policy's order (as
# DISPATCH: each flow offers its requests in its order, normal before low, and the next taken
# is the best of the flows' next by over-SLO first by wait/SLO, then tier rank, then FIFO),
# skipping those whose tenant or app is at its in-flight cap and those reserved. Looks only at
# the function's lanes in the index: per tier and lane, the first n requests of that endpoint of
# each of its first n tenants under cap, looking at 256 requests at most. Returns the rows of
# the leased jobs, as DISPATCH's, with units '0': they share the runner's.
DISPATCH_FOR = trim(
    PRELUDE
    + """
local now = tonumber(ARGV[1])
local tiers = parse_tiers(ARGV[4])
local pool, fnkey, ep, n = ARGV[5], ARGV[6] .. '/' .. ARGV[7], ARGV[8], tonumber(ARGV[9])
local flows = {}
local budget = 256
for _, t in ipairs(tiers) do
  local at = pool .. ':' .. t.name
  for _, lane in ipairs(redis.call('SMEMBERS', FN_LANES .. at .. ':' .. fnkey)) do
    local ref = at .. ':' .. lane
    if budget > 0 and redis.call('ZSCORE', LANES .. at, lane) then
      for _, tenant in ipairs(redis.call('ZRANGE', LANE .. ref, 0, n - 1)) do
        local cands, found = {}, 0
        for _, prefix in ipairs({FLOW, LOW_FLOW}) do
          local flow, from = prefix .. ref .. ':' .. tenant, 0
          while budget > 0 and found < n do
            local ids = redis.call('ZRANGE', flow, from, from + n - 1, 'WITHSCORES')
            if #ids == 0 then break end
            for i = 1, #ids, 2 do
              budget = budget - 1
              if redis.call('HGET', REQ .. ids[i], 'endpoint') == ep then
                found = found + 1
                cands[#cands + 1] = candidate(ids[i], tonumber(ids[i + 1]), t, now)
              end
            end
            from = from + n
          end
        end
        if #cands > 0 then flows[#flows + 1] = {cands = cands, next = 1} end
      end
    end
  end
end
local out = {}
local taken = 0
while taken < n do
  local pick
  for _, f in ipairs(flows) do
    local c = f.cands[f.next]
    if c and (pick == nil or better(c, pick.cands[pick.next])) then pick = f end
  end
  if pick == nil then break end
  local j = load(pick.cands[pick.next].id)
  pick.next = pick.next + 1
  if job_open(j) then
    taken = taken + 1
    for _, v in ipairs(take(j, nil, '0', '0')) do out[#out + 1] = v end
  end
end
return out
"""
)

# ARGV: pool, tier, from, count. Puts the queued requests at ranks from..from+count-1 of the
# tier's queue that the lane index lacks (queued before it existed) into it; reserved ones are
# left out. Returns {next rank (-1: done), requests indexed}.
REINDEX = trim(
    PRELUDE
    + """
local pool, tier = ARGV[1], ARGV[2]
local from, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('ZRANGE', qkey(pool, tier), from, from + count - 1)
local held = {}
local reserved = redis.call('HVALS', RESERVED .. pool)
for _, id in ipairs(reserved) do held[id] = true end
local n = 0
for _, id in ipairs(ids) do
  local j = load(id)
  if j and j.status == S_QUEUED and not held[id] then
    if not redis.call('ZSCORE', flow_of(j, pool .. ':' .. tier .. ':' .. j.lane), id) then
      index(j)
      n = n + 1
    end
  end
end
if #ids < count then return {-1, n} end
return {from + count, n}
"""
)

# ARGV: id, now_ms, tiers spec. The request's queue position (``position``), -1 when it is not
# queued.
POSITION = trim(
    PRELUDE
    + """
return position(ARGV[1], tonumber(ARGV[2]), parse_tiers(ARGV[3]))
"""
)

# ARGV: worker_id, lease deadline ms, id... Renews the leases of those ids the worker still
# holds; returns how many.
RENEW = trim(
    PRELUDE
    + """
local n = 0
for i = 3, #ARGV do
  local st = redis.call('HMGET', REQ .. ARGV[i], 'status', 'worker')
  if st[1] == S_RUNNING and st[2] == ARGV[1] then
    redis.call('ZADD', INFLIGHT, 'XX', ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
"""
)

# ARGV: id, worker_id, now_ms, ttl_s, service app key ('': none), service ms, n, n log lines,
#       outcome field/value pairs, optionally ending in 'batch', size: the request counts the
#       batch it ran in (one request per batch does) in the batch-size histogram. The lease
#       holder's completion: its last log lines, the app's service time and the outcome, in one
#       step; 0 when the lease was lost.
COMPLETE = trim(
    PRELUDE
    + """
local r = finishing(REQ .. ARGV[1])
if r.status ~= S_RUNNING or r.worker ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[7])
if n > 0 then redis.call('RPUSH', LOGS .. ARGV[1], unpack(ARGV, 8, 7 + n)) end
if ARGV[5] ~= '' then fold_mean(SERVICE, ARGV[5], ARGV[6]) end
local fields = {unpack(ARGV, 8 + n)}
if fields[#fields - 1] == 'batch' then
  observe(M_BATCH, (r.pool or '') .. '|' .. (r.app_key or '') .. '|' .. (r.endpoint or ''),
          tonumber(fields[#fields]), BATCH_SIZES)
  fields[#fields] = nil
  fields[#fields] = nil
end
finish(ARGV[1], ARGV[3], ARGV[4], fields, r)
return 1
"""
)

# ARGV: id, worker_id
REQUEUE = trim(
    PRELUDE
    + """
local st = redis.call('HMGET', REQ .. ARGV[1], 'status', 'worker')
if st[1] ~= S_RUNNING or st[2] ~= ARGV[2] then return 0 end
requeue(ARGV[1])
return 1
"""
)

# ARGV: worker_id, id... A stopping worker hands back what it holds: each of those requests it
# still leases goes back to its queue at its original position with its attempt not counted (the
# worker left, it did not fail), and its reservations end (their requests rejoin the lane
# index). Returns how many requests went back.
HAND_BACK = trim(
    PRELUDE
    + """
for _, pool in ipairs(redis.call('SMEMBERS', POOLS)) do release(pool, ARGV[1]) end
local n = 0
for i = 2, #ARGV do
  local rk = REQ .. ARGV[i]
  local st = redis.call('HMGET', rk, 'status', 'worker')
  if st[1] == S_RUNNING and st[2] == ARGV[1] then
    if redis.call('HINCRBY', rk, 'attempts', -1) < 0 then redis.call('HSET', rk, 'attempts', 0) end
    requeue(ARGV[i])
    n = n + 1
  end
end
return n
"""
)

# ARGV: now_ms, max_attempts, ttl_s, outcome field/value pairs (of a request lost too often)
REQUEUE_EXPIRED = trim(
    PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', ARGV[1], 'LIMIT', 0, 100)
local n = 0
for _, id in ipairs(ids) do
  local st = redis.call('HMGET', REQ .. id, 'status', 'attempts')
  if st[1] ~= S_RUNNING then
    redis.call('ZREM', INFLIGHT, id)
  else
    n = n + 1
    if tonumber(st[2]) < tonumber(ARGV[2]) then
      requeue(id)
    else
      finish(id, ARGV[1], ARGV[3], {unpack(ARGV, 4)})
    end
  end
end
return n
"""
)

# ARGV: id, now_ms, ttl_s, outcome field/value pairs (of a cancelled request)
# returns 1: a queued request was cancelled; 2: running, interruption signalled;
#         0: already completed; -1: unknown
CANCEL = trim(
    PRELUDE
    + """
local rk = REQ .. ARGV[1]
local st = redis.call('HMGET', rk, 'status', 'pool', 'tier')
if not st[1] then return -1 end
if st[1] == S_QUEUED then
  local j = load(ARGV[1])
  redis.call('ZREM', qkey(st[2], st[3]), ARGV[1])
  local held = holder(j)
  if held then unreserve(j.pool, held) else unindex(j) end
  finish(ARGV[1], ARGV[2], ARGV[3], {'cancelled', '1', unpack(ARGV, 4)})
  return 1
end
if st[1] == S_RUNNING then
  redis.call('HSET', rk, 'cancel_requested', '1')
  redis.call('PUBLISH', CANCEL, ARGV[1])
  return 2
end
return 0
"""
)

# ARGV: pool, app key, cold-start seconds. Folds the app's mean cold start (ms) and counts it
# in the cold-start histogram.
RECORD_COLD = trim(
    PRELUDE
    + f"""
fold_mean(COLD, ARGV[2], string.format('%.1f', tonumber(ARGV[3]) * 1000))
observe('{keys.METRICS_COLD_S}', ARGV[1] .. '|' .. ARGV[2], tonumber(ARGV[3]), DURATIONS)
return 1
"""
)

# The completed requests' metric lines still pending go into the counts; returns how many.
FOLD_METRICS = trim(
    PRELUDE
    + """
return fold_metrics()
"""
)

# ARGV: a wake list (keys.wake), the token (a "revision/function", or keys.WAKE_ANY). One token
# on it, as the prelude's ``push_wake``; the list expires a minute after its last token (a
# worker's own list outlives its worker by no more).
NUDGE = """
if redis.call('LPUSH', ARGV[1], ARGV[2]) > 64 then redis.call('LTRIM', ARGV[1], 0, 63) end
redis.call('EXPIRE', ARGV[1], 60)
return 1
"""

# KEYS: stats hash. ARGV: app key, sample (ms). A running mean, new samples weighted 0.2.
RECORD_TIME = trim(
    PRELUDE
    + """
fold_mean(KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: a key's token bucket (keys.rate). ARGV: now_ms, rate per second, burst. Takes one token:
# 0 when there was one, else how many ms until there is.
TAKE_TOKEN = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, at = burst, now
local state = redis.call('GET', KEYS[1])
if state then
  local sep = string.find(state, ' ', 1, true)
  tokens, at = tonumber(string.sub(state, 1, sep - 1)), tonumber(string.sub(state, sep + 1))
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('SET', KEYS[1], string.format('%.6f %d', tokens, now),
           'PX', math.ceil(burst * 1000 / rate) + 1000)
return wait
"""

# KEYS: webhooks zset. ARGV: now_ms, claimed_until_ms, limit.
# Returns the ids claimed; their records get webhook_status=pending on their first claim.
CLAIM_WEBHOOKS = f"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {{}}
for _, id in ipairs(ids) do
  local rk = '{keys.REQUEST_PREFIX}' .. id
  if redis.call('EXISTS', rk) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    if not redis.call('HGET', rk, 'webhook_status') then
      redis.call('HSET', rk, 'webhook_status', 'pending')
    end
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = id
  end
end
return out
"""

# KEYS: request record, webhooks zset. ARGV: id, delivered ('1' | ''), error, retry_at_ms,
# max_attempts. Returns the attempts so far, or -1 when the record is gone.
RECORD_WEBHOOK = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return -1
end
local n = redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
local app = (redis.call('HGET', KEYS[1], 'app_key') or '') .. '|'
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'webhook_status', 'delivered')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], app .. 'delivered', 1)
  return n
end
redis.call('HSET', KEYS[1], 'webhook_last_error', ARGV[3])
if n >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'webhook_status', 'failed')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], app .. 'failed', 1)
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('HINCRBY', KEYS[3], app .. 'retried', 1)
end
return n
"""
