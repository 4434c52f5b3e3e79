-- Join one connection to a presence topic, atomically (presence.Redis).
-- Every key carries the {topic} hash tag, so one Cluster slot holds them:
-- KEYS[1] members  hash key → data (raw JSON; '' is null)
-- KEYS[2] counts   hash key → connections of the key, every instance's
-- KEYS[3] leases   hash instance id → lease expiry (ms, Redis clock)
-- KEYS[4] conns    hash of this instance: connection field → join token
-- ARGV[1] instance id
-- ARGV[2] connection field "<len(connID)>:<connID><key>"
-- ARGV[3] key
-- ARGV[4] data
-- ARGV[5] join token
-- ARGV[6] TTL in milliseconds
-- ARGV[7] the change channel
-- ARGV[8] the change event up to its kind: {"i":…[,"all":true],"t":…
-- ARGV[9] '1': keep the data of a present member (a resync); '0': replace it
-- Returns 0 (no change), 1 (joined) or 2 (updated).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- %d: concatenating the number itself could print it in exponent form.
redis.call('HSET', KEYS[3], ARGV[1], string.format('%d', now + tonumber(ARGV[6])))
local key, data = ARGV[3], ARGV[4]
-- HSET answers 1 for a new field: a connection counted once, however
-- often it joins again.
if redis.call('HSET', KEYS[4], ARGV[2], ARGV[5]) == 1 then
	redis.call('HINCRBY', KEYS[2], key, 1)
end
local old = redis.call('HGET', KEYS[1], key)
local kind, name = 1, 'join'
if old then
	if old == data or ARGV[9] == '1' then
		return 0
	end
	kind, name = 2, 'update'
end
redis.call('HSET', KEYS[1], key, data)
if data == '' then
	data = 'null'
end
-- Spliced, never built with cjson: re-encoding would change the data's
-- bytes (docs/design.md, lesson L-24). Only the key is encoded here.
redis.call('PUBLISH', ARGV[7], ARGV[8] .. ',"k":"' .. name .. '","key":' .. cjson.encode(key) .. ',"d":' .. data .. '}')
return kind
