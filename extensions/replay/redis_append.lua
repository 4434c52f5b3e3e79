-- Append one event to a topic's replay buffer, atomically (replay.Redis).
-- KEYS[1] the topic's seq counter, KEYS[2] its buffer (a sorted set scored
-- by seq); both carry the {topic} hash tag, so one slot holds them.
-- ARGV[1] Size: entries kept
-- ARGV[2] TTL in milliseconds; 0: the buffer never expires
-- ARGV[3] the member without its seq: "<len(event)> <event><data>"
-- ARGV[4] where data starts in ARGV[3], 1-based
-- ARGV[5] the bus channel to publish the event on; "": do not publish
-- ARGV[6] the bus envelope up to its data (envelope.StoreHead); the script
-- ends it as envelope.AppendStore does, which redis_test.go checks
-- ARGV[7] the highest seq the caller saw issued for the topic; 0: none
-- ARGV[8] the loss margin
-- ARGV[9] PUBLISH, or SPUBLISH for a shard channel in KEYS' slot
-- Returns the seq.
local seen = tonumber(ARGV[7])
if seen > 0 then
	local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
	if cur < seen then
		-- The counter is behind a seq that was issued: the server lost data
		-- (a restart without persistence, a flush, a failover to a replica
		-- that lagged, a deleted key). Continue above every seq issued
		-- before, with a margin for those the caller has not seen, and drop
		-- what the buffer holds of the counter's second life: those seqs
		-- name other events than the clients saw.
		cur = seen + tonumber(ARGV[8])
		redis.call('SET', KEYS[1], string.format('%d', cur))
		redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cur)
	end
end
local seq = redis.call('INCR', KEYS[1])
-- %d: concatenating the number itself would print 1e+14 from 10^14 on.
local s = string.format('%d', seq)
redis.call('ZADD', KEYS[2], seq, s .. ' ' .. ARGV[3])
-- Keep the seqs above seq-Size: by score rather than rank, which takes one
-- command instead of ZCARD plus ZREMRANGEBYRANK and holds however the
-- buffer was emptied before.
local floor = seq - tonumber(ARGV[1])
if floor > 0 then
	redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', floor)
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
	redis.call('PEXPIRE', KEYS[2], ttl)
end
if ARGV[5] ~= '' then
	-- The envelope is spliced, never built with cjson: re-encoding would
	-- change the data's bytes (docs/design.md, lesson L-24).
	local data = string.sub(ARGV[3], tonumber(ARGV[4]))
	if data == '' then
		data = 'null'
	end
	redis.call(ARGV[9], ARGV[5], ARGV[6] .. data .. ',"seq":' .. s .. '}')
end
return seq
