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
			name:  "api without a block sets only the path",
			input: "realtime {\n\tapi /_realtime\n}",
			want:  Handler{API: &APIConfig{Path: "/_realtime"}},
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
			input:   "realtime {\n\tredis redis://localhost\n}",
			wantErr: "unrecognized subdirective: redis",
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
