-- Bench fixture: puts ARGV[2] consecutive numbers starting at +ARGV[1] into
-- the pool KEYS[1] (`dm:{pool:ID}:`), free at once, as enroll.lua does for
-- one number. Much faster than enrolling hundreds of thousands through the
-- admin CLI; the numbers get no routing records (visits never read them).
local p = KEYS[1]
local base = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local num = '+' .. string.format('%d', base + i)
  redis.call('SADD', p .. 'numbers', num)
  redis.call('ZADD', p .. 'free', 0, num)
end
return n
