-- Prelude of the groups.Redis scripts that count members; Go prepends it
-- to each of them (redis.go), so they share one definition.
--
-- A group's members hash maps "<instance>|<connID>" to
-- "<role>\t<expiresAtMs>", expiry in ms since the Unix epoch by the
-- server's clock. A member counts while its expiry is ahead of now.

-- now is the server's clock in ms since the Unix epoch.
local function now_ms()
	local t = redis.call('TIME')
	return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- count returns the live members of the hash key per role, and the role
-- of field if it is live (nil otherwise). A member that expired, or whose
-- value does not parse or names no role (another program wrote it), is
-- stale: it never counts, and is deleted when drop is true.
local function count(key, now, field, drop)
	local n = {member = 0, admin = 0, viewer = 0}
	local own
	local stale = {}
	local all = redis.call('HGETALL', key)
	for i = 1, #all, 2 do
		local v = all[i + 1]
		local tab = string.find(v, '\t', 1, true)
		local role, exp
		if tab then
			role, exp = string.sub(v, 1, tab - 1), tonumber(string.sub(v, tab + 1))
		end
		if exp and exp > now and n[role] then
			n[role] = n[role] + 1
			if all[i] == field then
				own = role
			end
		else
			stale[#stale + 1] = all[i]
		end
	end
	if drop then
		-- unpack is bounded by Lua's C stack: 1000 fields per HDEL.
		for i = 1, #stale, 1000 do
			redis.call('HDEL', key, unpack(stale, i, math.min(i + 999, #stale)))
		end
	end
	return n, own
end

-- keep_until makes the hash key outlive every expiry written now: its TTL
-- becomes ttl unless it already was longer (another instance may use a
-- longer TTL). PEXPIRE GT would leave a key without TTL alone.
local function keep_until(key, ttl)
	if redis.call('PTTL', key) < ttl then
		redis.call('PEXPIRE', key, string.format('%d', ttl))
	end
end

