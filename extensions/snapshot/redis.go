package snapshot

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Redis keeps the snapshots of one gateway in one hash:
//
//	<prefix>rt:dash:{<gateway>}:snaps   field <instance> = "<expiry ms> <json>"
//	<prefix>rt:dash:{<gateway>}:watch   "1", PX the watch's ttl
//
// Redis 7.0 has no per-field expiry, so each value carries its expiry
// (the Redis server's clock, from TIME inside the script, so instances
// with skewed clocks agree) and All skips and deletes expired fields; the
// hash itself expires with its last Put. The hash tag keeps both keys of
// a gateway in one slot of a Redis Cluster.
type Redis struct {
	client       rueidis.Client
	snaps, watch string
}

// RedisConfig configures a Redis store.
type RedisConfig struct {
	// KeyPrefix is prepended to every key. Default: none.
	KeyPrefix string
	// Gateway names the gateway whose instances share snapshots. Required.
	Gateway string
}

// NewRedis returns a store on client, which the caller keeps and closes.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	if cfg.Gateway == "" {
		return nil, fmt.Errorf("snapshot: a gateway name is required")
	}
	// '{' and '}' in the name would change the hash tag.
	tag := strings.NewReplacer("{", "(", "}", ")").Replace(cfg.Gateway)
	base := cfg.KeyPrefix + "rt:dash:{" + tag + "}:"
	return &Redis{client: client, snaps: base + "snaps", watch: base + "watch"}, nil
}

// putScript stores "<expiry ms> <json>" under the instance, with the
// expiry from the server's clock, and extends the hash's life to it
// (never shortens it: another instance's snapshot may live longer).
var putScript = rueidis.NewLuaScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], tostring(now + ttl) .. ' ' .. ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then
	redis.call('PEXPIRE', KEYS[1], ttl)
end
return now
`)

// allScript returns the live values and deletes the expired ones; it
// returns at most ARGV[1] values.
var allScript = rueidis.NewLuaScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kv = redis.call('HGETALL', KEYS[1])
local out = {}
local max = tonumber(ARGV[1])
for i = 1, #kv, 2 do
	local v = kv[i + 1]
	local sp = string.find(v, ' ', 1, true)
	local exp = sp and tonumber(string.sub(v, 1, sp - 1)) or 0
	if exp <= now then
		redis.call('HDEL', KEYS[1], kv[i])
	elseif #out < max then
		out[#out + 1] = string.sub(v, sp + 1)
	end
end
return out
`)

// Put implements Store.
func (r *Redis) Put(ctx context.Context, instance string, snap []byte, ttl time.Duration) error {
	ms := strconv.FormatInt(ttl.Milliseconds(), 10)
	err := putScript.Exec(ctx, r.client, []string{r.snaps}, []string{instance, ms, rueidis.BinaryString(snap)}).Error()
	if err != nil {
		return fmt.Errorf("putting the dashboard snapshot: %w", err)
	}
	return nil
}

// All implements Store.
func (r *Redis) All(ctx context.Context) ([][]byte, error) {
	vals, err := allScript.Exec(ctx, r.client, []string{r.snaps}, []string{strconv.Itoa(MaxInstances)}).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("reading the dashboard snapshots: %w", err)
	}
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out, nil
}

// Watch implements Store.
func (r *Redis) Watch(ctx context.Context, ttl time.Duration) error {
	if err := r.client.Do(ctx, r.client.B().Set().Key(r.watch).Value("1").PxMilliseconds(ttl.Milliseconds()).Build()).Error(); err != nil {
		return fmt.Errorf("marking the dashboard watched: %w", err)
	}
	return nil
}

// Watched implements Store.
func (r *Redis) Watched(ctx context.Context) (bool, error) {
	n, err := r.client.Do(ctx, r.client.B().Exists().Key(r.watch).Build()).AsInt64()
	if err != nil {
		return false, fmt.Errorf("reading the dashboard's watch mark: %w", err)
	}
	return n > 0, nil
}

// Interface guards
var _ Store = (*Redis)(nil)
