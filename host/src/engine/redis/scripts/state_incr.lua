-- Adds a delta to a plugin's shared number (see SharedState::state_incr).
-- KEYS[1] the entry; ARGV[1] the delta (decimal), ARGV[2] the TTL of a new entry in ms (0: none).
-- Returns the sum as decimal text: Lua numbers are doubles, which would round sums past 2^53.
local existed = redis.call('EXISTS', KEYS[1]) == 1
local reply = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(reply) == 'table' and reply.err then
  -- Not a number (counts as 0), or a sum past the 64-bit range (saturates). Only an integer of 19 or
  -- more digits can overflow.
  local value = redis.call('GET', KEYS[1])
  local sum = ARGV[1]
  if string.match(value, '^%-?%d+$') and #value >= 19 then
    if string.sub(ARGV[1], 1, 1) == '-' then
      sum = '-9223372036854775808'
    else
      sum = '9223372036854775807'
    end
  end
  redis.call('SET', KEYS[1], sum, 'KEEPTTL')
end
if not existed and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('GET', KEYS[1])
