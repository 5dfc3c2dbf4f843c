-- Extend a session's lease. KEYS[1] = pool prefix `dm:{pool:ID}:`.
-- ARGV: now, hold, session. Returns {new expiry, number}, or {0, ''} when the session
-- holds no live lease in this pool (expired, reclaimed or retired). An
-- expired lease that is not reclaimed yet is not revived: its attribution
-- window already runs.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local hold = tonumber(ARGV[2])
local session = ARGV[3]
local n = redis.call('GET', p .. 'session:' .. session)
if not n then return {0, ''} end
local lease = p .. 'lease:' .. n
if redis.call('HGET', lease, 'session') ~= session then return {0, ''} end
local score = redis.call('ZSCORE', p .. 'leased', n)
if score == false or tonumber(score) <= now then return {0, ''} end
local hard = tonumber(redis.call('HGET', lease, 'hard_expires_at'))
local exp = math.min(now + hold, hard)
if exp <= now then return {0, ''} end
redis.call('HSET', lease, 'expires_at', exp)
redis.call('ZADD', p .. 'leased', exp, n)
return {exp, n}
