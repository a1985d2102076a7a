-- What the presence scripts share (prepended to each; Lua scripts cannot import each other).
--
-- KEYS: 1 presence hash (client -> info), 2 expiry sorted set (client -> expires at, unix ms), 3 users hash
-- (user -> how many of the user's clients are present), so counting users needs no scan.

-- The user of an encoded client info: a MessagePack array (one header byte, as rmp-serde writes a
-- four-field struct) whose first element is the user id as a MessagePack string. Decoded by hand: Redis's
-- cmsgpack predates MessagePack's bin types, which the rest of the entry uses.
local function user_of(info)
  local tag = string.byte(info, 2)
  if tag >= 0xa0 and tag <= 0xbf then
    return string.sub(info, 3, 2 + tag - 0xa0)
  end
  local width = ({[0xd9] = 1, [0xda] = 2, [0xdb] = 4})[tag]
  if not width then
    return error('presence entry without a user id')
  end
  local len = 0
  for i = 1, width do
    len = len * 256 + string.byte(info, 2 + i)
  end
  return string.sub(info, 3 + width, 2 + width + len)
end

local function count_user(user, delta)
  if redis.call('hincrby', KEYS[3], user, delta) <= 0 then
    redis.call('hdel', KEYS[3], user)
  end
end

-- Presence written before the users hash existed (an older Herald): count it once, and let the counts
-- expire with the entries (a count outliving its presence would be added to the next members').
local function ensure_users()
  if redis.call('exists', KEYS[3]) == 0 then
    for _, info in ipairs(redis.call('hvals', KEYS[1])) do
      count_user(user_of(info), 1)
    end
    local ttl = redis.call('pttl', KEYS[1])
    if ttl > 0 then
      redis.call('pexpire', KEYS[3], ttl)
    end
  end
end

-- Removes one client; returns its info, or false when it was not there.
local function remove_client(client)
  local info = redis.call('hget', KEYS[1], client)
  if info then
    redis.call('hdel', KEYS[1], client)
    count_user(user_of(info), -1)
  end
  redis.call('zrem', KEYS[2], client)
  return info
end

-- Drops the entries whose node stopped refreshing them.
local function drop_expired(now)
  for _, client in ipairs(redis.call('zrangebyscore', KEYS[2], '-inf', now)) do
    remove_client(client)
  end
end

ensure_users()
