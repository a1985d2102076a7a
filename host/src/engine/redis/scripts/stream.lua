-- Shared by publish.lua and history.lua, which it is prepended to: a channel's stream meta data and the
-- dropping of expired publications.

-- An epoch for a new life of the stream: the candidate, unless it is the previous one.
local function fresh_epoch(candidate, previous)
  if candidate == previous then return candidate .. 'a' end
  return candidate
end

-- How many Sentinel failovers Herald has seen on this Redis (0 without Sentinel: `term_key` is '').
local function failover_term(term_key)
  if term_key == '' then return 0 end
  return tonumber(redis.call('get', term_key) or '0')
end

-- The stream's top offset and epoch when its meta hash exists and its meta ttl has not passed, else nil
-- and the epoch of the stream it had (nil if none), which a new stream must not reuse. A stream last
-- written before the latest failover gets a new epoch (top and publications kept): the old primary may have
-- acknowledged publications it never replicated, so whoever holds a position in it is told it broke rather
-- than handed reused offsets.
local function live_stream(meta_key, now, term, candidate)
  local meta = redis.call('hmget', meta_key, 'top', 'epoch', 'forget', 'term')
  local forget = tonumber(meta[3] or '-1')
  if meta[2] and (forget == 0 or forget > now) then
    local epoch = meta[2]
    if tonumber(meta[4] or '0') < term then
      epoch = fresh_epoch(candidate, epoch)
      redis.call('hset', meta_key, 'epoch', epoch, 'term', term)
    end
    return tonumber(meta[1]), epoch
  end
  return nil, meta[2]
end

-- Writes the meta hash; a meta ttl of 0 keeps the stream forever.
local function write_meta(meta_key, top, epoch, now, meta_ttl, term)
  local forget_at = 0
  if meta_ttl > 0 then forget_at = now + meta_ttl end
  redis.call('hset', meta_key, 'top', top, 'epoch', epoch, 'forget', forget_at, 'term', term)
  if meta_ttl > 0 then redis.call('pexpire', meta_key, meta_ttl) else redis.call('persist', meta_key) end
end

-- Deletes publications appended at or before `cutoff` (unix ms). They are appended in time order, so the
-- expired ones are the oldest.
local function drop_expired(stream_key, cutoff)
  while true do
    local oldest = redis.call('xrange', stream_key, '-', '+', 'COUNT', 16)
    local removed = 0
    for _, entry in ipairs(oldest) do
      if tonumber(entry[2][4]) > cutoff then return end
      redis.call('xdel', stream_key, entry[1])
      removed = removed + 1
    end
    if removed < 16 then return end
  end
end
