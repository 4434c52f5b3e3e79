-- Set cursor entries of one topic and renew this instance's lease on it,
-- atomically (cursor.Redis). Both keys carry the {topic} hash tag, so one
-- Cluster slot holds them:
-- KEYS[1] entries  hash key → "<len(inst)>:<inst><len(user)>:<user><data>"
-- KEYS[2] leases   hash instance id → lease expiry (ms, Redis clock)
-- ARGV[1] instance id
-- ARGV[2] TTL in milliseconds
-- ARGV[3], ARGV[4]… key, value pairs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- %d: concatenating the number itself could print it in exponent form.
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', now + ttl))
for i = 3, #ARGV - 1, 2 do
	redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
-- Both keys outlive every lease by a TTL, renewed with the lease: a live
-- instance's sweeps reap a dead one's entries before the keys expire, and
-- a topic every instance left vanishes.
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
return 0
