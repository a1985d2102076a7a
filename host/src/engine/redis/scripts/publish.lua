-- Appends a publication to a channel's stream (when it keeps history) and broadcasts it, atomically, so the
-- offset order is the delivery order on every node.
--
-- KEYS: 1 meta hash, 2 stream, 3 idempotency hash (same hash slot as the others)
-- ARGV: 1 now (unix ms), 2 keep history ('1'/'0'), 3 size, 4 ttl ms (0 = none), 5 meta ttl ms (0 = forever),
--       6 epoch for a new stream, 7 publication (MessagePack), 8 'publish' or 'spublish', 9 pub/sub channel,
--       10 idempotency window ms (0 = no key), 11 failover term key ('' = no Sentinel)
-- Returns {offset, epoch, 1 if this was a repeat of an idempotent publish else 0}.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[10])
local term = failover_term(ARGV[11])

if window > 0 then
  local seen = redis.call('hmget', KEYS[3], 'offset', 'epoch')
  if seen[1] then
    return {tonumber(seen[1]), seen[2], 1}
  end
end

local offset, epoch = 0, ''
if ARGV[2] == '1' then
  local size, ttl, meta_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local top, previous = live_stream(KEYS[1], now, term, ARGV[6])
  if top then
    offset, epoch = top, previous
  else
    epoch = fresh_epoch(ARGV[6], previous)
    redis.call('del', KEYS[2])
  end
  offset = offset + 1
  write_meta(KEYS[1], offset, epoch, now, meta_ttl, term)
  if size > 0 then
    redis.call('xadd', KEYS[2], 'MAXLEN', size, offset .. '-0', 'd', ARGV[7], 't', now)
    if ttl > 0 then
      drop_expired(KEYS[2], now - ttl)
      redis.call('pexpire', KEYS[2], ttl)
    elseif meta_ttl > 0 then
      redis.call('pexpire', KEYS[2], meta_ttl)
    end
  end
end

redis.call(ARGV[8], ARGV[9], 'p' .. offset .. ' ' .. epoch .. ' ' .. ARGV[7])

if window > 0 then
  redis.call('hset', KEYS[3], 'offset', offset, 'epoch', epoch)
  redis.call('pexpire', KEYS[3], window)
end
return {offset, epoch, 0}
