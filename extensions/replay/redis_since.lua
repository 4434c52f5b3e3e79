-- Read a topic's head, oldest buffered seq and the entries after a seq, as
-- one snapshot (replay.Redis.Since). Read-only: run with EVALSHA_RO.
-- KEYS[1] the topic's seq counter, KEYS[2] its buffer.
-- ARGV[1] after: entries with a greater seq are returned
-- Returns {head, oldest, {member...}}; head and oldest are decimal strings,
-- "0" for none.
local head = redis.call('GET', KEYS[1])
if not head then
	return {'0', '0', {}}
end
local oldest = '0'
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 2 then
	oldest = first[2]
end
if tonumber(head) <= tonumber(ARGV[1]) then
	return {head, oldest, {}}
end
return {head, oldest, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')}
