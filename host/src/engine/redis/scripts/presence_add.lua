-- Records (or refreshes) a client as present until now + ttl.
--
-- KEYS: 1 presence hash (client -> info), 2 expiry sorted set (client -> expires at, unix ms)
-- ARGV: 1 now (unix ms), 2 ttl ms, 3 client id, 4 info (MessagePack)
local expires = tonumber(ARGV[1]) + tonumber(ARGV[2])
redis.call('hset', KEYS[1], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[2], expires, ARGV[3])
redis.call('pexpire', KEYS[1], ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[2])
return 0
