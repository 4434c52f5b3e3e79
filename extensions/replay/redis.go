package replay

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// DefaultChannel is the default RedisConfig.Channel: the bus channel of the
// reference package and of the Redis bus (extensions/bus).
const DefaultChannel = "uws:pubsub"

var (
	//go:embed redis_append.lua
	appendLua string
	//go:embed redis_since.lua
	sinceLua string

	// Package-level, as rueidis scripts are safe for concurrent use and
	// keep their SHA-1: EVALSHA, falling back to EVAL once per server.
	appendScript = rueidis.NewLuaScript(appendLua)
	sinceScript  = rueidis.NewLuaScriptReadOnly(sinceLua)
)

// RedisConfig configures a Redis store. The zero value is the default
// configuration.
type RedisConfig struct {
	// Config holds Size and TTL. Now is ignored: the buffers expire by the
	// Redis server's clock, so instances with skewed clocks agree.
	Config

	// KeyPrefix is prepended to every key, so several gateways (or tests)
	// can share a server. It must not contain '{' or '}', which would change
	// the keys' hash slot. Default: "".
	KeyPrefix string

	// Channel is the bus channel AppendAndPublish publishes on; it must be
	// the Redis bus's channel. Default: DefaultChannel.
	Channel string

	// ChannelOf, when set, names the channel of each topic instead of
	// Channel: a routed Redis bus's (bus.Routing.TopicChannel). Default:
	// nil.
	ChannelOf func(topic string) string

	// Sharded makes AppendAndPublish SPUBLISH on ChannelOf's channel when
	// the client is a Redis Cluster's, as a routed bus without partitions
	// subscribes there (bus.Redis); the channel must then carry the
	// topic's hash tag, {<topic>}, so that the script stores and publishes
	// on the one node of the topic's slot. Default: false, PUBLISH.
	Sharded bool
}

// Redis is the Store shared by every instance of a cluster, on one Redis
// server or Redis Cluster. A topic has two keys sharing a hash slot:
//
//	<prefix>rt:replay:{<topic>}:seq  the counter, a string; it never expires
//	<prefix>rt:replay:{<topic>}:buf  the buffer, a sorted set scored by seq
//
// The keys stay out of the reference package's replay:* pattern, which its
// clear() deletes: a Node app of that package sharing the server must not
// wipe the gateway's counters.
//
// Each buffer member is "<seq> <len(event)> <event><data>", unique per seq,
// from which event and data come back byte for byte. One Lua script
// appends (INCR, ZADD, trim to Size by seq, PEXPIRE by TTL and, for
// AppendAndPublish, PUBLISH), so an Append is one round trip and atomic;
// one read-only script reads Since's snapshot. The counter outlives the
// buffer's TTL and Clear, so a resume across them is reported truncated
// (Covers). The store remembers the highest seq it saw per topic (its
// appends and Observe) and passes it to the script, which continues above
// it, by LossMargin, when the counter is behind: the server lost data.
//
// Every call sends one or a few commands with the caller's ctx and no
// other deadline: callers must give ctx a deadline, or a call made during
// an outage waits until the connection fails (rueidis#913). The store
// starts no goroutine and closes nothing; the caller owns the client.
type Redis struct {
	client  rueidis.Client
	prefix  string
	size    string // ARGV of the append script
	ttl     string
	channel string
	chanOf  func(string) string
	sharded bool
	seen    *seen
}

// NewRedis returns a store on client configured by cfg (zero fields take
// their defaults). It sends nothing: an unreachable server shows in the
// first call.
func NewRedis(client rueidis.Client, cfg RedisConfig) (*Redis, error) {
	if client == nil {
		return nil, errors.New("replay: no Redis client")
	}
	if strings.ContainsAny(cfg.KeyPrefix, "{}") {
		return nil, fmt.Errorf("replay: key prefix %q contains '{' or '}', which would put keys of different topics in one Redis Cluster slot", cfg.KeyPrefix)
	}
	c := cfg.Config.WithDefaults()
	ttl := int64(0)
	if c.TTL > 0 {
		ttl = max(1, c.TTL.Milliseconds()) // PEXPIRE's unit; a sub-millisecond TTL would otherwise mean none
	}
	if cfg.Channel == "" {
		cfg.Channel = DefaultChannel
	}
	return &Redis{
		client:  client,
		prefix:  cfg.KeyPrefix,
		size:    strconv.Itoa(c.Size),
		ttl:     strconv.FormatInt(ttl, 10),
		channel: cfg.Channel,
		chanOf:  cfg.ChannelOf,
		sharded: cfg.Sharded,
		seen:    newSeen(),
	}, nil
}

// keys returns the topic's counter and buffer keys. The hash tag {topic}
// puts both in one slot; a topic holding '}' shortens the tag equally in
// both, so they still share it. Keys of distinct topics never collide: the
// topic is followed by "}:seq" or "}:buf" in every key.
func (s *Redis) keys(topic string) []string {
	base := s.prefix + "rt:replay:{" + topic + "}:"
	return []string{base + "seq", base + "buf"}
}

// Append implements Store with one script run.
func (s *Redis) Append(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error) {
	return s.append(ctx, topic, event, data, false)
}

// AppendAndPublish implements BusAppender: the script that appends the
// event also PUBLISHes it on the bus channel as the envelope
//
//	{"instanceId":"replay","topic":T,"event":E,"data":D,"seq":N}
//
// (envelope.AppendStore) spliced from strings (data is never decoded), which every Redis bus
// delivers on every instance, this one included. Because Redis runs the
// script atomically, every subscriber receives a topic's events in seq
// order. topic and event must be valid on the wire (wire.ValidTopic with
// non-ASCII allowed, wire.ValidEvent), as they are spliced unescaped, and
// data must be valid JSON; the receivers' envelope rules (size cap,
// system topics) are the caller's to respect, or every receiver drops the
// event although it was buffered.
func (s *Redis) AppendAndPublish(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error) {
	if !wire.ValidTopic(topic, true) || !wire.ValidEvent(event) {
		return 0, fmt.Errorf("replay: publishing to %q: topic or event not valid on the wire", topic)
	}
	return s.append(ctx, topic, event, data, true)
}

func (s *Redis) append(ctx context.Context, topic, event string, data json.RawMessage, publish bool) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// The member without its seq, which only the script knows.
	member := make([]byte, 0, 4+len(event)+len(data))
	member = strconv.AppendInt(member, int64(len(event)), 10)
	member = append(member, ' ')
	member = append(member, event...)
	dataAt := len(member) + 1 // Lua strings index from 1
	member = append(member, data...)
	channel, head := "", ""
	if publish {
		channel = s.channel
		if s.chanOf != nil {
			channel = s.chanOf(topic)
		}
		head = envelope.StoreHead(topic, event)
	}
	// member is never modified after this point, so the zero-copy string
	// is safe even if rueidis writes the command after ctx ended.
	seq, err := appendScript.Exec(ctx, s.client, s.keys(topic), []string{
		s.size, s.ttl, rueidis.BinaryString(member), strconv.Itoa(dataAt), channel, head,
		strconv.FormatUint(s.seen.get(topic), 10), lossMargin, s.publishCommand(),
	}).AsUint64()
	if err != nil {
		return 0, fmt.Errorf("replay: appending to %q: %w", topic, err)
	}
	s.seen.note(topic, seq)
	return seq, nil
}

var lossMargin = strconv.Itoa(LossMargin)

// publishCommand names the script's publish command: decided per call, as
// a client that started before its Redis answered learns only once
// connected whether it is a Cluster's.
func (s *Redis) publishCommand() string {
	if s.sharded && s.chanOf != nil && s.client.Mode() == rueidis.ClientModeCluster {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// Observe implements Observer.
func (s *Redis) Observe(topic string, seq uint64) { s.seen.note(topic, seq) }

// Head implements Store with one GET of the counter.
func (s *Redis) Head(ctx context.Context, topic string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	head, err := s.client.Do(ctx, s.client.B().Get().Key(s.keys(topic)[0]).Build()).AsUint64()
	if rueidis.IsRedisNil(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replay: reading the head of %q: %w", topic, err)
	}
	s.seen.note(topic, head) // an issued seq: a lost counter continues above it
	return head, nil
}

// Since implements Store with one read-only script run, which reads the
// counter, the oldest buffered seq and the entries after after in one
// snapshot. An expired or cleared buffer behind a surviving counter is
// reported truncated, as Covers decides.
func (s *Redis) Since(ctx context.Context, topic string, after uint64) (Range, error) {
	if err := ctx.Err(); err != nil {
		return Range{}, err
	}
	reply, err := sinceScript.Exec(ctx, s.client, s.keys(topic), []string{strconv.FormatUint(after, 10)}).ToArray()
	if err != nil {
		return Range{}, fmt.Errorf("replay: reading %q after seq %d: %w", topic, after, err)
	}
	rg, err := parseSince(reply, after)
	if err != nil {
		return Range{}, fmt.Errorf("replay: reading %q after seq %d: %w", topic, after, err)
	}
	s.seen.note(topic, rg.Head)
	return rg, nil
}

var errMalformed = errors.New("malformed reply or buffer entry")

func parseSince(reply []rueidis.RedisMessage, after uint64) (Range, error) {
	if len(reply) != 3 {
		return Range{}, errMalformed
	}
	head, err := reply[0].AsUint64()
	if err != nil {
		return Range{}, errMalformed
	}
	oldest, err := reply[1].AsUint64()
	if err != nil {
		return Range{}, errMalformed
	}
	members, err := reply[2].ToArray()
	if err != nil {
		return Range{}, errMalformed
	}
	rg := Range{Head: head, Truncated: !Covers(after, head, oldest)}
	if len(members) == 0 {
		return rg, nil
	}
	rg.Entries = make([]Entry, len(members))
	for i := range members {
		m, err := members[i].ToString()
		if err != nil {
			return Range{}, errMalformed
		}
		e, ok := parseMember(m)
		if !ok {
			return Range{}, errMalformed
		}
		rg.Entries[i] = e
	}
	return rg, nil
}

// parseMember decodes "<seq> <len(event)> <event><data>". It never panics,
// whatever another program wrote into the buffer.
func parseMember(m string) (Entry, bool) {
	sp := strings.IndexByte(m, ' ')
	if sp < 0 {
		return Entry{}, false
	}
	seq, err := strconv.ParseUint(m[:sp], 10, 64)
	if err != nil {
		return Entry{}, false
	}
	rest := m[sp+1:]
	sp = strings.IndexByte(rest, ' ')
	if sp < 0 {
		return Entry{}, false
	}
	n, err := strconv.Atoi(rest[:sp])
	if err != nil || n < 0 || n > len(rest)-sp-1 {
		return Entry{}, false
	}
	rest = rest[sp+1:]
	e := Entry{Seq: seq, Event: strings.Clone(rest[:n])} // a substring would pin the whole member
	if len(rest) > n {
		e.Data = json.RawMessage(rest[n:])
	}
	return e, true
}

// Clear implements Store: it unlinks the buffer and keeps the counter.
func (s *Redis) Clear(ctx context.Context, topic string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.client.Do(ctx, s.client.B().Unlink().Key(s.keys(topic)[1]).Build()).Error(); err != nil {
		return fmt.Errorf("replay: clearing %q: %w", topic, err)
	}
	return nil
}

// ClearAll implements Store, and forgets the seqs this store saw, so its
// counters start again at 1. Other instances that saw a topic's seqs
// continue above them on their next append, as after any loss. It SCANs every node for keys under
// <prefix>rt:replay: and unlinks them, one pipelined round trip per SCAN page
// and one UNLINK per key, so no command spans two Cluster slots. It is not
// atomic: an Append running meanwhile may survive it.
func (s *Redis) ClearAll(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Only the buffers: a counter survives, so no seq is ever issued twice.
	match := escapeGlob(s.prefix) + "rt:replay:*:buf"
	for addr, node := range s.client.Nodes() {
		var cursor uint64
		for {
			page, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(match).Count(1000).Build()).AsScanEntry()
			if err != nil {
				return fmt.Errorf("replay: clearing all: scanning %s: %w", addr, err)
			}
			if len(page.Elements) > 0 {
				cmds := make(rueidis.Commands, len(page.Elements))
				for i, k := range page.Elements {
					cmds[i] = s.client.B().Unlink().Key(k).Build()
				}
				for _, r := range s.client.DoMulti(ctx, cmds...) {
					if err := r.Error(); err != nil {
						return fmt.Errorf("replay: clearing all: %w", err)
					}
				}
			}
			if cursor = page.Cursor; cursor == 0 {
				break
			}
		}
	}
	return nil
}

// escapeGlob escapes the characters SCAN MATCH treats as a pattern.
func escapeGlob(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Interface guards
var (
	_ Store       = (*Redis)(nil)
	_ BusAppender = (*Redis)(nil)
	_ Observer    = (*Redis)(nil)
)
