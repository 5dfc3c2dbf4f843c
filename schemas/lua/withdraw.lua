-- Take a number out of its pool at once (retire to quarantine, or move).
-- KEYS[1] = pool prefix. ARGV: now, attribution_window, number.
-- A live lease ends now and is kept as `last:N` for attribution (an expired
-- one not reclaimed yet ended at its expiry), with `prev_released_at` as in
-- allocate.lua. Returns 1 when the number was leased, else 0.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = ARGV[3]
local score = redis.call('ZSCORE', p .. 'leased', n)
redis.call('SREM', p .. 'numbers', n)
redis.call('ZREM', p .. 'free', n)
local was_leased = redis.call('ZREM', p .. 'leased', n)
local lease = p .. 'lease:' .. n
local last = p .. 'last:' .. n
if redis.call('EXISTS', lease) == 1 then
  local holder = redis.call('HGET', lease, 'session')
  local ended = now
  if score then ended = math.min(tonumber(score), now) end
  local prev = redis.call('HGET', last, 'released_at')
  redis.call('HSET', lease, 'released_at', ended, 'prev_released_at', prev or 0)
  redis.call('RENAME', lease, last)
  if ended + window > now then
    redis.call('EXPIRE', last, ended + window - now)
  else
    redis.call('DEL', last)
  end
  if holder and redis.call('GET', p .. 'session:' .. holder) == n then
    redis.call('DEL', p .. 'session:' .. holder)
  end
end
return was_leased
