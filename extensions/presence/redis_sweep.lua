-- Sweep a presence topic (presence.Redis): refresh or drop this instance's
-- lease, reap the connections of every other instance whose lease expired,
-- then answer. KEYS as in redis_join.lua. The conns hashes of other
-- instances are not in KEYS, as the script finds them in the leases; they
-- share the {topic} hash tag, hence the slot.
-- ARGV[1] instance id
-- ARGV[2] mode: 'beat'  refresh this instance's lease; answer
--                       {this instance's connections, members}
--               'drop'  remove this instance's connections (Close); answer {}
--               'list'  answer the members, flat: key, data, key, data…
--               'count' answer the number of members
-- ARGV[3] TTL in milliseconds
-- ARGV[4] the change channel
-- ARGV[5] the change event up to its kind, with "all":true
-- ARGV[6] the conns key of an instance, less the instance id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[2]

-- drop removes an instance's connections, decrements their members and
-- publishes a leave for each member whose last connection it was. It runs
-- once per dead instance and topic, not per leave.
local function drop(inst, conns)
	local fields = redis.call('HKEYS', conns)
	for i = 1, #fields do
		local f = fields[i]
		local n = string.match(f, '^(%d+):')
		if n then
			local key = string.sub(f, #n + 2 + tonumber(n))
			if redis.call('HINCRBY', KEYS[2], key, -1) <= 0 then
				redis.call('HDEL', KEYS[2], key)
				local data = redis.call('HGET', KEYS[1], key)
				if data then
					redis.call('HDEL', KEYS[1], key)
					if data == '' then
						data = 'null'
					end
					redis.call('PUBLISH', ARGV[4], ARGV[5] .. ',"k":"leave","key":' .. cjson.encode(key) .. ',"d":' .. data .. '}')
				end
			end
		end
	end
	redis.call('DEL', conns)
	redis.call('HDEL', KEYS[3], inst)
end

if mode == 'drop' then
	drop(ARGV[1], KEYS[4])
elseif mode == 'beat' then
	if redis.call('EXISTS', KEYS[4]) == 1 then
		redis.call('HSET', KEYS[3], ARGV[1], string.format('%d', now + tonumber(ARGV[3])))
	else
		redis.call('HDEL', KEYS[3], ARGV[1])
	end
end

-- An instance never reaps itself: a late heartbeat of its own renews its
-- lease instead.
local leases = redis.call('HGETALL', KEYS[3])
for i = 1, #leases, 2 do
	local inst = leases[i]
	if inst ~= ARGV[1] and (tonumber(leases[i + 1]) or 0) <= now then
		drop(inst, ARGV[6] .. inst)
	end
end

if mode == 'list' then
	return redis.call('HGETALL', KEYS[1])
elseif mode == 'count' then
	return redis.call('HLEN', KEYS[1])
elseif mode == 'beat' then
	return {redis.call('HLEN', KEYS[4]), redis.call('HLEN', KEYS[1])}
end
return {}
