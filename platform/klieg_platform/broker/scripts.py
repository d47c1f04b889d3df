"""Every Lua script of the broker. Each runs atomically in Redis; together they are the only
writers of a request record's status.

A shared prelude bakes in the key prefixes from ``keys.py``, the statuses and field lists of the
job record (``jobs.py``), and defines the steps every script composes from: ``qkey`` (a queue's
key, as ``keys.queue``), ``wake`` (tokens for blocked workers), ``take`` (lease a queued
request: IN_QUEUE -> IN_PROGRESS), ``finish`` (-> COMPLETED + TTL + webhook due + publish) and
``requeue`` (IN_PROGRESS -> IN_QUEUE at its original position). Scripts derive request and queue
keys from the prefixes, so they assume a single Redis node (not Redis Cluster).
"""

from __future__ import annotations

from klieg_platform import keys
from klieg_platform.broker.jobs import JOB, REPLY, Status, lua_list

PRELUDE = f"""
local REQ, QUEUE, WAKE = '{keys.REQUEST_PREFIX}', '{keys.QUEUE_PREFIX}', '{keys.WAKE_PREFIX}'
local INFLIGHT, POOLS = '{keys.INFLIGHT}', '{keys.POOLS}'
local HOOKS, DONE, CANCEL = '{keys.WEBHOOKS}', '{keys.DONE_CHANNEL}', '{keys.CANCEL_CHANNEL}'
local T_RUN, A_RUN = '{keys.TENANT_INFLIGHT}', '{keys.APP_INFLIGHT}'
local T_CAP, A_CAP = '{keys.TENANT_CAPS}', '{keys.APP_CAPS}'
local COLD, SERVICE = '{keys.COLD_STATS}', '{keys.SERVICE_STATS}'
local UNCAPPED = '{keys.WORKFLOW_POOL}'
local LOGS = '{keys.LOGS_PREFIX}'
local S_QUEUED, S_RUNNING = '{Status.IN_QUEUE}', '{Status.IN_PROGRESS}'
local S_DONE = '{Status.COMPLETED}'

local function qkey(pool, tier) return QUEUE .. pool .. ':' .. tier end

-- fold a sample (ms) into a running mean of hash key's field (new samples weighted 0.2)
local function fold_mean(key, field, sample)
  local old = tonumber(redis.call('HGET', key, field))
  local s = tonumber(sample)
  local mean = old and (0.8 * old + 0.2 * s) or s
  redis.call('HSET', key, field, string.format('%.1f', mean))
end

local function wake(pool)
  for _, w in ipairs({{WAKE .. pool, WAKE .. '*'}}) do
    redis.call('LPUSH', w, '1')
    redis.call('LTRIM', w, 0, 63)
  end
end

-- a request stops running: its tenant's and app's in-flight counts go down
local function stopped(rk)
  local f = redis.call('HMGET', rk, 'tenant', 'app_key', 'pool')
  if f[3] == UNCAPPED then return end
  if f[1] then redis.call('HINCRBY', T_RUN, f[1], -1) end
  if f[2] then redis.call('HINCRBY', A_RUN, f[2], -1) end
end

-- COMPLETED with the outcome field/value pairs ``fields``; the waiting gateway gets the outcome
-- on its reply channel (jobs.REPLY, one line each after the id), anyone else the id on DONE
local function finish(id, now, ttl, fields)
  local rk = REQ .. id
  if redis.call('HGET', rk, 'status') == S_RUNNING then stopped(rk) end
  redis.call('HSET', rk, 'status', S_DONE, 'finished_ms', now, unpack(fields))
  redis.call('ZREM', INFLIGHT, id)
  redis.call('EXPIRE', rk, ttl)
  redis.call('EXPIRE', LOGS .. id, ttl)
  local to = redis.call('HMGET', rk, 'webhook', 'reply_to')
  if to[1] and to[1] ~= '' then redis.call('ZADD', HOOKS, now, id) end
  if to[2] and to[2] ~= '' then
    local out = {{}}
    for i = 1, #fields, 2 do out[fields[i]] = fields[i + 1] end
    local reply = {{id}}
    for _, name in ipairs({{{lua_list(REPLY)}}}) do reply[#reply + 1] = out[name] or '' end
    redis.call('PUBLISH', to[2], table.concat(reply, '\\n'))
  else
    redis.call('PUBLISH', DONE, id)
  end
end

local function requeue(id)
  local rk = REQ .. id
  local st = redis.call('HMGET', rk, 'pool', 'tier', 'score')
  stopped(rk)
  redis.call('HSET', rk, 'status', S_QUEUED, 'worker', '')
  redis.call('ZREM', INFLIGHT, id)
  redis.call('ZADD', qkey(st[1], st[2]), st[3], id)
  wake(st[1])
end

-- is candidate c better than b by the policy?
local function better(c, b)
  if b == nil then return true end
  if c.over ~= b.over then return c.over end
  if c.over and c.score ~= b.score then return c.score > b.score end
  if c.rank ~= b.rank then return c.rank < b.rank end
  return c.enq < b.enq
end

-- lease queued candidate c to worker ARGV[3] (now ARGV[1], lease ms ARGV[2]); the job's row:
-- id, attempts, more, units, then the record fields of jobs.JOB
local function take(c, more, units)
  redis.call('ZREM', c.q, c.id)
  local rk = REQ .. c.id
  redis.call('HSET', rk, 'status', S_RUNNING, 'worker', ARGV[3], 'started_ms', ARGV[1])
  local attempts = redis.call('HINCRBY', rk, 'attempts', 1)
  redis.call('ZADD', INFLIGHT, tonumber(ARGV[1]) + tonumber(ARGV[2]), c.id)
  local f = redis.call('HMGET', rk, {lua_list(JOB)}, 'app_key', 'pool')
  if f[{len(JOB) + 2}] ~= UNCAPPED then
    redis.call('HINCRBY', T_RUN, f[{JOB.index("tenant") + 1}], 1)
    redis.call('HINCRBY', A_RUN, f[{len(JOB) + 1}], 1)
  end
  return {{c.id, tostring(attempts), more, units, unpack(f, 1, {len(JOB)})}}
end

-- tiers from 'name:slo_ms,...' in rank order (first = most important)
local function parse_tiers(spec)
  local tiers = {{}}
  for name, slo in string.gmatch(spec, '([^:,]+):([^,]+)') do
    tiers[#tiers + 1] = {{name = name, slo = tonumber(slo), rank = #tiers}}
  end
  return tiers
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
  return ahead
end
"""

# ARGV: id, pool, tier, now_ms, max_queued, tenant, tenant cap, app key, app cap, tiers spec
#       ('': no position wanted), fields...
# returns {score, 0, position (-1 when not asked)} when queued; {-1, queued_in_tier} when the
# tier's queue is full
ENQUEUE = (
    PRELUDE
    + """
local q = qkey(ARGV[2], ARGV[3])
local queued = redis.call('ZCARD', q)
if queued >= tonumber(ARGV[5]) then return {-1, queued} end
local score = tonumber(ARGV[4]) * 1000
local last = redis.call('ZRANGE', q, -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
redis.call('HSET', REQ .. ARGV[1], 'score', string.format('%.0f', score), unpack(ARGV, 11))
redis.call('ZADD', q, score, ARGV[1])
redis.call('HSET', T_CAP, ARGV[6], ARGV[7])
redis.call('HSET', A_CAP, ARGV[8], ARGV[9])
redis.call('SADD', POOLS, ARGV[2])
wake(ARGV[2])
local pos = -1
if ARGV[10] ~= '' then pos = position(ARGV[1], tonumber(ARGV[4]), parse_tiers(ARGV[10])) end
return {string.format('%.0f', score), 0, pos}
"""
)

# ARGV: now_ms, lease_ms, worker_id, tiers spec, free units, total units, warm here, warm
#       elsewhere, full, pool... ('*': every pool). "warm here/elsewhere": comma-separated
#       "revision/function" of runners idle on this worker / on other workers; "full": those
#       whose runners here are all busy at max_concurrency (never candidates: no hoarding).
# The policy of scheduler.pick_for_worker. Per queue, the first request (FIFO, at most 64 looked
# at) whose tenant and app are under their in-flight caps, and that this worker could ever hold
# (its gpus <= total units), is a candidate; the policy's pick among candidates: if any has
# waited past its tier's SLO, the one with the largest wait/SLO; otherwise the most important
# tier's. Then, for this worker:
#   1. the pick runs on a runner idle here: take it;
#   2. the pick needs more units than are free: take nothing, {'', 'blocked', need} (the worker
#      drains until it fits, so large jobs are not starved by small ones);
#   3. the pick has waited less than its app's measured cold start (and is within its SLO), and
#      a request this worker holds warm and idle is a candidate by the same test (looked for
#      among the same 64): the best of those, with no cold start;
#   4. another worker holds the pick's function idle and the pick has waited less than its app's
#      measured cold start: take nothing, {'', 'elsewhere'}, and wake that pool's workers;
#   5. otherwise the pick, with a cold start.
# So warm work goes first only while that is better for the queue than a cold start.
DISPATCH = (
    PRELUDE
    + """
local now = tonumber(ARGV[1])
local tiers = parse_tiers(ARGV[4])
local free, total = tonumber(ARGV[5]), tonumber(ARGV[6])
local function set_of(csv)
  local set, n = {}, 0
  for item in string.gmatch(csv, '[^,]+') do set[item] = true; n = n + 1 end
  return set, n
end
local here, n_here = set_of(ARGV[7])
local elsewhere = set_of(ARGV[8])
local full = set_of(ARGV[9])
local pools = {}
if ARGV[10] == '*' then
  for _, p in ipairs(redis.call('SMEMBERS', POOLS)) do
    if p ~= UNCAPPED then pools[#pools + 1] = p end
  end
else
  for i = 10, #ARGV do pools[#pools + 1] = ARGV[i] end
end
local under = {}
local function under_cap(hash_run, hash_cap, who)
  local key = hash_run .. '|' .. who
  if under[key] == nil then
    local cap = tonumber(redis.call('HGET', hash_cap, who) or '0')
    local running = tonumber(redis.call('HGET', hash_run, who) or '0')
    under[key] = cap <= 0 or running < cap
  end
  return under[key]
end
local best, warm = nil, nil
local queued = 0
for _, tier in ipairs(tiers) do
  for _, pool in ipairs(pools) do
    local q = qkey(pool, tier.name)
    local heads = redis.call('ZRANGE', q, 0, 63, 'WITHSCORES')
    queued = queued + #heads / 2
    local first, first_warm = nil, nil
    for i = 1, #heads, 2 do
      local id, enq = heads[i], math.floor(tonumber(heads[i + 1]) / 1000)
      local f = redis.call('HMGET', REQ .. id, 'status', 'tenant', 'app_key', 'gpus', 'revision',
                           'function')
      local need = math.max(tonumber(f[4] or '0') or 0, 1)
      if f[1] ~= S_QUEUED then
        redis.call('ZREM', q, id)
      elseif need <= total and not full[f[5] .. '/' .. f[6]] and (pool == UNCAPPED
        or (under_cap(T_RUN, T_CAP, f[2]) and under_cap(A_RUN, A_CAP, f[3]))) then
        local score = (now - enq) / tier.slo
        local c = {id = id, q = q, over = score >= 1, score = score, rank = tier.rank, enq = enq,
                   need = need, fn = f[5] .. '/' .. f[6], app = f[3], pool = pool}
        first = first or c
        if first_warm == nil and here[c.fn] then first_warm = c end
        if first_warm ~= nil or n_here == 0 then break end
      end
    end
    if first and better(first, best) then best = first end
    if first_warm and better(first_warm, warm) then warm = first_warm end
  end
end
if best == nil then return nil end
local chosen = best
if not here[best.fn] then
  if best.need > free then return {'', 'blocked', tostring(best.need)} end
  local cold = tonumber(redis.call('HGET', COLD, best.app) or '0')
  local young = not best.over and now - best.enq < cold
  if young and warm ~= nil and warm.need <= free then
    chosen = warm
  elseif young and elsewhere[best.fn] then
    wake(best.pool)
    return {'', 'elsewhere'}
  end
end
return take(chosen, tostring(queued - 1), tostring(chosen.need))
"""
)

# ARGV: now_ms, lease_ms, worker_id, tiers spec, pool, revision, function, endpoint, n
# Fills a batch: leases up to n queued requests of one endpoint (revision, function, endpoint
# path) of ``pool`` to the worker whose runner is gathering them, in the policy's order (as
# DISPATCH: over-SLO first by wait/SLO, then tier rank, then FIFO), skipping those whose tenant
# or app is at its in-flight cap. Looks at the first 64 of each tier's queue. Returns the rows
# of the leased jobs, 15 fields each (as DISPATCH's), with units '0': they share the runner's.
DISPATCH_FOR = (
    PRELUDE
    + """
local now = tonumber(ARGV[1])
local tiers = parse_tiers(ARGV[4])
local pool, rev, fn, ep, n = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local cands = {}
for _, tier in ipairs(tiers) do
  local q = qkey(pool, tier.name)
  local heads = redis.call('ZRANGE', q, 0, 63, 'WITHSCORES')
  for i = 1, #heads, 2 do
    local id, enq = heads[i], math.floor(tonumber(heads[i + 1]) / 1000)
    local f = redis.call('HMGET', REQ .. id, 'status', 'tenant', 'app_key', 'revision',
                         'function', 'endpoint')
    if f[1] == S_QUEUED and f[4] == rev and f[5] == fn and f[6] == ep then
      local score = (now - enq) / tier.slo
      cands[#cands + 1] = {id = id, q = q, over = score >= 1, score = score, rank = tier.rank,
                           enq = enq, tenant = f[2], app = f[3]}
    end
  end
end
table.sort(cands, better)
local counts = {}
local function room(hash_run, hash_cap, who)
  local key = hash_run .. '|' .. who
  if counts[key] == nil then
    counts[key] = {cap = tonumber(redis.call('HGET', hash_cap, who) or '0'),
                   n = tonumber(redis.call('HGET', hash_run, who) or '0')}
  end
  return counts[key]
end
local out = {}
local taken = 0
for _, c in ipairs(cands) do
  if taken >= n then break end
  local t, a = room(T_RUN, T_CAP, c.tenant), room(A_RUN, A_CAP, c.app)
  if (t.cap <= 0 or t.n < t.cap) and (a.cap <= 0 or a.n < a.cap) then
    t.n, a.n, taken = t.n + 1, a.n + 1, taken + 1
    for _, v in ipairs(take(c, '0', '0')) do out[#out + 1] = v end
  end
end
return out
"""
)

# ARGV: id, now_ms, tiers spec. The request's queue position (``position``), -1 when it is not
# queued.
POSITION = (
    PRELUDE
    + """
return position(ARGV[1], tonumber(ARGV[2]), parse_tiers(ARGV[3]))
"""
)

# ARGV: worker_id, lease deadline ms, id... Renews the leases of those ids the worker still
# holds; returns how many.
RENEW = (
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
#       outcome field/value pairs. The lease holder's completion: its last log lines, the app's
#       service time and the outcome, in one step; 0 when the lease was lost.
COMPLETE = (
    PRELUDE
    + """
local st = redis.call('HMGET', REQ .. ARGV[1], 'status', 'worker')
if st[1] ~= S_RUNNING or st[2] ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[7])
if n > 0 then redis.call('RPUSH', LOGS .. ARGV[1], unpack(ARGV, 8, 7 + n)) end
if ARGV[5] ~= '' then fold_mean(SERVICE, ARGV[5], ARGV[6]) end
finish(ARGV[1], ARGV[3], ARGV[4], {unpack(ARGV, 8 + n)})
return 1
"""
)

# ARGV: id, worker_id
REQUEUE = (
    PRELUDE
    + """
local st = redis.call('HMGET', REQ .. ARGV[1], 'status', 'worker')
if st[1] ~= S_RUNNING or st[2] ~= ARGV[2] then return 0 end
requeue(ARGV[1])
return 1
"""
)

# ARGV: now_ms, max_attempts, ttl_s, outcome field/value pairs (of a request lost too often)
REQUEUE_EXPIRED = (
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
CANCEL = (
    PRELUDE
    + """
local rk = REQ .. ARGV[1]
local st = redis.call('HMGET', rk, 'status', 'pool', 'tier')
if not st[1] then return -1 end
if st[1] == S_QUEUED then
  redis.call('ZREM', qkey(st[2], st[3]), ARGV[1])
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

# KEYS: stats hash. ARGV: app key, sample (ms). A running mean, new samples weighted 0.2.
RECORD_TIME = (
    PRELUDE
    + """
fold_mean(KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

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
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'webhook_status', 'delivered')
  redis.call('ZREM', KEYS[2], ARGV[1])
  return n
end
redis.call('HSET', KEYS[1], 'webhook_last_error', ARGV[3])
if n >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'webhook_status', 'failed')
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
return n
"""
