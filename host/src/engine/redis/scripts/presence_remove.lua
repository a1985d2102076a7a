-- Removes a client from presence and returns its entry (nil when it was not there), so of nodes racing to
-- remove one entry exactly one gets it.
--
-- KEYS: see presence.lua
-- ARGV: 1 client id
return remove_client(ARGV[1])
