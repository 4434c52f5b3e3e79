-- Leave (groups.Redis.Leave); the prelude redis_count.lua comes first.
-- KEYS[1] the group's members hash
-- ARGV[1] the member's field "<instance>|<connID>"
-- Returns {members, admins, viewers} counted after the leave.
redis.call('HDEL', KEYS[1], ARGV[1])
local n = count(KEYS[1], now_ms(), nil, true)
return {n.member, n.admin, n.viewer}
