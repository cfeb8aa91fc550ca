"""The fleet store's Lua scripts: every multi-key change in one atomic step.

Each script takes all its keys in KEYS (Redis Cluster-safe: one fleet's keys share a
hash slot). The fenced ones first compare the caller's epoch with the stored one, so a
deposed leader's late write changes nothing. `guardrails.fleet_store` registers them.
"""

# Server time in integer milliseconds. Formatted with %d: Lua's default number format
# (%.14g) would round a 13-digit millisecond count once it is past 1e14.
NOW_MS = """
local _t = redis.call('TIME')
local now = string.format('%d', tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000))
"""
FENCE = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"

# A new epoch is max(stored + 1, server time in ms): strictly increasing, and still above
# every epoch handed out before when the store restarted empty or a failover to a replica
# lost the last INCR (as long as the server clock does not step back further than that).
ACQUIRE = (
    """
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {0, redis.call('GET', KEYS[1])}
end
if holder then return false end"""
    + NOW_MS
    + """
local epoch = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, tonumber(now))
epoch = string.format('%d', epoch)
redis.call('SET', KEYS[1], epoch)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'NX')
return {1, epoch}
"""
)
RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
WRITE_DECISION = (
    FENCE
    + NOW_MS
    + """
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 't', now, 'body', ARGV[2])
redis.call('PUBLISH', ARGV[3], version)
return version
"""
)
SAVE_STATE = FENCE + "redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])\nreturn 1\n"
APPEND_EVENT = (
    FENCE
    + """
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
           'seq', seq, 'epoch', ARGV[1], 'record', ARGV[2])
return seq
"""
)
# Evidence is cumulative per (host, incarnation): keep only the highest seq, so a retried,
# duplicated or reordered publish can never count twice or roll a host's counts back.
PUBLISH_EVIDENCE = """
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored and tonumber(stored) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""
FORGET_EVIDENCE = FENCE + "redis.call('DEL', KEYS[2], KEYS[3])\nreturn 1\n"
HEARTBEAT = (
    NOW_MS
    + """
local cutoff = string.format('(%d', tonumber(now) - tonumber(ARGV[3]))
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)
FINISH_COMMAND = (
    FENCE
    + """
if redis.call('XDEL', KEYS[2], ARGV[2]) == 0 then return -1 end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return 1
"""
)
# "The first model registered in an empty registry becomes the champion", atomically:
# two registrations racing on an empty registry cannot both become champion.
REGISTER_MODEL = """
local version = ARGV[3]
if version == '' then
  version = string.format('%d', redis.call('INCR', KEYS[4]))
elseif redis.call('HEXISTS', KEYS[1], version) == 1 then
  return false
elseif tonumber(redis.call('GET', KEYS[4]) or '0') < tonumber(version) then
  redis.call('SET', KEYS[4], version)
end
local status = ARGV[4]
if status == '' then
  status = 'champion'
  for _, s in ipairs(redis.call('HVALS', KEYS[2])) do
    if s == 'champion' then status = 'candidate' break end
  end
end
redis.call('SET', KEYS[5], ARGV[2], 'NX')
redis.call('HSET', KEYS[1], version, ARGV[1])
redis.call('HSET', KEYS[2], version, status)
redis.call('HSET', KEYS[3], version, ARGV[5])
redis.call('SET', KEYS[6], ARGV[6], 'NX')
return {version, status}
"""
# ARGV[1] is the epoch ('' = unfenced: the CLI's register path), ARGV[2] the rollout that
# made the changes ('' keeps none), then (version, status, reason) triples applied together,
# so a promotion's two status changes are one flip. A version that leaves `queued` leaves the
# queue.
SET_STATUS = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then return ARGV[i] end
end
for i = 3, #ARGV, 3 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2])
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[2])
  if ARGV[i + 1] ~= 'queued' then redis.call('ZREM', KEYS[6], ARGV[i]) end
end
return 1
"""
# The release train's queue: a candidate (or queued) version goes to the back of the queue
# (sorted set, scored by a sequence), or with ARGV[2] = '1' in place of every other queued
# one (back to candidates, with the reason). Returns {'ok', replaced...}, or {'refused',
# status} for a version that is neither, or {'unknown'}.
QUEUE_MODEL = """
local version = ARGV[1]
local status = redis.call('HGET', KEYS[2], version)
if not status then return {'unknown'} end
if status ~= 'candidate' and status ~= 'queued' then return {'refused', status} end
local out = {'ok'}
if ARGV[2] == '1' then
  for _, other in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    if other ~= version then
      if redis.call('HGET', KEYS[2], other) == 'queued' then
        redis.call('HSET', KEYS[2], other, 'candidate')
        redis.call('HSET', KEYS[3], other, 'replaced in the queue by ' .. version)
        table.insert(out, other)
      end
      redis.call('ZREM', KEYS[4], other)
    end
  end
end
if status ~= 'queued' then
  redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), version)
  redis.call('HSET', KEYS[2], version, 'queued')
  redis.call('HSET', KEYS[3], version, ARGV[3])
end
return out
"""
