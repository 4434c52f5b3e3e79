-- Close a group (groups.Redis.Close): set its closed flag, for good, and
-- delete its members, in one step with respect to Join.
-- KEYS[1] the group's members hash, KEYS[2] its closed flag; one slot.
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[1])
return 1
