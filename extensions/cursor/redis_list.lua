-- List the live cursor entries of one topic (cursor.Redis), read-only:
-- those whose instance holds an unexpired lease. KEYS as in
-- redis_update.lua. Returns key, value, key, value…
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
local leases = redis.call('HGETALL', KEYS[2])
for i = 1, #leases, 2 do
	if (tonumber(leases[i + 1]) or 0) > now then
		live[leases[i]] = true
	end
end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
	local v = all[i + 1]
	local n = string.match(v, '^(%d+):')
	if n and live[string.sub(v, #n + 2, #n + 1 + tonumber(n))] then
		out[#out + 1] = all[i]
		out[#out + 1] = v
	end
end
return out
