-- Leave one connection from a presence topic, atomically and in O(1)
-- (presence.Redis); KEYS as in redis_join.lua.
-- ARGV[1] instance id
-- ARGV[2] connection field
-- ARGV[3] key
-- ARGV[4] join token the field must hold; '': any
-- ARGV[5] the change channel
-- ARGV[6] the change event up to its kind
-- Returns {0 (no change) or 3 (left), the member's data or nil}.
local v = redis.call('HGET', KEYS[4], ARGV[2])
if not v or (ARGV[4] ~= '' and v ~= ARGV[4]) then
	return {0, redis.call('HGET', KEYS[1], ARGV[3])}
end
redis.call('HDEL', KEYS[4], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 0 then
	-- The instance's last connection on the topic: nothing left to lease.
	redis.call('HDEL', KEYS[3], ARGV[1])
end
local n = redis.call('HINCRBY', KEYS[2], ARGV[3], -1)
local data = redis.call('HGET', KEYS[1], ARGV[3])
if n > 0 then
	return {0, data}
end
redis.call('HDEL', KEYS[2], ARGV[3])
if not data then
	return {0, false}
end
redis.call('HDEL', KEYS[1], ARGV[3])
local d = data
if d == '' then
	d = 'null'
end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ',"k":"leave","key":' .. cjson.encode(ARGV[3]) .. ',"d":' .. d .. '}')
return {3, data}
