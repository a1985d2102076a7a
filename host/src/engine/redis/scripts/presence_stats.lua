-- Drops the entries whose node stopped refreshing them, then counts clients and distinct users without
-- reading the entries.
--
-- KEYS: see presence.lua
-- ARGV: 1 now (unix ms)
drop_expired(ARGV[1])
return {redis.call('hlen', KEYS[1]), redis.call('hlen', KEYS[3])}
