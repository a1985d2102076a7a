-- Drops the entries whose node stopped refreshing them, then says which of the given users have a client
-- present: one reply per user, its number of clients (nil for none).
--
-- KEYS: see presence.lua
-- ARGV: 1 now (unix ms), 2… user ids
drop_expired(ARGV[1])
if #ARGV < 2 then
  return {}
end
return redis.call('hmget', KEYS[3], unpack(ARGV, 2))
