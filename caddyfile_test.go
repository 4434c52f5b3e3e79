package realtime

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func durationPtr(d time.Duration) *caddy.Duration {
	cd := caddy.Duration(d)
	return &cd
}

func boolPtr(b bool) *bool { return &b }

func TestHandlerUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    Handler
		wantErr string
	}{
		// Success: every option.
		{
			name:  "a bare directive sets nothing so Provision applies every default",
			input: `realtime`,
			want:  Handler{},
		},
		{
			name:  "an empty block sets nothing",
			input: "realtime {\n}",
			want:  Handler{},
		},
		{
			name: "name and path are taken as written",
			input: `realtime {
				name chat
				path /socket
			}`,
			want: Handler{Name: "chat", Path: "/socket"},
		},
		{
			name: "jwt takes every option, public_key and from repeated in order",
			input: `realtime {
				jwt {
					secret {env.REALTIME_JWT_SECRET}
					public_key /etc/keys/a.pem
					public_key /etc/keys/b.pem
					jwks https://idp.example.com/.well-known/jwks.json
					jwks_refresh 5m
					issuer https://idp.example.com/
					audience my-app
					leeway 30s
					from query token
					from cookie rt
					user_claim uid
					identity_claims name avatar
					topics_claim topics
					max_size 8KiB
				}
				auth_path /auth/ws
			}`,
			want: Handler{JWT: &JWTConfig{
				Secret: "{env.REALTIME_JWT_SECRET}", PublicKeys: []string{"/etc/keys/a.pem", "/etc/keys/b.pem"},
				JWKS: "https://idp.example.com/.well-known/jwks.json", JWKSRefresh: caddy.Duration(5 * time.Minute),
				Issuer: "https://idp.example.com/", Audience: "my-app", Leeway: caddy.Duration(30 * time.Second),
				From:      []TokenSourceConfig{{Source: "query", Name: "token"}, {Source: "cookie", Name: "rt"}},
				UserClaim: "uid", IdentityClaims: []string{"name", "avatar"}, TopicsClaim: "topics", MaxSize: 8192,
			}, AuthPath: "/auth/ws"},
		},
		{
			name:  "auth_path off",
			input: "realtime {\n\tjwt {\n\t\tsecret s\n\t}\n\tauth_path off\n}",
			want:  Handler{JWT: &JWTConfig{Secret: "s"}, AuthPath: "off"},
		},
		{
			name:    "jwt without a block",
			input:   "realtime {\n\tjwt\n}",
			wantErr: "jwt requires a block",
		},
		{
			name:    "jwt without a key",
			input:   "realtime {\n\tjwt {\n\t\tissuer x\n\t}\n}",
			wantErr: "jwt needs a secret, a public_key or a jwks url",
		},
		{
			name:    "jwt from an unknown source",
			input:   "realtime {\n\tjwt {\n\t\tsecret s\n\t\tfrom body x\n\t}\n}",
			wantErr: "unknown jwt from source 'body': want header, cookie or query",
		},
		{
			name:    "jwt from without a name",
			input:   "realtime {\n\tjwt {\n\t\tsecret s\n\t\tfrom cookie\n\t}\n}",
			wantErr: "from wants a source and a name",
		},
		{
			name:    "jwt jwks not http",
			input:   "realtime {\n\tjwt {\n\t\tjwks ftp://x/\n\t}\n}",
			wantErr: "bad jwks url 'ftp://x/'",
		},
		{
			name:    "jwt secret twice",
			input:   "realtime {\n\tjwt {\n\t\tsecret a\n\t\tsecret b\n\t}\n}",
			wantErr: "secret already specified",
		},
		{
			name:    "auth_path not a path",
			input:   "realtime {\n\tauth_path auth\n}",
			wantErr: "auth_path must start with '/'",
		},
		{
			name:  "api without a block sets only the path",
			input: "realtime {\n\tapi /_realtime\n}",
			want:  Handler{API: &APIConfig{Path: "/_realtime"}},
		},
		{
			name:  "dashboard without a block sets only the path",
			input: "realtime {\n\tdashboard /_dashboard\n}",
			want:  Handler{Dashboard: &DashboardConfig{Path: "/_dashboard"}},
		},
		{
			name:  "dashboard with auth external leaves access to the handlers in front",
			input: "realtime {\n\tdashboard /ops {\n\t\tauth external\n\t}\n}",
			want:  Handler{Dashboard: &DashboardConfig{Path: "/ops", Auth: "external"}},
		},
		{
			name: "api with a block sets key and max_body in IEC units",
			input: `realtime {
				api /_realtime {
					key {env.REALTIME_API_KEY}
					max_body 4MiB
				}
			}`,
			want: Handler{API: &APIConfig{Path: "/_realtime", Key: "{env.REALTIME_API_KEY}", MaxBody: 4 << 20}},
		},
		{
			name: "max_body accepts SI units",
			input: `realtime {
				api /api {
					max_body 1MB
				}
			}`,
			want: Handler{API: &APIConfig{Path: "/api", MaxBody: 1000000}},
		},
		{
			name: "max_body accepts plain bytes",
			input: `realtime {
				api /api {
					max_body 2048
				}
			}`,
			want: Handler{API: &APIConfig{Path: "/api", MaxBody: 2048}},
		},
		{
			name:  "origins accepts same-origin alone",
			input: "realtime {\n\torigins same-origin\n}",
			want:  Handler{Origins: []string{"same-origin"}},
		},
		{
			name:  "origins accepts a star alone",
			input: "realtime {\n\torigins *\n}",
			want:  Handler{Origins: []string{"*"}},
		},
		{
			name:  "origins accepts a list of exact origins with ports",
			input: "realtime {\n\torigins https://example.com http://localhost:3000\n}",
			want:  Handler{Origins: []string{"https://example.com", "http://localhost:3000"}},
		},
		{
			name:  "auth without a block sets only the url",
			input: "realtime {\n\tauth http://127.0.0.1:3000/ws/auth\n}",
			want:  Handler{Auth: &HookConfig{URL: "http://127.0.0.1:3000/ws/auth"}},
		},
		{
			name: "auth with a block sets timeout, headers and max_in_flight",
			input: `realtime {
				auth https://app.internal/ws/auth {
					timeout 3s
					headers X-Tenant X-Api-Version
					max_in_flight 50
				}
			}`,
			want: Handler{Auth: &HookConfig{
				URL:         "https://app.internal/ws/auth",
				Timeout:     caddy.Duration(3 * time.Second),
				Headers:     []string{"X-Tenant", "X-Api-Version"},
				MaxInFlight: 50,
			}},
		},
		{
			name: "subscribe_hook sets timeout and max_in_flight",
			input: `realtime {
				subscribe_hook http://127.0.0.1:3000/ws/subscribe {
					timeout 2s
					max_in_flight 10
				}
			}`,
			want: Handler{SubscribeHook: &HookConfig{
				URL:         "http://127.0.0.1:3000/ws/subscribe",
				Timeout:     caddy.Duration(2 * time.Second),
				MaxInFlight: 10,
			}},
		},
		{
			name: "message_hook sets timeout, max_in_flight and queue",
			input: `realtime {
				message_hook http://127.0.0.1:3000/ws/message {
					timeout 1500ms
					max_in_flight 20
					queue 16
				}
			}`,
			want: Handler{MessageHook: &HookConfig{
				URL:         "http://127.0.0.1:3000/ws/message",
				Timeout:     caddy.Duration(1500 * time.Millisecond),
				MaxInFlight: 20,
				Queue:       16,
			}},
		},
		{
			name:  "public takes several patterns",
			input: "realtime {\n\tpublic news:* ticker\n}",
			want:  Handler{Public: []string{"news:*", "ticker"}},
		},
		{
			name:  "user_key names the identity field",
			input: "realtime {\n\tuser_key sub\n}",
			want:  Handler{UserKey: "sub"},
		},
		{
			name:  "allow_non_ascii_topics without arguments turns it on",
			input: "realtime {\n\tallow_non_ascii_topics\n}",
			want:  Handler{AllowNonASCIITopics: true},
		},
		{
			name: "the timing options take Caddy durations",
			input: `realtime {
				keepalive 30s
				ping_interval 20s
				idle_timeout 1m30s
				write_timeout 5s
				request_timeout 2s
				shutdown_spread 10s
			}`,
			want: Handler{
				KeepAlive:      caddy.Duration(30 * time.Second),
				PingInterval:   caddy.Duration(20 * time.Second),
				IdleTimeout:    caddy.Duration(90 * time.Second),
				WriteTimeout:   caddy.Duration(5 * time.Second),
				RequestTimeout: caddy.Duration(2 * time.Second),
				ShutdownSpread: durationPtr(10 * time.Second),
			},
		},
		{
			name:  "keepalive accepts the lower bound of 5s",
			input: "realtime {\n\tkeepalive 5s\n}",
			want:  Handler{KeepAlive: caddy.Duration(5 * time.Second)},
		},
		{
			name:  "keepalive accepts the upper bound of 120s",
			input: "realtime {\n\tkeepalive 2m\n}",
			want:  Handler{KeepAlive: caddy.Duration(120 * time.Second)},
		},
		{
			name:  "shutdown_spread of zero is kept to mean close all at once",
			input: "realtime {\n\tshutdown_spread 0\n}",
			want:  Handler{ShutdownSpread: durationPtr(0)},
		},
		{
			name:  "compression alone turns permessage-deflate on with the defaults",
			input: "realtime {\n\tcompression\n}",
			want:  Handler{Compression: &CompressionConfig{}},
		},
		{
			name:  "a compression block sets the level and the size under which frames stay uncompressed",
			input: "realtime {\n\tcompression {\n\t\tlevel 6\n\t\tmin_size 1KiB\n\t}\n}",
			want:  Handler{Compression: &CompressionConfig{Level: 6, MinSize: 1024}},
		},
		{
			name:  "an empty limits block sets an empty limits object",
			input: "realtime {\n\tlimits\n}",
			want:  Handler{Limits: &LimitsConfig{}},
		},
		{
			name: "limits sets every limit",
			input: `realtime {
				limits {
					max_payload 64KiB
					max_backpressure 2MiB
					slow_consumer drop
					upgrade_rate 30/10s
					max_connections 10000
					max_subscriptions 100
					inbound_rate 50/s
					inbound_burst 80
					rate_limit_close 500
				}
			}`,
			want: Handler{Limits: &LimitsConfig{
				MaxPayload:       64 << 10,
				MaxBackpressure:  2 << 20,
				SlowConsumer:     "drop",
				UpgradeRate:      30,
				UpgradeWindow:    caddy.Duration(10 * time.Second),
				MaxConnections:   10000,
				MaxSubscriptions: 100,
				InboundRate:      50,
				InboundBurst:     80,
				RateLimitClose:   500,
			}},
		},
		{
			name:  "slow_consumer accepts close",
			input: "realtime {\n\tlimits {\n\t\tslow_consumer close\n\t}\n}",
			want:  Handler{Limits: &LimitsConfig{SlowConsumer: "close"}},
		},
		{
			name: "off disables upgrade_rate, inbound_rate and rate_limit_close with -1",
			input: `realtime {
				limits {
					upgrade_rate off
					inbound_rate off
					rate_limit_close off
				}
			}`,
			want: Handler{Limits: &LimitsConfig{UpgradeRate: -1, InboundRate: -1, RateLimitClose: -1}},
		},
		{
			name:  "upgrade_rate accepts a bare unit as the window",
			input: "realtime {\n\tlimits {\n\t\tupgrade_rate 100/m\n\t}\n}",
			want:  Handler{Limits: &LimitsConfig{UpgradeRate: 100, UpgradeWindow: caddy.Duration(time.Minute)}},
		},
		{
			name:  "inbound_rate accepts a bare number as per second",
			input: "realtime {\n\tlimits {\n\t\tinbound_rate 120\n\t}\n}",
			want:  Handler{Limits: &LimitsConfig{InboundRate: 120}},
		},
		{
			name:  "inbound_rate accepts an explicit one second window",
			input: "realtime {\n\tlimits {\n\t\tinbound_rate 120/1s\n\t}\n}",
			want:  Handler{Limits: &LimitsConfig{InboundRate: 120}},
		},
		{
			name:  "max_connections of zero is allowed and means unlimited",
			input: "realtime {\n\tlimits {\n\t\tmax_connections 0\n\t}\n}",
			want:  Handler{Limits: &LimitsConfig{}},
		},

		// Success: replay, presence, cursors, groups, rate_limit, events_hook.
		{
			name:  "replay without a block sets only the pattern",
			input: "realtime {\n\treplay chat:*\n}",
			want:  Handler{Replay: []ReplayConfig{{Topics: "chat:*"}}},
		},
		{
			name: "replay with a block sets store, size, ttl and truncation_notice",
			input: `realtime {
				replay chat:* {
					store memory
					size 500
					ttl 1h
					truncation_notice off
				}
			}`,
			want: Handler{Replay: []ReplayConfig{{
				Topics:           "chat:*",
				Store:            "memory",
				Size:             500,
				TTL:              caddy.Duration(time.Hour),
				TruncationNotice: boolPtr(false),
			}}},
		},
		{
			name:  "truncation_notice on is kept as an explicit true",
			input: "realtime {\n\treplay a {\n\t\ttruncation_notice on\n\t}\n}",
			want:  Handler{Replay: []ReplayConfig{{Topics: "a", TruncationNotice: boolPtr(true)}}},
		},
		{
			name:  "replay repeats for different patterns in the order written",
			input: "realtime {\n\treplay chat:*\n\treplay *\n}",
			want:  Handler{Replay: []ReplayConfig{{Topics: "chat:*"}, {Topics: "*"}}},
		},
		{
			name:  "a pattern may contain spaces and punctuation when quoted",
			input: "realtime {\n\treplay \"room 1/*\"\n}",
			want:  Handler{Replay: []ReplayConfig{{Topics: "room 1/*"}}},
		},
		{
			name:  "presence without a block sets only the pattern",
			input: "realtime {\n\tpresence room:*\n}",
			want:  Handler{Presence: []PresenceConfig{{Topics: "room:*"}}},
		},
		{
			name: "presence with a block sets key, select, heartbeat and ttl",
			input: `realtime {
				presence room:* {
					key user_id
					select name avatar
					heartbeat 15s
					ttl 2m
				}
			}`,
			want: Handler{Presence: []PresenceConfig{{
				Topics:    "room:*",
				Key:       "user_id",
				Select:    []string{"name", "avatar"},
				Heartbeat: durationPtr(15 * time.Second),
				TTL:       caddy.Duration(2 * time.Minute),
			}}},
		},
		{
			name:  "presence heartbeat off is kept as an explicit zero",
			input: "realtime {\n\tpresence room:* {\n\t\theartbeat off\n\t}\n}",
			want:  Handler{Presence: []PresenceConfig{{Topics: "room:*", Heartbeat: durationPtr(0)}}},
		},
		{
			name:  "presence repeats for different patterns",
			input: "realtime {\n\tpresence room:*\n\tpresence lobby\n}",
			want:  Handler{Presence: []PresenceConfig{{Topics: "room:*"}, {Topics: "lobby"}}},
		},
		{
			name:  "cursor without a block sets only the pattern in cursors",
			input: "realtime {\n\tcursor doc:*\n}",
			want:  Handler{Cursors: []CursorConfig{{Topics: "doc:*"}}},
		},
		{
			name: "cursor with a block sets throttle, topic_throttle, ttl, select and max_data",
			input: `realtime {
				cursor doc:* {
					throttle 32ms
					topic_throttle 100ms
					ttl 45s
					select name color
					max_data 4KiB
				}
			}`,
			want: Handler{Cursors: []CursorConfig{{
				Topics:        "doc:*",
				Throttle:      durationPtr(32 * time.Millisecond),
				TopicThrottle: caddy.Duration(100 * time.Millisecond),
				TTL:           caddy.Duration(45 * time.Second),
				Select:        []string{"name", "color"},
				MaxData:       4096,
			}}},
		},
		{
			name:  "cursor throttle off is kept as an explicit zero",
			input: "realtime {\n\tcursor doc:* {\n\t\tthrottle off\n\t}\n}",
			want:  Handler{Cursors: []CursorConfig{{Topics: "doc:*", Throttle: durationPtr(0)}}},
		},
		{
			name:  "topic_throttle accepts the lower bound of 16ms",
			input: "realtime {\n\tcursor doc:* {\n\t\ttopic_throttle 16ms\n\t}\n}",
			want:  Handler{Cursors: []CursorConfig{{Topics: "doc:*", TopicThrottle: caddy.Duration(16 * time.Millisecond)}}},
		},
		{
			name:  "max_data accepts plain bytes",
			input: "realtime {\n\tcursor doc:* {\n\t\tmax_data 2048\n\t}\n}",
			want:  Handler{Cursors: []CursorConfig{{Topics: "doc:*", MaxData: 2048}}},
		},
		{
			name:  "cursor repeats for different patterns",
			input: "realtime {\n\tcursor doc:*\n\tcursor board:*\n}",
			want:  Handler{Cursors: []CursorConfig{{Topics: "doc:*"}, {Topics: "board:*"}}},
		},
		{
			name:  "group without a block sets only the name",
			input: "realtime {\n\tgroup lobby\n}",
			want:  Handler{Groups: []GroupConfig{{Name: "lobby"}}},
		},
		{
			name: "group with a block sets every option and meta in the order written",
			input: `realtime {
				group lobby {
					max_members 50
					meta title "Main lobby"
					meta theme dark
					member_ttl 3m
					role_from role
					join_on lobby room:*
				}
			}`,
			want: Handler{Groups: []GroupConfig{{
				Name:       "lobby",
				MaxMembers: 50,
				Meta:       json.RawMessage(`{"title":"Main lobby","theme":"dark"}`),
				MemberTTL:  caddy.Duration(3 * time.Minute),
				RoleFrom:   "role",
				JoinOn:     []string{"lobby", "room:*"},
			}}},
		},
		{
			name:  "meta keys and values are JSON-escaped",
			input: "realtime {\n\tgroup g {\n\t\tmeta `a\"b` `c\\d`\n\t}\n}",
			want:  Handler{Groups: []GroupConfig{{Name: "g", Meta: json.RawMessage(`{"a\"b":"c\\d"}`)}}},
		},
		{
			name:  "a meta value may be empty",
			input: "realtime {\n\tgroup g {\n\t\tmeta note \"\"\n\t}\n}",
			want:  Handler{Groups: []GroupConfig{{Name: "g", Meta: json.RawMessage(`{"note":""}`)}}},
		},
		{
			name:  "group repeats for different names",
			input: "realtime {\n\tgroup lobby\n\tgroup staff\n}",
			want:  Handler{Groups: []GroupConfig{{Name: "lobby"}, {Name: "staff"}}},
		},
		{
			name: "rate_limit sets every option",
			input: `realtime {
				rate_limit {
					points 20
					interval 2s
					block 1m
					key user
					action close
					subscribes
				}
			}`,
			want: Handler{RateLimit: &RateLimitConfig{
				Points:     20,
				Interval:   caddy.Duration(2 * time.Second),
				Block:      caddy.Duration(time.Minute),
				Key:        "user",
				Action:     "close",
				Subscribes: true,
			}},
		},
		{
			name:  "rate_limit key takes any identity field and action drop",
			input: "realtime {\n\trate_limit {\n\t\tkey tenant\n\t\taction drop\n\t}\n}",
			want:  Handler{RateLimit: &RateLimitConfig{Key: "tenant", Action: "drop"}},
		},
		{
			name:  "an empty rate_limit block sets an empty rate_limit object",
			input: "realtime {\n\trate_limit {\n\t}\n}",
			want:  Handler{RateLimit: &RateLimitConfig{}},
		},
		{
			name:  "events_hook without a block sets only the url",
			input: "realtime {\n\tevents_hook http://127.0.0.1:3000/ws/events\n}",
			want:  Handler{EventsHook: &HookConfig{URL: "http://127.0.0.1:3000/ws/events"}},
		},
		{
			name: "events_hook sets timeout and max_in_flight",
			input: `realtime {
				events_hook https://app.internal/ws/events {
					timeout 2s
					max_in_flight 32
				}
			}`,
			want: Handler{EventsHook: &HookConfig{
				URL:         "https://app.internal/ws/events",
				Timeout:     caddy.Duration(2 * time.Second),
				MaxInFlight: 32,
			}},
		},

		// Errors: arguments.
		{
			name:    "an inline argument after the directive is an argument error",
			input:   `realtime /ws`,
			wantErr: "wrong argument count",
		},
		{
			name:    "an unknown subdirective is named",
			input:   "realtime {\n\tbogus 1\n}",
			wantErr: "unrecognized subdirective: bogus",
		},
		{
			name:    "a repeated option is rejected",
			input:   "realtime {\n\tpath /a\n\tpath /b\n}",
			wantErr: "path already specified",
		},
		{
			name:    "a repeated hook is rejected",
			input:   "realtime {\n\tauth http://a/x\n\tauth http://b/x\n}",
			wantErr: "auth already specified",
		},
		{
			name:    "name without a value is an argument error",
			input:   "realtime {\n\tname\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "name with two values is an argument error",
			input:   "realtime {\n\tname a b\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an empty quoted name is rejected",
			input:   "realtime {\n\tname \"\"\n}",
			wantErr: "name must not be empty",
		},
		{
			name:    "a block after an option that takes none is rejected",
			input:   "realtime {\n\tname chat {\n\t\tx\n\t}\n}",
			wantErr: "name does not take a block",
		},
		{
			name:    "a path without a leading slash is rejected with the value quoted",
			input:   "realtime {\n\tpath ws\n}",
			wantErr: "path must start with '/', got 'ws'",
		},
		{
			name:    "user_key without a value is an argument error",
			input:   "realtime {\n\tuser_key\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "allow_non_ascii_topics with an argument is an argument error",
			input:   "realtime {\n\tallow_non_ascii_topics true\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "public without patterns is an argument error",
			input:   "realtime {\n\tpublic\n}",
			wantErr: "wrong argument count",
		},

		// Errors: dashboard.
		{
			name:    "dashboard without a path says what to write",
			input:   "realtime {\n\tdashboard\n}",
			wantErr: "dashboard wants a path, like: dashboard /_dashboard, at Testfile:2",
		},
		{
			name:    "a dashboard path without a leading slash is rejected",
			input:   "realtime {\n\tdashboard ops\n}",
			wantErr: "dashboard path must start with '/', got 'ops'",
		},
		{
			name:    "an unknown dashboard auth policy is named",
			input:   "realtime {\n\tdashboard /ops {\n\t\tauth open\n\t}\n}",
			wantErr: "unknown dashboard auth 'open': want key or external, at Testfile:3",
		},
		{
			name:    "an unknown dashboard subdirective is named",
			input:   "realtime {\n\tdashboard /ops {\n\t\tkey k\n\t}\n}",
			wantErr: "unrecognized dashboard subdirective: key",
		},
		{
			name:    "a repeated dashboard auth is an error",
			input:   "realtime {\n\tdashboard /ops {\n\t\tauth key\n\t\tauth external\n\t}\n}",
			wantErr: "auth already specified",
		},

		// Errors: api.
		{
			name:    "api without a path is an argument error",
			input:   "realtime {\n\tapi\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "api with a block but no path is an argument error",
			input:   "realtime {\n\tapi {\n\t\tkey k\n\t}\n}",
			wantErr: "wrong argument count or unexpected line ending after 'api'",
		},
		{
			name:    "api with two paths is an argument error",
			input:   "realtime {\n\tapi /a /b\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an api path without a leading slash is rejected",
			input:   "realtime {\n\tapi _realtime\n}",
			wantErr: "api path must start with '/', got '_realtime'",
		},
		{
			name:    "an unknown api subdirective is named",
			input:   "realtime {\n\tapi /a {\n\t\tsecret k\n\t}\n}",
			wantErr: "unrecognized api subdirective: secret",
		},
		{
			name:    "a repeated api key is rejected",
			input:   "realtime {\n\tapi /a {\n\t\tkey k\n\t\tkey l\n\t}\n}",
			wantErr: "key already specified",
		},
		{
			name:    "a bad max_body is rejected with the value quoted",
			input:   "realtime {\n\tapi /a {\n\t\tmax_body lots\n\t}\n}",
			wantErr: "bad size value 'lots' for max_body",
		},
		{
			name:    "an unknown size unit is rejected",
			input:   "realtime {\n\tapi /a {\n\t\tmax_body 4QB\n\t}\n}",
			wantErr: "bad size value '4QB' for max_body",
		},
		{
			name:    "a negative size is rejected",
			input:   "realtime {\n\tapi /a {\n\t\tmax_body -1\n\t}\n}",
			wantErr: "bad size value '-1' for max_body",
		},
		{
			name:    "a zero size is rejected",
			input:   "realtime {\n\tapi /a {\n\t\tmax_body 0\n\t}\n}",
			wantErr: "max_body must be positive, got '0'",
		},
		{
			name:    "a size beyond int64 is rejected",
			input:   "realtime {\n\tapi /a {\n\t\tmax_body 16EiB\n\t}\n}",
			wantErr: "bad size value '16EiB' for max_body",
		},

		// Errors: origins.
		{
			name:    "origins without values is an argument error",
			input:   "realtime {\n\torigins\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an origin without a scheme is rejected",
			input:   "realtime {\n\torigins example.com\n}",
			wantErr: "bad origin 'example.com'",
		},
		{
			name:    "an origin with a path is rejected",
			input:   "realtime {\n\torigins https://example.com/\n}",
			wantErr: "bad origin 'https://example.com/'",
		},
		{
			name:    "an origin with a query is rejected",
			input:   "realtime {\n\torigins https://example.com?x=1\n}",
			wantErr: "bad origin 'https://example.com?x=1'",
		},
		{
			name:    "an origin with user info is rejected",
			input:   "realtime {\n\torigins https://u@example.com\n}",
			wantErr: "bad origin 'https://u@example.com'",
		},
		{
			name:    "a star combined with other origins is rejected",
			input:   "realtime {\n\torigins * https://example.com\n}",
			wantErr: "origin '*' must be the only origin",
		},
		{
			name:    "same-origin combined with other origins is rejected",
			input:   "realtime {\n\torigins https://example.com same-origin\n}",
			wantErr: "origin 'same-origin' must be the only origin",
		},

		// Errors: hooks.
		{
			name:    "auth without a url is an argument error",
			input:   "realtime {\n\tauth\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "auth with two urls is an argument error",
			input:   "realtime {\n\tauth http://a/x http://b/x\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a hook url with another scheme is rejected with the value quoted",
			input:   "realtime {\n\tauth ftp://app/auth\n}",
			wantErr: "bad auth url 'ftp://app/auth'",
		},
		{
			name:    "a hook url without a host is rejected",
			input:   "realtime {\n\tsubscribe_hook /ws/subscribe\n}",
			wantErr: "bad subscribe_hook url '/ws/subscribe'",
		},
		{
			name:    "a hook url that does not parse is rejected",
			input:   "realtime {\n\tmessage_hook \"http://a b/%zz\"\n}",
			wantErr: "bad message_hook url 'http://a b/%zz'",
		},
		{
			name:    "an unknown hook subdirective is named with its hook",
			input:   "realtime {\n\tauth http://a/x {\n\t\tretries 3\n\t}\n}",
			wantErr: "unrecognized auth subdirective: retries",
		},
		{
			name:    "a repeated hook option is rejected",
			input:   "realtime {\n\tauth http://a/x {\n\t\ttimeout 1s\n\t\ttimeout 2s\n\t}\n}",
			wantErr: "timeout already specified",
		},
		{
			name:    "headers in subscribe_hook is rejected",
			input:   "realtime {\n\tsubscribe_hook http://a/x {\n\t\theaders X-A\n\t}\n}",
			wantErr: "headers is only valid in auth, not in subscribe_hook",
		},
		{
			name:    "headers in message_hook is rejected",
			input:   "realtime {\n\tmessage_hook http://a/x {\n\t\theaders X-A\n\t}\n}",
			wantErr: "headers is only valid in auth, not in message_hook",
		},
		{
			name:    "queue in subscribe_hook is rejected",
			input:   "realtime {\n\tsubscribe_hook http://a/x {\n\t\tqueue 8\n\t}\n}",
			wantErr: "queue is only valid in message_hook, not in subscribe_hook",
		},
		{
			name:    "queue in auth is rejected",
			input:   "realtime {\n\tauth http://a/x {\n\t\tqueue 8\n\t}\n}",
			wantErr: "queue is only valid in message_hook, not in auth",
		},
		{
			name:    "headers without names is an argument error",
			input:   "realtime {\n\tauth http://a/x {\n\t\theaders\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an invalid header name is rejected with the value quoted",
			input:   "realtime {\n\tauth http://a/x {\n\t\theaders X-Ok \"Bad Header\"\n\t}\n}",
			wantErr: "bad header name 'Bad Header'",
		},
		{
			name:    "a bad hook timeout is rejected",
			input:   "realtime {\n\tauth http://a/x {\n\t\ttimeout soon\n\t}\n}",
			wantErr: "bad duration value 'soon' for timeout",
		},
		{
			name:    "a zero hook timeout is rejected",
			input:   "realtime {\n\tauth http://a/x {\n\t\ttimeout 0s\n\t}\n}",
			wantErr: "timeout must be positive, got '0s'",
		},
		{
			name:    "a non-integer max_in_flight is rejected with the value quoted",
			input:   "realtime {\n\tauth http://a/x {\n\t\tmax_in_flight many\n\t}\n}",
			wantErr: "bad max_in_flight value 'many': want an integer",
		},
		{
			name:    "a zero max_in_flight is rejected",
			input:   "realtime {\n\tauth http://a/x {\n\t\tmax_in_flight 0\n\t}\n}",
			wantErr: "max_in_flight must be positive, got '0'",
		},
		{
			name:    "a negative queue is rejected",
			input:   "realtime {\n\tmessage_hook http://a/x {\n\t\tqueue -4\n\t}\n}",
			wantErr: "queue must be positive, got '-4'",
		},

		// Errors: durations.
		{
			name:    "a bad duration is rejected with the value quoted",
			input:   "realtime {\n\tping_interval often\n}",
			wantErr: "bad duration value 'often' for ping_interval",
		},
		{
			name:    "a negative duration is rejected",
			input:   "realtime {\n\tidle_timeout -5s\n}",
			wantErr: "idle_timeout must be positive, got '-5s'",
		},
		{
			name:    "a zero write_timeout is rejected",
			input:   "realtime {\n\twrite_timeout 0\n}",
			wantErr: "write_timeout must be positive, got '0'",
		},
		{
			name:    "a bad request_timeout is rejected",
			input:   "realtime {\n\trequest_timeout 5\n}",
			wantErr: "bad duration value '5' for request_timeout",
		},
		{
			name:    "a compression level above 9 is rejected",
			input:   "realtime {\n\tcompression {\n\t\tlevel 10\n\t}\n}",
			wantErr: "compression level 10: want 1 (fastest) to 9 (smallest)",
		},
		{
			name:    "an unknown compression option is rejected",
			input:   "realtime {\n\tcompression {\n\t\tthreshold 1KiB\n\t}\n}",
			wantErr: "unknown compression option 'threshold'",
		},
		{
			name:    "a negative shutdown_spread is rejected",
			input:   "realtime {\n\tshutdown_spread -1s\n}",
			wantErr: "shutdown_spread must be positive, got '-1s'",
		},
		{
			name:    "a duration option without a value is an argument error",
			input:   "realtime {\n\tkeepalive\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "keepalive below 5s is rejected",
			input:   "realtime {\n\tkeepalive 4s\n}",
			wantErr: "keepalive must be between 5s and 120s, got '4s'",
		},
		{
			name:    "keepalive above 120s is rejected",
			input:   "realtime {\n\tkeepalive 121s\n}",
			wantErr: "keepalive must be between 5s and 120s, got '2m1s'",
		},

		// Errors: limits.
		{
			name:    "limits with an argument is an argument error",
			input:   "realtime {\n\tlimits strict\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an unknown limits subdirective is named",
			input:   "realtime {\n\tlimits {\n\t\tmax_topics 5\n\t}\n}",
			wantErr: "unrecognized limits subdirective: max_topics",
		},
		{
			name:    "a repeated limit is rejected",
			input:   "realtime {\n\tlimits {\n\t\tmax_payload 1KiB\n\t\tmax_payload 2KiB\n\t}\n}",
			wantErr: "max_payload already specified",
		},
		{
			name:    "a bad max_payload is rejected",
			input:   "realtime {\n\tlimits {\n\t\tmax_payload big\n\t}\n}",
			wantErr: "bad size value 'big' for max_payload",
		},
		{
			name:    "a bad max_backpressure is rejected",
			input:   "realtime {\n\tlimits {\n\t\tmax_backpressure 1XB\n\t}\n}",
			wantErr: "bad size value '1XB' for max_backpressure",
		},
		{
			name:    "an unknown slow_consumer policy is rejected with the value quoted",
			input:   "realtime {\n\tlimits {\n\t\tslow_consumer block\n\t}\n}",
			wantErr: "unknown slow_consumer policy 'block'",
		},
		{
			name:    "upgrade_rate without a window is rejected",
			input:   "realtime {\n\tlimits {\n\t\tupgrade_rate 30\n\t}\n}",
			wantErr: "bad upgrade_rate value '30'",
		},
		{
			name:    "upgrade_rate with a bad count is rejected",
			input:   "realtime {\n\tlimits {\n\t\tupgrade_rate x/10s\n\t}\n}",
			wantErr: "bad upgrade_rate value 'x/10s'",
		},
		{
			name:    "upgrade_rate with a zero count is rejected",
			input:   "realtime {\n\tlimits {\n\t\tupgrade_rate 0/10s\n\t}\n}",
			wantErr: "bad upgrade_rate value '0/10s'",
		},
		{
			name:    "upgrade_rate with a bad window is rejected",
			input:   "realtime {\n\tlimits {\n\t\tupgrade_rate 30/soon\n\t}\n}",
			wantErr: "bad upgrade_rate value '30/soon'",
		},
		{
			name:    "upgrade_rate with a zero window is rejected",
			input:   "realtime {\n\tlimits {\n\t\tupgrade_rate 30/0s\n\t}\n}",
			wantErr: "bad upgrade_rate value '30/0s'",
		},
		{
			name:    "upgrade_rate without a value is an argument error",
			input:   "realtime {\n\tlimits {\n\t\tupgrade_rate\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "inbound_rate with a window other than one second is rejected",
			input:   "realtime {\n\tlimits {\n\t\tinbound_rate 100/10s\n\t}\n}",
			wantErr: "bad inbound_rate value '100/10s'",
		},
		{
			name:    "inbound_rate with a negative count is rejected",
			input:   "realtime {\n\tlimits {\n\t\tinbound_rate -5\n\t}\n}",
			wantErr: "bad inbound_rate value '-5'",
		},
		{
			name:    "a negative max_connections is rejected",
			input:   "realtime {\n\tlimits {\n\t\tmax_connections -1\n\t}\n}",
			wantErr: "max_connections must not be negative, got '-1'",
		},
		{
			name:    "a zero max_subscriptions is rejected",
			input:   "realtime {\n\tlimits {\n\t\tmax_subscriptions 0\n\t}\n}",
			wantErr: "max_subscriptions must be positive, got '0'",
		},
		{
			name:    "a non-integer inbound_burst is rejected",
			input:   "realtime {\n\tlimits {\n\t\tinbound_burst 1.5\n\t}\n}",
			wantErr: "bad inbound_burst value '1.5': want an integer",
		},
		{
			name:    "path without a value is an argument error",
			input:   "realtime {\n\tpath\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "max_in_flight without a value is an argument error",
			input:   "realtime {\n\tauth http://a/x {\n\t\tmax_in_flight\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "max_payload without a value is an argument error",
			input:   "realtime {\n\tlimits {\n\t\tmax_payload\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "slow_consumer without a value is an argument error",
			input:   "realtime {\n\tlimits {\n\t\tslow_consumer\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "inbound_rate without a value is an argument error",
			input:   "realtime {\n\tlimits {\n\t\tinbound_rate\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "rate_limit_close without a value is an argument error",
			input:   "realtime {\n\tlimits {\n\t\trate_limit_close\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a non-integer rate_limit_close is rejected",
			input:   "realtime {\n\tlimits {\n\t\trate_limit_close never\n\t}\n}",
			wantErr: "bad rate_limit_close value 'never': want an integer",
		},
		{
			name:    "a zero rate_limit_close is rejected",
			input:   "realtime {\n\tlimits {\n\t\trate_limit_close 0\n\t}\n}",
			wantErr: "rate_limit_close must be positive, got '0'",
		},

		// Errors: patterns.
		{
			name:    "replay without a pattern is an argument error",
			input:   "realtime {\n\treplay\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "replay with a block but no pattern is an argument error",
			input:   "realtime {\n\treplay {\n\t\tsize 5\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "replay with two patterns is an argument error",
			input:   "realtime {\n\treplay a b\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a pattern in the system namespace is rejected with the value quoted",
			input:   "realtime {\n\treplay __presence:*\n}",
			wantErr: "bad replay pattern '__presence:*'",
		},
		{
			name:    "an empty pattern is rejected",
			input:   "realtime {\n\tpresence \"\"\n}",
			wantErr: "bad presence pattern ''",
		},
		{
			name:    "a pattern with a double quote is rejected",
			input:   "realtime {\n\tcursor `a\"b`\n}",
			wantErr: "bad cursor pattern 'a\"b'",
		},
		{
			name:    "a pattern with a backslash is rejected",
			input:   "realtime {\n\treplay `a\\b`\n}",
			wantErr: "bad replay pattern 'a\\b'",
		},
		{
			name:    "a pattern with a non-ASCII character is rejected",
			input:   "realtime {\n\treplay café:*\n}",
			wantErr: "bad replay pattern 'café:*'",
		},
		{
			name:    "a pattern with a control character is rejected",
			input:   "realtime {\n\tpresence \"a\tb\"\n}",
			wantErr: "bad presence pattern 'a\tb'",
		},
		{
			name:    "a repeated replay pattern is rejected",
			input:   "realtime {\n\treplay chat:*\n\treplay chat:* {\n\t\tsize 5\n\t}\n}",
			wantErr: "replay pattern 'chat:*' already declared",
		},
		{
			name:    "a repeated presence pattern is rejected",
			input:   "realtime {\n\tpresence room:*\n\tpresence room:*\n}",
			wantErr: "presence pattern 'room:*' already declared",
		},
		{
			name:    "a repeated cursor pattern is rejected",
			input:   "realtime {\n\tcursor doc:*\n\tcursor doc:*\n}",
			wantErr: "cursor pattern 'doc:*' already declared",
		},
		{
			name:    "the same pattern in replay and presence is allowed but a repeat within one is not",
			input:   "realtime {\n\treplay a\n\tpresence a\n\tcursor a\n\tpresence a\n}",
			wantErr: "presence pattern 'a' already declared, at Testfile:5",
		},

		// Errors: replay.
		{
			name:    "an unknown replay store is rejected listing the accepted ones",
			input:   "realtime {\n\treplay a {\n\t\tstore sqlite\n\t}\n}",
			wantErr: "unknown replay store 'sqlite': want memory, redis or postgres",
		},
		{
			name:    "store without a value is an argument error",
			input:   "realtime {\n\treplay a {\n\t\tstore\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a zero replay size is rejected",
			input:   "realtime {\n\treplay a {\n\t\tsize 0\n\t}\n}",
			wantErr: "size must be positive, got '0'",
		},
		{
			name:    "a non-integer replay size is rejected",
			input:   "realtime {\n\treplay a {\n\t\tsize 1k\n\t}\n}",
			wantErr: "bad size value '1k': want an integer",
		},
		{
			name:    "a zero replay ttl is rejected",
			input:   "realtime {\n\treplay a {\n\t\tttl 0s\n\t}\n}",
			wantErr: "ttl must be positive, got '0s'",
		},
		{
			name:    "a bad truncation_notice is rejected with the value quoted",
			input:   "realtime {\n\treplay a {\n\t\ttruncation_notice yes\n\t}\n}",
			wantErr: "bad truncation_notice value 'yes': want on or off",
		},
		{
			name:    "an unknown replay subdirective is named",
			input:   "realtime {\n\treplay a {\n\t\tcompress on\n\t}\n}",
			wantErr: "unrecognized replay subdirective: compress",
		},
		{
			name:    "a repeated replay option is rejected",
			input:   "realtime {\n\treplay a {\n\t\tsize 1\n\t\tsize 2\n\t}\n}",
			wantErr: "size already specified",
		},

		// Errors: presence.
		{
			name:    "presence key without a value is an argument error",
			input:   "realtime {\n\tpresence a {\n\t\tkey\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "presence select without fields is an argument error",
			input:   "realtime {\n\tpresence a {\n\t\tselect\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a bad heartbeat is rejected with the value quoted",
			input:   "realtime {\n\tpresence a {\n\t\theartbeat never\n\t}\n}",
			wantErr: "bad duration value 'never' for heartbeat",
		},
		{
			name:    "a zero heartbeat is rejected in favour of off",
			input:   "realtime {\n\tpresence a {\n\t\theartbeat 0s\n\t}\n}",
			wantErr: "heartbeat must be positive, got '0s'",
		},
		{
			name:    "a negative presence ttl is rejected",
			input:   "realtime {\n\tpresence a {\n\t\tttl -1s\n\t}\n}",
			wantErr: "ttl must be positive, got '-1s'",
		},
		{
			name:    "an unknown presence subdirective is named",
			input:   "realtime {\n\tpresence a {\n\t\tmax_members 5\n\t}\n}",
			wantErr: "unrecognized presence subdirective: max_members",
		},
		{
			name:    "a repeated presence option is rejected",
			input:   "realtime {\n\tpresence a {\n\t\tkey id\n\t\tkey sub\n\t}\n}",
			wantErr: "key already specified",
		},

		// Errors: cursor.
		{
			name:    "topic_throttle below 16ms is rejected",
			input:   "realtime {\n\tcursor a {\n\t\ttopic_throttle 10ms\n\t}\n}",
			wantErr: "topic_throttle must be at least 16ms, got '10ms'",
		},
		{
			name:    "a zero topic_throttle is rejected",
			input:   "realtime {\n\tcursor a {\n\t\ttopic_throttle 0\n\t}\n}",
			wantErr: "topic_throttle must be positive, got '0'",
		},
		{
			name:    "topic_throttle does not take off",
			input:   "realtime {\n\tcursor a {\n\t\ttopic_throttle off\n\t}\n}",
			wantErr: "bad duration value 'off' for topic_throttle",
		},
		{
			name:    "a bad throttle is rejected with the value quoted",
			input:   "realtime {\n\tcursor a {\n\t\tthrottle fast\n\t}\n}",
			wantErr: "bad duration value 'fast' for throttle",
		},
		{
			name:    "a zero throttle is rejected in favour of off",
			input:   "realtime {\n\tcursor a {\n\t\tthrottle 0\n\t}\n}",
			wantErr: "throttle must be positive, got '0'",
		},
		{
			name:    "a zero cursor ttl is rejected",
			input:   "realtime {\n\tcursor a {\n\t\tttl 0\n\t}\n}",
			wantErr: "ttl must be positive, got '0'",
		},
		{
			name:    "cursor select without fields is an argument error",
			input:   "realtime {\n\tcursor a {\n\t\tselect\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a bad max_data is rejected with the value quoted",
			input:   "realtime {\n\tcursor a {\n\t\tmax_data huge\n\t}\n}",
			wantErr: "bad size value 'huge' for max_data",
		},
		{
			name:    "a zero max_data is rejected",
			input:   "realtime {\n\tcursor a {\n\t\tmax_data 0\n\t}\n}",
			wantErr: "max_data must be positive, got '0'",
		},
		{
			name:    "an unknown cursor subdirective is named",
			input:   "realtime {\n\tcursor a {\n\t\tkey id\n\t}\n}",
			wantErr: "unrecognized cursor subdirective: key",
		},
		{
			name:    "a repeated cursor option is rejected",
			input:   "realtime {\n\tcursor a {\n\t\tthrottle 20ms\n\t\tthrottle off\n\t}\n}",
			wantErr: "throttle already specified",
		},

		// Errors: group.
		{
			name:    "group without a name is an argument error",
			input:   "realtime {\n\tgroup\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "group with two names is an argument error",
			input:   "realtime {\n\tgroup a b\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a group name in the system namespace is rejected with the value quoted",
			input:   "realtime {\n\tgroup __admins\n}",
			wantErr: "bad group name '__admins'",
		},
		{
			name:    "a group name with a space is rejected",
			input:   "realtime {\n\tgroup \"main lobby\"\n}",
			wantErr: "bad group name 'main lobby'",
		},
		{
			name:    "an empty group name is rejected",
			input:   "realtime {\n\tgroup \"\"\n}",
			wantErr: "bad group name ''",
		},
		{
			name:    "a group name with a double quote is rejected",
			input:   "realtime {\n\tgroup `a\"b`\n}",
			wantErr: "bad group name 'a\"b'",
		},
		{
			name:    "a group name longer than a topic is rejected",
			input:   "realtime {\n\tgroup " + strings.Repeat("g", 257) + "\n}",
			wantErr: "bad group name 'ggg",
		},
		{
			name:    "a repeated group name is rejected",
			input:   "realtime {\n\tgroup lobby\n\tgroup lobby {\n\t\tmax_members 5\n\t}\n}",
			wantErr: "group 'lobby' already declared, at Testfile:3",
		},
		{
			name:    "a zero max_members is rejected",
			input:   "realtime {\n\tgroup g {\n\t\tmax_members 0\n\t}\n}",
			wantErr: "max_members must be positive, got '0'",
		},
		{
			name:    "meta with one argument is an argument error",
			input:   "realtime {\n\tgroup g {\n\t\tmeta theme\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "meta with three arguments is an argument error",
			input:   "realtime {\n\tgroup g {\n\t\tmeta theme dark blue\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a repeated meta key is rejected with the key quoted",
			input:   "realtime {\n\tgroup g {\n\t\tmeta theme dark\n\t\tmeta theme light\n\t}\n}",
			wantErr: "meta key 'theme' already declared, at Testfile:4",
		},
		{
			name:    "an empty meta key is rejected",
			input:   "realtime {\n\tgroup g {\n\t\tmeta \"\" x\n\t}\n}",
			wantErr: "meta key must not be empty",
		},
		{
			name:    "a block after meta is rejected",
			input:   "realtime {\n\tgroup g {\n\t\tmeta a b {\n\t\t\tx\n\t\t}\n\t}\n}",
			wantErr: "meta does not take a block",
		},
		{
			name:    "a zero member_ttl is rejected",
			input:   "realtime {\n\tgroup g {\n\t\tmember_ttl 0s\n\t}\n}",
			wantErr: "member_ttl must be positive, got '0s'",
		},
		{
			name:    "role_from without a value is an argument error",
			input:   "realtime {\n\tgroup g {\n\t\trole_from\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "join_on without patterns is an argument error",
			input:   "realtime {\n\tgroup g {\n\t\tjoin_on\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a bad join_on pattern is rejected with the value quoted",
			input:   "realtime {\n\tgroup g {\n\t\tjoin_on room:* __group:g\n\t}\n}",
			wantErr: "bad join_on pattern '__group:g'",
		},
		{
			name:    "an unknown group subdirective is named",
			input:   "realtime {\n\tgroup g {\n\t\tclosed\n\t}\n}",
			wantErr: "unrecognized group subdirective: closed",
		},
		{
			name:    "a repeated group option other than meta is rejected",
			input:   "realtime {\n\tgroup g {\n\t\trole_from role\n\t\trole_from kind\n\t}\n}",
			wantErr: "role_from already specified",
		},

		// Errors: rate_limit.
		{
			name:    "rate_limit without a block is rejected",
			input:   "realtime {\n\trate_limit\n}",
			wantErr: "rate_limit requires a block",
		},
		{
			name:    "rate_limit with an argument is an argument error",
			input:   "realtime {\n\trate_limit 10\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a repeated rate_limit is rejected",
			input:   "realtime {\n\trate_limit {\n\t\tpoints 1\n\t}\n\trate_limit {\n\t\tpoints 2\n\t}\n}",
			wantErr: "rate_limit already specified",
		},
		{
			name:    "a zero points is rejected",
			input:   "realtime {\n\trate_limit {\n\t\tpoints 0\n\t}\n}",
			wantErr: "points must be positive, got '0'",
		},
		{
			name:    "a non-integer points is rejected",
			input:   "realtime {\n\trate_limit {\n\t\tpoints ten\n\t}\n}",
			wantErr: "bad points value 'ten': want an integer",
		},
		{
			name:    "a zero interval is rejected",
			input:   "realtime {\n\trate_limit {\n\t\tinterval 0s\n\t}\n}",
			wantErr: "interval must be positive, got '0s'",
		},
		{
			name:    "a bad block duration is rejected",
			input:   "realtime {\n\trate_limit {\n\t\tblock forever\n\t}\n}",
			wantErr: "bad duration value 'forever' for block",
		},
		{
			name:    "rate_limit key without a value is an argument error",
			input:   "realtime {\n\trate_limit {\n\t\tkey\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an unknown rate_limit action is rejected with the value quoted",
			input:   "realtime {\n\trate_limit {\n\t\taction ban\n\t}\n}",
			wantErr: "unknown rate_limit action 'ban': want drop or close",
		},
		{
			name:  "rate_limit on_error takes allow or deny",
			input: "realtime {\n\trate_limit {\n\t\ton_error deny\n\t}\n}",
			want:  Handler{RateLimit: &RateLimitConfig{OnError: "deny"}},
		},
		{
			name:    "an unknown rate_limit on_error policy is rejected with the value quoted",
			input:   "realtime {\n\trate_limit {\n\t\ton_error maybe\n\t}\n}",
			wantErr: "unknown rate_limit on_error policy 'maybe': want allow or deny",
		},
		{
			name:    "subscribes with an argument is an argument error",
			input:   "realtime {\n\trate_limit {\n\t\tsubscribes true\n\t}\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an unknown rate_limit subdirective is named",
			input:   "realtime {\n\trate_limit {\n\t\tburst 5\n\t}\n}",
			wantErr: "unrecognized rate_limit subdirective: burst",
		},
		{
			name:    "a repeated rate_limit option is rejected",
			input:   "realtime {\n\trate_limit {\n\t\taction drop\n\t\taction close\n\t}\n}",
			wantErr: "action already specified",
		},

		// Errors: events_hook.
		{
			name:    "events_hook without a url is an argument error",
			input:   "realtime {\n\tevents_hook\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an events_hook url with another scheme is rejected with the value quoted",
			input:   "realtime {\n\tevents_hook ws://app/events\n}",
			wantErr: "bad events_hook url 'ws://app/events'",
		},
		{
			name:    "an events_hook url without a host is rejected",
			input:   "realtime {\n\tevents_hook /ws/events\n}",
			wantErr: "bad events_hook url '/ws/events'",
		},
		{
			name:    "a repeated events_hook is rejected",
			input:   "realtime {\n\tevents_hook http://a/x\n\tevents_hook http://b/x\n}",
			wantErr: "events_hook already specified",
		},
		{
			name:    "headers in events_hook is rejected",
			input:   "realtime {\n\tevents_hook http://a/x {\n\t\theaders X-A\n\t}\n}",
			wantErr: "headers is only valid in auth, not in events_hook",
		},
		{
			name:    "queue in events_hook is rejected",
			input:   "realtime {\n\tevents_hook http://a/x {\n\t\tqueue 8\n\t}\n}",
			wantErr: "queue is only valid in message_hook, not in events_hook",
		},
		{
			name:    "an unknown events_hook subdirective is named",
			input:   "realtime {\n\tevents_hook http://a/x {\n\t\tretries 3\n\t}\n}",
			wantErr: "unrecognized events_hook subdirective: retries",
		},
		{
			name:    "a zero events_hook max_in_flight is rejected",
			input:   "realtime {\n\tevents_hook http://a/x {\n\t\tmax_in_flight 0\n\t}\n}",
			wantErr: "max_in_flight must be positive, got '0'",
		},

		// notify.
		{
			name:  "a bare notify sets only the channel so Provision picks the mode",
			input: "realtime {\n\tnotify todos\n}",
			want:  Handler{Notify: []NotifyConfig{{Channel: "todos"}}},
		},
		{
			name: "notify takes every option and may repeat for another channel",
			input: "realtime {\n\tnotify table_changes {\n\t\tmode leader\n\t\ttopic_field table\n\t\tevent_field op\n\t\tdata_field row\n" +
				"\t\tpoll_interval 500ms\n\t\tresync todos:sync\n\t}\n\tnotify Other_2 {\n\t\tmode all\n\t}\n}",
			want: Handler{Notify: []NotifyConfig{
				{Channel: "table_changes", Mode: "leader", TopicField: "table", EventField: "op", DataField: "row",
					PollInterval: caddy.Duration(500 * time.Millisecond), Resync: "todos:sync"},
				{Channel: "Other_2", Mode: "all"},
			}},
		},
		{
			name:    "notify without a channel is an argument error",
			input:   "realtime {\n\tnotify\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a notify channel that is not an identifier is rejected",
			input:   "realtime {\n\tnotify todo-changes\n}",
			wantErr: "bad notify channel 'todo-changes': want letters, digits and '_'",
		},
		{
			name:    "a notify channel starting with a digit is rejected",
			input:   "realtime {\n\tnotify 1chan\n}",
			wantErr: "bad notify channel '1chan'",
		},
		{
			name:    "a repeated notify channel is rejected",
			input:   "realtime {\n\tnotify c\n\tnotify c {\n\t\tmode all\n\t}\n}",
			wantErr: "notify channel 'c' already declared",
		},
		{
			name:    "an unknown notify mode is rejected listing the accepted ones",
			input:   "realtime {\n\tnotify c {\n\t\tmode some\n\t}\n}",
			wantErr: "unknown notify mode 'some': want all or leader",
		},
		{
			name:    "a repeated notify option is rejected",
			input:   "realtime {\n\tnotify c {\n\t\tmode all\n\t\tmode leader\n\t}\n}",
			wantErr: "mode already specified",
		},
		{
			name:    "a zero poll_interval is rejected",
			input:   "realtime {\n\tnotify c {\n\t\tpoll_interval 0s\n\t}\n}",
			wantErr: "poll_interval must be positive, got '0s'",
		},
		{
			name:    "a system resync topic is rejected",
			input:   "realtime {\n\tnotify c {\n\t\tresync __realtime\n\t}\n}",
			wantErr: "bad resync topic '__realtime': want a topic not starting with __",
		},
		{
			name:    "an empty topic_field is rejected",
			input:   "realtime {\n\tnotify c {\n\t\ttopic_field \"\"\n\t}\n}",
			wantErr: "topic_field must not be empty",
		},
		{
			name:    "an unknown notify subdirective is named",
			input:   "realtime {\n\tnotify c {\n\t\tqueue 5\n\t}\n}",
			wantErr: "unrecognized notify subdirective: queue",
		},

		// Errors say where and what to write.
		{
			name:    "replay without a pattern says what to write",
			input:   "realtime {\n\treplay\n}",
			wantErr: "replay wants a topic pattern, like: replay chat:*, at Testfile:2",
		},
		{
			name:  "sse takes a path",
			input: "realtime {\n\tsse /events\n}",
			want:  Handler{SSE: &SSEConfig{Path: "/events"}},
		},
		{
			name:  "sse takes a keepalive in its block",
			input: "realtime {\n\tsse /events {\n\t\tkeepalive 15s\n\t}\n}",
			want:  Handler{SSE: &SSEConfig{Path: "/events", KeepAlive: caddy.Duration(15 * time.Second)}},
		},
		{
			name:    "sse without a path says what to write",
			input:   "realtime {\n\tsse\n}",
			wantErr: "sse wants a path, like: sse /events, at Testfile:2",
		},
		{
			name:    "an sse path must start with a slash",
			input:   "realtime {\n\tsse events\n}",
			wantErr: "sse path must start with '/', got 'events', at Testfile:2",
		},
		{
			name:    "an sse keepalive out of range is refused",
			input:   "realtime {\n\tsse /events {\n\t\tkeepalive 1s\n\t}\n}",
			wantErr: "sse keepalive must be between 5s and 120s, got '1s', at Testfile:3",
		},
		{
			name:    "an unknown sse subdirective is named",
			input:   "realtime {\n\tsse /events {\n\t\tretry 3s\n\t}\n}",
			wantErr: "unrecognized sse subdirective: retry",
		},
		{
			name:    "sse may not repeat",
			input:   "realtime {\n\tsse /a\n\tsse /b\n}",
			wantErr: "sse already specified",
		},
		{
			name:    "api without a path says what to write",
			input:   "realtime {\n\tapi\n}",
			wantErr: "api wants a path prefix, like: api /_realtime, at Testfile:2",
		},
		{
			name:    "a duration in words says what to write",
			input:   "realtime {\n\treplay a {\n\t\tttl 10 minutes\n\t}\n}",
			wantErr: "ttl wants one duration like 10m",
		},
		{
			name:    "a bad duration says what to write",
			input:   "realtime {\n\treplay a {\n\t\tttl tenminutes\n\t}\n}",
			wantErr: "ttl wants a duration like 10m, at Testfile:3",
		},
		{
			name:    "an error found by a handlers check carries the Caddyfile's line",
			input:   "realtime {\n\tpath /ws\n\n\torigins https://app.example/path\n}",
			wantErr: "bad origin 'https://app.example/path': want same-origin, * or scheme://host[:port], at Testfile:4",
		},
		{
			name:    "an enumeration error carries the Caddyfile's line",
			input:   "realtime {\n\trate_limit {\n\t\tpoints 5\n\t\taction ban\n\t}\n}",
			wantErr: "unknown rate_limit action 'ban': want drop or close, at Testfile:4",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			checkUnmarshal(t, err, tc.wantErr, got, tc.want)
		})
	}
}

func TestAppUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    App
		wantErr string
	}{
		{
			name:  "a bare option sets nothing so Provision generates the instance id",
			input: `realtime`,
			want:  App{},
		},
		{
			name:  "instance_id is taken as written",
			input: "realtime {\n\tinstance_id gw-1\n}",
			want:  App{InstanceID: "gw-1"},
		},
		{
			name:    "an inline argument is an argument error",
			input:   `realtime gw-1`,
			wantErr: "wrong argument count",
		},
		{
			name:    "instance_id without a value is an argument error",
			input:   "realtime {\n\tinstance_id\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "a repeated instance_id is rejected",
			input:   "realtime {\n\tinstance_id a\n\tinstance_id b\n}",
			wantErr: "instance_id already specified",
		},
		{
			name:    "an unknown subdirective is named",
			input:   "realtime {\n\tcluster on\n}",
			wantErr: "unrecognized subdirective: cluster",
		},
		{
			name: "redis takes a url and every option",
			input: "realtime {\n\tredis redis://h:6379/1 {\n\t\tkey_prefix p:\n\t\tusername u\n\t\tpassword {env.P}\n" +
				"\t\tdb 2\n\t\ttls\n\t\tclient_name c\n\t\tchannel ch\n\t}\n}",
			want: App{Redis: &RedisConfig{URL: "redis://h:6379/1", KeyPrefix: "p:", Username: "u", Password: "{env.P}",
				DB: intPtr(2), TLS: true, ClientName: "c", Channel: "ch"}},
		},
		{
			name:    "a redis url of another scheme is rejected without echoing it",
			input:   "realtime {\n\tredis http://user:secret@h\n}",
			wantErr: "redis url must start with redis://",
		},
		{
			name: "redis takes a sentinel url and the sentinels' credentials",
			input: "realtime {\n\tredis sentinel://:pw@s1:26379,s2/mymaster?db=1 {\n\t\tsentinel_username su\n" +
				"\t\tsentinel_password {env.SP}\n\t}\n}",
			want: App{Redis: &RedisConfig{URL: "sentinel://:pw@s1:26379,s2/mymaster?db=1", SentinelUsername: "su", SentinelPassword: "{env.SP}"}},
		},
		{
			name:    "a sentinel url without a master name is rejected without echoing it",
			input:   "realtime {\n\tredis sentinel://:secret@s1:26379\n}",
			wantErr: "sentinel url needs the master set name",
		},
		{
			name:    "an unknown redis option is named",
			input:   "realtime {\n\tredis redis://h {\n\t\tpool 3\n\t}\n}",
			wantErr: "unrecognized redis subdirective: pool",
		},
		{
			name:    "a repeated redis option is rejected",
			input:   "realtime {\n\tredis redis://h {\n\t\tdb 1\n\t\tdb 2\n\t}\n}",
			wantErr: "db already specified",
		},
		{
			name:  "postgres without a block sets only the dsn",
			input: "realtime {\n\tpostgres postgres://u:secret@h/db\n}",
			want:  App{Postgres: &PostgresConfig{DSN: "postgres://u:secret@h/db"}},
		},
		{
			name:  "postgres takes notify_dsn and pool bounds",
			input: "realtime {\n\tpostgres {env.PG} {\n\t\tnotify_dsn postgres://h:5432/db\n\t\tmax_conns 20\n\t\tmin_conns 0\n\t}\n}",
			want:  App{Postgres: &PostgresConfig{DSN: "{env.PG}", NotifyDSN: "postgres://h:5432/db", MaxConns: 20}},
		},
		{
			name:    "postgres without a dsn is an argument error",
			input:   "realtime {\n\tpostgres\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "an unknown postgres option is named",
			input:   "realtime {\n\tpostgres postgres://h/db {\n\t\tpool 3\n\t}\n}",
			wantErr: "unrecognized postgres subdirective: pool",
		},
		{
			name:    "a zero max_conns is rejected",
			input:   "realtime {\n\tpostgres postgres://h/db {\n\t\tmax_conns 0\n\t}\n}",
			wantErr: "max_conns must be positive, got '0'",
		},
		{
			name:    "a negative min_conns is rejected",
			input:   "realtime {\n\tpostgres postgres://h/db {\n\t\tmin_conns -1\n\t}\n}",
			wantErr: "min_conns must not be negative, got '-1'",
		},
		{
			name:    "a repeated postgres option is rejected without quoting the dsn",
			input:   "realtime {\n\tpostgres postgres://u:secret@h/db {\n\t\tnotify_dsn postgres://u:secret@a/db\n\t\tnotify_dsn postgres://u:secret@b/db\n\t}\n}",
			wantErr: "notify_dsn already specified",
		},
		{
			name:    "notify_dsn with two values is an argument error",
			input:   "realtime {\n\tpostgres postgres://h/db {\n\t\tnotify_dsn a b\n\t}\n}",
			wantErr: "wrong argument count",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got App
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			checkUnmarshal(t, err, tc.wantErr, got, tc.want)
		})
	}
}

func TestParseGlobalOptionCaddyfile(t *testing.T) {
	t.Run("the option becomes the realtime app with only what was written", func(t *testing.T) {
		v, err := parseGlobalOption(caddyfile.NewTestDispenser("realtime {\n\tinstance_id gw-1\n}"), nil)
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		app, ok := v.(httpcaddyfile.App)
		if !ok {
			t.Fatalf("got %T, want httpcaddyfile.App", v)
		}
		if app.Name != "realtime" {
			t.Errorf("app name = %q, want realtime", app.Name)
		}
		if got, want := string(app.Value), "{\"instance_id\":\"gw-1\"}"; got != want {
			t.Errorf("app value = %s, want %s", got, want)
		}
	})
	t.Run("a second realtime global option is rejected", func(t *testing.T) {
		_, err := parseGlobalOption(caddyfile.NewTestDispenser(`realtime`), httpcaddyfile.App{Name: "realtime"})
		if err == nil || !strings.Contains(err.Error(), "realtime global option already specified") {
			t.Fatalf("got error %v, want one about a repeated option", err)
		}
	})
	t.Run("an error in the block is returned", func(t *testing.T) {
		_, err := parseGlobalOption(caddyfile.NewTestDispenser("realtime {\n\tbogus\n}"), nil)
		if err == nil || !strings.Contains(err.Error(), "unrecognized subdirective: bogus") {
			t.Fatalf("got error %v, want one naming the subdirective", err)
		}
	})
}

// checkUnmarshal compares an UnmarshalCaddyfile outcome with the table's
// expectation: an error containing wantErr, or exactly want.
func checkUnmarshal(t *testing.T, err error, wantErr string, got, want any) {
	t.Helper()
	if wantErr != "" {
		if err == nil {
			t.Fatalf("got no error, want one containing %q", wantErr)
		}
		if !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("got error %q, want one containing %q", err, wantErr)
		}
		if !strings.Contains(err.Error(), ", at Testfile:") {
			t.Errorf("error %q does not name the line", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("got  %s\nwant %s", g, w)
	}
}

func intPtr(n int) *int { return &n }
