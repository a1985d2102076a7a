-- Removes a client from presence.
--
-- KEYS: 1 presence hash, 2 expiry sorted set
-- ARGV: 1 client id
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 0
