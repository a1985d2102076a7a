-- Drops the entries whose node stopped refreshing them, then returns everyone present.
--
-- KEYS: 1 presence hash, 2 expiry sorted set
-- ARGV: 1 now (unix ms)
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
for _, client in ipairs(expired) do
  redis.call('hdel', KEYS[1], client)
  redis.call('zrem', KEYS[2], client)
end
return redis.call('hgetall', KEYS[1])
