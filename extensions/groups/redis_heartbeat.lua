-- Refresh one instance's members of one group (groups.Redis heartbeat);
-- the prelude redis_count.lua comes first.
-- KEYS[1] the group's members hash
-- ARGV[1] the member TTL in ms
-- ARGV[2..] the fields "<instance>|<connID>" of the instance's members
-- A live member's expiry moves to now + TTL, its role kept. A member that
-- is gone (a Close, a leave) or expired (the instance was cut off for a
-- TTL, and others stopped counting it) is not revived: an expired one is
-- deleted, and both are reported so the instance forgets them.
-- Returns the positions (1 = ARGV[2]) of the members not refreshed.
local now = now_ms()
local ttl = tonumber(ARGV[1])
local exp = string.format('%d', now + ttl)
local gone = {}
local kept = false
for i = 2, #ARGV do
	local v = redis.call('HGET', KEYS[1], ARGV[i])
	local tab = v and string.find(v, '\t', 1, true)
	local e = tab and tonumber(string.sub(v, tab + 1))
	if e and e > now then
		redis.call('HSET', KEYS[1], ARGV[i], string.sub(v, 1, tab) .. exp)
		kept = true
	else
		if v then
			redis.call('HDEL', KEYS[1], ARGV[i])
		end
		gone[#gone + 1] = i - 1
	end
end
if kept then
	keep_until(KEYS[1], ttl)
end
return gone
