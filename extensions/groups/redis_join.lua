-- Join (groups.Redis.Join); the prelude redis_count.lua comes first.
-- KEYS[1] the group's members hash, KEYS[2] its closed flag; one slot.
-- ARGV[1] the member's field "<instance>|<connID>"
-- ARGV[2] its role: member, admin or viewer (checked by the caller)
-- ARGV[3] maxMembers; ≤ 0: no limit
-- ARGV[4] the member TTL in ms
-- Returns {-1} when closed, {0} when full, else {1, members, admins, viewers}
-- counted after the join.
if redis.call('EXISTS', KEYS[2]) == 1 then
	return {-1}
end
local now = now_ms()
local field, role = ARGV[1], ARGV[2]
local max, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local n, old = count(KEYS[1], now, field, true)
-- A re-join of a live member only changes its role: never refused.
if not old and max > 0 and n.member + n.admin + n.viewer >= max then
	return {0}
end
if old then
	n[old] = n[old] - 1
end
n[role] = n[role] + 1
redis.call('HSET', KEYS[1], field, role .. '\t' .. string.format('%d', now + ttl))
keep_until(KEYS[1], ttl)
return {1, n.member, n.admin, n.viewer}
