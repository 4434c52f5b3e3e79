-- Ban one key from now, by the server's clock (ratelimit.Redis.Ban).
-- KEYS[1] the key's ban, which holds when it ends in µs since the Unix
--         epoch and expires then (PX rounded up)
-- ARGV[1] the ban's length in µs, ≥ 1
-- A ban replaces the one in progress, longer or shorter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local d = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', now + d), 'PX', string.format('%d', math.ceil(d / 1000)))
return 1
