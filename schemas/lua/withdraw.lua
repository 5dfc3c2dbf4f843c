-- Take a number out of its pool at once (retire to quarantine, or move).
-- KEYS[1] = pool prefix. ARGV: now, attribution_window, number.
-- A live lease ends now and is kept as `last:N` for attribution.
-- Returns 1 when the number was leased, else 0.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = ARGV[3]
redis.call('SREM', p .. 'numbers', n)
redis.call('ZREM', p .. 'free', n)
local was_leased = redis.call('ZREM', p .. 'leased', n)
local lease = p .. 'lease:' .. n
if redis.call('EXISTS', lease) == 1 then
  local holder = redis.call('HGET', lease, 'session')
  redis.call('HSET', lease, 'released_at', now)
  redis.call('RENAME', lease, p .. 'last:' .. n)
  redis.call('EXPIRE', p .. 'last:' .. n, window)
  if holder and redis.call('GET', p .. 'session:' .. holder) == n then
    redis.call('DEL', p .. 'session:' .. holder)
  end
end
return was_leased
