-- Sweep the cursor entries of one topic (cursor.Redis): optionally renew
-- this instance's lease, then delete the entries of every instance whose
-- lease expired (or that has none) and those leases. KEYS as in
-- redis_update.lua. A deleted entry is reported by the one sweep that
-- deleted it, so each expiry is reported once in the cluster.
-- ARGV[1] instance id
-- ARGV[2] TTL in milliseconds
-- ARGV[3] '1': renew this instance's lease first
-- Returns {entries left, deleted key, deleted key…}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' then
	local ttl = tonumber(ARGV[2])
	redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', now + ttl))
	-- As in redis_update.lua.
	redis.call('PEXPIRE', KEYS[1], 2 * ttl)
	redis.call('PEXPIRE', KEYS[2], 2 * ttl)
end
local live, dead = {}, {}
local leases = redis.call('HGETALL', KEYS[2])
for i = 1, #leases, 2 do
	if (tonumber(leases[i + 1]) or 0) > now then
		live[leases[i]] = true
	else
		dead[#dead + 1] = leases[i]
	end
end
local out = {0}
-- Entries are scanned only when a lease expired (or none is left): the
-- common sweep costs O(instances), not O(entries).
if #dead > 0 or #leases == 0 then
	local all = redis.call('HGETALL', KEYS[1])
	for i = 1, #all, 2 do
		local v = all[i + 1]
		local n = string.match(v, '^(%d+):')
		if not (n and live[string.sub(v, #n + 2, #n + 1 + tonumber(n))]) then
			redis.call('HDEL', KEYS[1], all[i])
			out[#out + 1] = all[i]
		end
	end
	if #dead > 0 then
		redis.call('HDEL', KEYS[2], unpack(dead))
	end
end
out[1] = redis.call('HLEN', KEYS[1])
return out
