-- Spend points of one key, atomically, by the server's clock
-- (ratelimit.Redis, GCRA; see redis.go for the arithmetic).
-- KEYS[1] the key's bucket: its theoretical arrival time (TAT), q + f/rate
--         quanta since the Unix epoch, stored "<q> <f>", or "<q>" when f
--         is 0; absent: full
-- KEYS[2] the key's ban: when it ends, in µs since the Unix epoch
-- Both carry the {key} hash tag, so one slot holds them.
-- ARGV[1] cost, in points (1 ≤ cost ≤ burst+1: the caller clamps it)
-- The limiter's constants, which NewRedis writes into the script (below):
--   burst, in points
--   unit: level units per point
--   rate: level units refilled per quantum
--   quantum, in µs
--   block, in µs; 0: a refusal bans nobody
-- Returns {allowed 0|1, remaining points, reset after in µs}.
--
-- Every number stays an integer below 2^53, which Lua's doubles hold
-- exactly: the caller scales unit and rate so that burst×unit ≤ 2^51.
-- Numbers go to Redis through string.format('%d'), never as Lua numbers,
-- whose conversion could use an exponent.
--
-- This runs on every check: it defines no function and builds no table
-- but its reply, and skips the divisions when quantum or rate is 1 (the
-- usual case), which took its Redis CPU time from about 9 to 7.5 µs per
-- call on the 2-vCPU development VM (redis-benchmark, INFO cpu; the TIME,
-- MGET and SET alone: 4.7), and to about 6.8 with the constants below.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- One MGET for both keys; tonumber(false), a missing key, is nil.
local kv = redis.call('MGET', KEYS[1], KEYS[2])
local ban = tonumber(kv[2])
if ban and ban > now then
	return {0, 0, ban - now}
end

local cost = tonumber(ARGV[1])
-- NewRedis replaces the right-hand side of the next line with the
-- limiter's constants, making one script per configuration: passed as
-- ARGV[2..6] they cost about 10% more Redis CPU per check (five more
-- arguments to parse and intern). Unreplaced, it reads them from there.
local burst, unit, rate, quantum, block = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local floor = math.floor

-- Whole quanta elapsed since the epoch (nq), and the µs into the current
-- one (sub). A division of integers below 2^53 may round: the quotient is
-- corrected so that the remainder lies in [0, divisor), here and below.
local nq, sub = now, 0
if quantum > 1 then
	nq = floor(now / quantum)
	sub = now - nq * quantum
	if sub < 0 then
		nq, sub = nq - 1, sub + quantum
	elseif sub >= quantum then
		nq, sub = nq + 1, sub - quantum
	end
end

-- debt: how far the TAT is ahead of now, in level units (0: full). The
-- level is full - debt. A value another program wrote, which does not
-- parse, reads as a full bucket.
local debt = 0
local v = kv[1]
if v then
	local q, f = tonumber(v), 0
	if not q then
		local sp = string.find(v, ' ', 1, true)
		if sp then
			q, f = tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
		end
	end
	if q and f and q >= nq then
		debt = (q - nq) * rate + f
	end
end

local full = burst * unit
local need = cost * unit
if cost <= burst and debt + need <= full then
	debt = debt + need
	-- TAT = now + debt: dq whole quanta and f units past nq.
	local dq, f = debt, 0
	if rate > 1 then
		dq = floor(debt / rate)
		f = debt - dq * rate
		if f < 0 then
			dq, f = dq - 1, f + rate
		elseif f >= rate then
			dq, f = dq + 1, f - rate
		end
	end
	-- The bucket is full again, and its key useless, once the TAT is
	-- reached: the key expires then (PX rounded up), bounding memory.
	local wait = dq * quantum - sub
	local tat
	if f > 0 then
		wait = wait + quantum
		tat = string.format('%d %d', nq + dq, f)
	else
		tat = string.format('%d', nq + dq)
	end
	redis.call('SET', KEYS[1], tat, 'PX', string.format('%d', math.min(floor((wait + 999) / 1000), 1e15)))
	return {1, floor((full - debt) / unit), wait}
end

if block > 0 then
	redis.call('SET', KEYS[2], string.format('%d', now + block), 'PX', string.format('%d', floor((block + 999) / 1000)))
	return {0, 0, block}
end

-- Refused: the time until the level reaches the cost, or Burst when the
-- cost is above it (the soonest anything changes), in whole quanta.
local target = full
if cost <= burst then
	target = need
end
local wait = 0
local over = debt - (full - target)
if over > 0 then
	local q = floor(over / rate)
	local r = over - q * rate
	if r < 0 then
		q, r = q - 1, r + rate
	elseif r >= rate then
		q, r = q + 1, r - rate
	end
	if r > 0 then
		q = q + 1
	end
	wait = q * quantum - sub
end
local remaining = floor((full - debt) / unit)
if remaining < 0 then
	remaining = 0
end
return {0, remaining, wait}
