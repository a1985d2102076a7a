-- Removes a client from presence and returns its entry (nil when it was not there), so of nodes racing to
-- remove one entry exactly one gets it.
--
-- KEYS: 1 presence hash, 2 expiry sorted set
-- ARGV: 1 client id
local info = redis.call('hget', KEYS[1], ARGV[1])
if not info then
  return nil
end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return info
