-- State (groups.Redis.State), read-only; the prelude redis_count.lua
-- comes first. Stale members are skipped, not deleted.
-- KEYS[1] the group's members hash, KEYS[2] its closed flag, KEYS[3] its
-- metadata; one slot.
-- Returns {closed 0|1, metadata or nil, members, admins, viewers}.
local n = count(KEYS[1], now_ms(), nil, false)
return {redis.call('EXISTS', KEYS[2]), redis.call('GET', KEYS[3]), n.member, n.admin, n.viewer}
