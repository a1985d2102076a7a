-- Records (or refreshes) a client as present until now + ttl.
--
-- KEYS: see presence.lua
-- ARGV: 1 now (unix ms), 2 ttl ms, 3 client id, 4 info (MessagePack)
local user = user_of(ARGV[4])
local old = redis.call('hget', KEYS[1], ARGV[3])
if not old then
  count_user(user, 1)
else
  local before = user_of(old)
  if before ~= user then
    count_user(before, -1)
    count_user(user, 1)
  end
end
local expires = tonumber(ARGV[1]) + tonumber(ARGV[2])
redis.call('hset', KEYS[1], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[2], expires, ARGV[3])
for i = 1, 3 do
  redis.call('pexpire', KEYS[i], ARGV[2])
end
return 0
