-- Broadcasts a join or leave to the channel's pub/sub channel. A script (not a bare PUBLISH) so Redis Cluster
-- routes it by the channel's key, like the publications it must stay in order with.
--
-- KEYS: 1 meta hash (routing only)
-- ARGV: 1 'publish' or 'spublish', 2 pub/sub channel, 3 message
redis.call(ARGV[1], ARGV[2], ARGV[3])
return 0
