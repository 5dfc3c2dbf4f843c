-- Put a number into a pool, free at once. KEYS[1] = pool prefix.
-- ARGV: now, number. Returns 1 when added, 0 when it was already there.
local p = KEYS[1]
local added = redis.call('SADD', p .. 'numbers', ARGV[2])
if redis.call('ZSCORE', p .. 'leased', ARGV[2]) == false then
  redis.call('ZADD', p .. 'free', 'NX', tonumber(ARGV[1]), ARGV[2])
end
return added
