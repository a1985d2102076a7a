-- Reads a channel's stream: creates it (top 0, a new epoch) when it does not exist or its meta ttl passed,
-- drops expired publications, and returns the selected ones.
--
-- KEYS: 1 meta hash, 2 stream
-- ARGV: 1 now (unix ms), 2 ttl ms (0 = none), 3 meta ttl ms (0 = forever), 4 epoch for a new stream,
--       5 since offset ('' = none), 6 since epoch ('' = any), 7 limit (-1 = all), 8 reverse ('1'/'0'),
--       9 failover term key ('' = no Sentinel)
-- Returns {top, epoch, status, entries}: status 0 = ok, 1 = the since epoch is not the stream's;
-- entries as XRANGE returns them.
local now, ttl, meta_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local term = failover_term(ARGV[9])
local top, epoch = live_stream(KEYS[1], now, term, ARGV[4])
if not top then
  top, epoch = 0, fresh_epoch(ARGV[4], epoch)
  redis.call('del', KEYS[2])
  write_meta(KEYS[1], 0, epoch, now, meta_ttl, term)
end

if ARGV[6] ~= '' and ARGV[6] ~= epoch then
  return {top, epoch, 1, {}}
end

if ttl > 0 then drop_expired(KEYS[2], now - ttl) end

local limit = tonumber(ARGV[7])
if limit == 0 then
  return {top, epoch, 0, {}}
end
local count = {}
if limit > 0 then count = {'COUNT', limit} end

local entries
if ARGV[8] == '1' then
  local before = '+'
  if ARGV[5] ~= '' then
    local since = tonumber(ARGV[5])
    if since <= 1 then return {top, epoch, 0, {}} end
    before = (since - 1) .. '-0'
  end
  entries = redis.call('xrevrange', KEYS[2], before, '-', unpack(count))
else
  local after = '-'
  if ARGV[5] ~= '' then after = (tonumber(ARGV[5]) + 1) .. '-0' end
  entries = redis.call('xrange', KEYS[2], after, '+', unpack(count))
end
return {top, epoch, 0, entries}
