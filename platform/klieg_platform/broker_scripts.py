"""The broker's Lua scripts. Each runs atomically in Redis; together they are the only writers
of a request record's status.

A shared prelude bakes in the key prefixes from ``keys.py`` and defines three steps every script
composes from: ``wake`` (tokens for blocked workers), ``finish`` (COMPLETED + TTL + webhook due +
publish) and ``requeue`` (back to its queue at its original position). Scripts derive request
and queue keys from the prefixes, so they assume a single Redis node (not Redis Cluster).
"""

from __future__ import annotations

from klieg_platform import keys

PRELUDE = f"""
local REQ, QUEUE, WAKE = '{keys.REQUEST_PREFIX}', '{keys.QUEUE_PREFIX}', '{keys.WAKE_PREFIX}'
local INFLIGHT, POOLS, SEQ = '{keys.INFLIGHT}', '{keys.POOLS}', '{keys.SEQ}'
local HOOKS, DONE, CANCEL = '{keys.WEBHOOKS}', '{keys.DONE_CHANNEL}', '{keys.CANCEL_CHANNEL}'
local LOGS = '{keys.PREFIX}logs:'

local function wake(pool)
  for _, w in ipairs({{WAKE .. pool, WAKE .. '*'}}) do
    redis.call('LPUSH', w, '1')
    redis.call('LTRIM', w, 0, 63)
  end
end

local function finish(id, now, ttl, fields)
  local rk = REQ .. id
  redis.call('HSET', rk, 'status', 'COMPLETED', 'finished_ms', now, unpack(fields))
  redis.call('ZREM', INFLIGHT, id)
  redis.call('EXPIRE', rk, ttl)
  redis.call('EXPIRE', LOGS .. id, ttl)
  local hook = redis.call('HGET', rk, 'webhook')
  if hook and hook ~= '' then redis.call('ZADD', HOOKS, now, id) end
  redis.call('PUBLISH', DONE, id)
end

local function requeue(id)
  local rk = REQ .. id
  local st = redis.call('HMGET', rk, 'pool', 'seq')
  redis.call('HSET', rk, 'status', 'IN_QUEUE', 'worker', '')
  redis.call('ZREM', INFLIGHT, id)
  redis.call('ZADD', QUEUE .. st[1], st[2], id)
  wake(st[1])
end
"""

# ARGV: id, pool, field/value pairs...
ENQUEUE = (
    PRELUDE
    + """
local seq = redis.call('INCR', SEQ)
redis.call('HSET', REQ .. ARGV[1], 'seq', seq, unpack(ARGV, 3))
redis.call('ZADD', QUEUE .. ARGV[2], seq, ARGV[1])
redis.call('SADD', POOLS, ARGV[2])
wake(ARGV[2])
return seq
"""
)

# ARGV: now_ms, lease_ms, worker_id, pool... ('*' = every pool)
DISPATCH = (
    PRELUDE
    + """
local queues = {}
if ARGV[4] == '*' then
  for _, pool in ipairs(redis.call('SMEMBERS', POOLS)) do queues[#queues + 1] = QUEUE .. pool end
else
  for i = 4, #ARGV do queues[#queues + 1] = QUEUE .. ARGV[i] end
end
for _ = 1, 64 do
  local best, bestscore, bestq = nil, nil, nil
  for _, q in ipairs(queues) do
    local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
    if head[1] and (best == nil or tonumber(head[2]) < bestscore) then
      best, bestscore, bestq = head[1], tonumber(head[2]), q
    end
  end
  if best == nil then return nil end
  redis.call('ZREM', bestq, best)
  local rk = REQ .. best
  if redis.call('HGET', rk, 'status') == 'IN_QUEUE' then
    redis.call('HSET', rk, 'status', 'IN_PROGRESS', 'worker', ARGV[3], 'started_ms', ARGV[1])
    local attempts = redis.call('HINCRBY', rk, 'attempts', 1)
    redis.call('ZADD', INFLIGHT, tonumber(ARGV[1]) + tonumber(ARGV[2]), best)
    local f = redis.call('HMGET', rk, 'revision', 'function', 'endpoint', 'payload', 'timeout_s',
                         'owner', 'app', 'payload_ref', 'deadline_ms', 'stream')
    local more = 0
    for _, q in ipairs(queues) do more = more + redis.call('ZCARD', q) end
    return {best, tostring(attempts), tostring(more), unpack(f)}
  end
end
return nil
"""
)

# ARGV: id, worker_id, lease deadline ms
RENEW = """
local st = redis.call('HMGET', KEYS[1], 'status', 'worker')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return 1
"""

# ARGV: id, worker_id, now_ms, ttl_s, field/value pairs...
COMPLETE = (
    PRELUDE
    + """
local st = redis.call('HMGET', REQ .. ARGV[1], 'status', 'worker')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[2] then return 0 end
finish(ARGV[1], ARGV[3], ARGV[4], {unpack(ARGV, 5)})
return 1
"""
)

# ARGV: id, worker_id
REQUEUE = (
    PRELUDE
    + """
local st = redis.call('HMGET', REQ .. ARGV[1], 'status', 'worker')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[2] then return 0 end
requeue(ARGV[1])
return 1
"""
)

# ARGV: now_ms, max_attempts, ttl_s, error JSON
REQUEUE_EXPIRED = (
    PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', ARGV[1], 'LIMIT', 0, 100)
local n = 0
for _, id in ipairs(ids) do
  local st = redis.call('HMGET', REQ .. id, 'status', 'attempts')
  if st[1] ~= 'IN_PROGRESS' then
    redis.call('ZREM', INFLIGHT, id)
  else
    n = n + 1
    if tonumber(st[2]) < tonumber(ARGV[2]) then
      requeue(id)
    else
      finish(id, ARGV[1], ARGV[3], {'outcome', 'error', 'error', ARGV[4], 'http_status', '500'})
    end
  end
end
return n
"""
)

# ARGV: id, now_ms, ttl_s, error JSON
# returns 1: a queued request was cancelled; 2: running, interruption signalled;
#         0: already completed; -1: unknown
CANCEL = (
    PRELUDE
    + """
local rk = REQ .. ARGV[1]
local st = redis.call('HMGET', rk, 'status', 'pool')
if not st[1] then return -1 end
if st[1] == 'IN_QUEUE' then
  redis.call('ZREM', QUEUE .. st[2], ARGV[1])
  finish(ARGV[1], ARGV[2], ARGV[3],
         {'outcome', 'error', 'error', ARGV[4], 'http_status', '499', 'cancelled', '1'})
  return 1
end
if st[1] == 'IN_PROGRESS' then
  redis.call('HSET', rk, 'cancel_requested', '1')
  redis.call('PUBLISH', CANCEL, ARGV[1])
  return 2
end
return 0
"""
)
