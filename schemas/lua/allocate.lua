-- Lease a number from one pool for one session. Atomic; single slot: every
-- key starts with KEYS[1], the pool prefix `dm:{pool:ID}:`.
--
-- ARGV: now, hold, max_hold, cooldown, attribution_window, session, touch,
--       network, network_cap,
--       then field/value pairs stored on the lease (visitor, utm_*, ...).
--       touch: when the visit's own touch (ad click, referral) happened,
--       Unix ms, 0 when it brings none (an internal page view).
--       network, network_cap: the client's network (/24, /48) may take at
--       most network_cap new leases of this pool per minute (0: no cap).
-- Returns {status, number, expires_at, {reclaimed numbers}}
--   status: 'leased' (new lease), 'renewed' (same session, same number),
--           'retouched' (renewed, and the visit's touch is newer than the
--           lease's `touch_ms`: its fields replace the lease's, so a call
--           carries the latest click), 'exhausted' (no free number rested
--           long enough), 'capped' (the network took its share this minute).
--
-- Expired leases are reclaimed here, lazily: no cron is needed for
-- correctness. A reclaimed lease is kept as `last:N` for the attribution
-- window counted from the lease's end (`released_at` = its expiry, not this
-- reclaim), with `prev_released_at` = when the lease before it ended (a call
-- inside both windows is contested), and the number goes back to `free`
-- scored by the time it may be leased again (release + cooldown): the
-- lowest score is the least recently used number.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local hold = tonumber(ARGV[2])
local max_hold = tonumber(ARGV[3])
local cooldown = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local session = ARGV[6]
local touch = tonumber(ARGV[7])
local network = ARGV[8]
local network_cap = tonumber(ARGV[9])
local FIELDS = 10

local reclaimed = {}
local expired = redis.call('ZRANGEBYSCORE', p .. 'leased', '-inf', now, 'LIMIT', 0, 64)
for _, n in ipairs(expired) do
  local lease = p .. 'lease:' .. n
  local last = p .. 'last:' .. n
  local holder = redis.call('HGET', lease, 'session')
  local ended = math.min(tonumber(redis.call('ZSCORE', p .. 'leased', n)), now)
  if redis.call('EXISTS', lease) == 1 then
    local prev = redis.call('HGET', last, 'released_at')
    redis.call('HSET', lease, 'released_at', ended, 'prev_released_at', prev or 0)
    redis.call('RENAME', lease, last)
    if ended + window > now then
      redis.call('EXPIRE', last, ended + window - now)
    else
      redis.call('DEL', last)
    end
  end
  redis.call('ZREM', p .. 'leased', n)
  if redis.call('SISMEMBER', p .. 'numbers', n) == 1 then
    redis.call('ZADD', p .. 'free', ended + cooldown, n)
  end
  if holder then
    local sk = p .. 'session:' .. holder
    if redis.call('GET', sk) == n then redis.call('DEL', sk) end
  end
  reclaimed[#reclaimed + 1] = n
end

local current = redis.call('GET', p .. 'session:' .. session)
if current then
  local lease = p .. 'lease:' .. current
  -- An expired lease is never revived, reclaimed or not.
  if redis.call('HGET', lease, 'session') == session
      and tonumber(redis.call('HGET', lease, 'expires_at')) > now then
    local hard = tonumber(redis.call('HGET', lease, 'hard_expires_at'))
    local exp = math.min(now + hold, hard)
    if exp > now then
      redis.call('HSET', lease, 'expires_at', exp)
      redis.call('ZADD', p .. 'leased', exp, current)
      local status = 'renewed'
      if touch > 0 and #ARGV >= FIELDS and touch > (tonumber(redis.call('HGET', lease, 'touch_ms')) or 0) then
        redis.call('HSET', lease, unpack(ARGV, FIELDS))
        status = 'retouched'
      end
      return {status, current, exp, reclaimed}
    end
  end
end

-- Only new leases count against the network's share; renewals above are free.
if network_cap > 0 and network ~= '' then
  local k = p .. 'rate:' .. network .. ':' .. math.floor(now / 60)
  local taken = redis.call('INCR', k)
  if taken == 1 then redis.call('EXPIRE', k, 120) end
  if taken > network_cap then
    redis.call('HINCRBY', p .. 'stats', 'network_capped', 1)
    return {'capped', '', 0, reclaimed}
  end
end

local pick = redis.call('ZRANGEBYSCORE', p .. 'free', '-inf', now, 'LIMIT', 0, 1)
if #pick == 0 then
  redis.call('HINCRBY', p .. 'stats', 'exhausted', 1)
  return {'exhausted', '', 0, reclaimed}
end
local n = pick[1]
local exp = now + hold
local lease = p .. 'lease:' .. n
redis.call('ZREM', p .. 'free', n)
redis.call('DEL', lease)
redis.call('HSET', lease, 'session', session, 'leased_at', now, 'expires_at', exp,
  'hard_expires_at', now + max_hold, unpack(ARGV, FIELDS))
redis.call('ZADD', p .. 'leased', exp, n)
redis.call('SET', p .. 'session:' .. session, n, 'EX', max_hold + window)
return {'leased', n, exp, reclaimed}
