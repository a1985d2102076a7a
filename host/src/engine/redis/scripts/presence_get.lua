-- Drops the entries whose node stopped refreshing them, then returns everyone present.
--
-- KEYS: see presence.lua
-- ARGV: 1 now (unix ms)
drop_expired(ARGV[1])
return redis.call('hgetall', KEYS[1])
