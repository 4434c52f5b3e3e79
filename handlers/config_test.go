package handlers

import (
	"strings"
	"testing"
	"time"
)

// slowConsumer is the policy a test table's dropSlow column stands for.
func slowConsumer(drop bool) SlowConsumer {
	if drop {
		return SlowConsumerDrop
	}
	return SlowConsumerClose
}

// Defaults apply once: a second WithDefaults, as the embedder and New
// each run one, changes nothing, so an explicit "off" stays off.
func TestConfigWithDefaultsIsIdempotent(t *testing.T) {
	cfg := Config{
		ShutdownSpread: -1,
		Presence:       []PresenceConfig{{Topics: "room:*", Heartbeat: -1}},
		Cursors:        []CursorConfig{{Topics: "doc:*", Throttle: -1}},
		APIPath:        "/_realtime/",
	}
	once := cfg.WithDefaults()
	twice := once.WithDefaults()
	if once.ShutdownSpread > 0 || twice.ShutdownSpread > 0 {
		t.Fatalf("ShutdownSpread %s then %s, want no spread", once.ShutdownSpread, twice.ShutdownSpread)
	}
	if twice.Presence[0].Heartbeat >= 0 || twice.Cursors[0].Throttle >= 0 {
		t.Fatalf("presence heartbeat %s, cursor throttle %s after two passes, want both off", twice.Presence[0].Heartbeat, twice.Cursors[0].Throttle)
	}
	if twice.APIPath != "/_realtime" {
		t.Fatalf("APIPath %q, want /_realtime", twice.APIPath)
	}
	if cfg.Presence[0].Key != "" {
		t.Fatal("WithDefaults changed the caller's presence rule")
	}
	if unset := (Config{}).WithDefaults().WithDefaults(); unset.ShutdownSpread != DefaultShutdownSpread {
		t.Fatalf("unset ShutdownSpread became %s, want %s", unset.ShutdownSpread, DefaultShutdownSpread)
	}
}

// The stop plan of a gateway configured without a spread holds no spread:
// its shutdown budget is the close handshake's alone.
func TestGatewayWithoutSpreadBudgetsNoSpread(t *testing.T) {
	with, without := testConfig(), testConfig()
	with.ShutdownSpread = 0
	without.ShutdownSpread = -1
	gw, err := New(with, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close(t.Context())
	g, err := New(without, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close(t.Context())
	if diff := gw.ShutdownBudget() - g.ShutdownBudget(); diff < DefaultShutdownSpread-time.Millisecond {
		t.Fatalf("budget with the default spread %s, without %s: want %s apart", gw.ShutdownBudget(), g.ShutdownBudget(), DefaultShutdownSpread)
	}
}

// JSON configs go through the same checks as the Caddyfile: an origin
// with a path or user info never matches a browser's Origin header.
func TestConfigValidateRefusesOriginsThatNeverMatch(t *testing.T) {
	for _, o := range []string{"https://app.example/path", "https://app.example/", "https://user@app.example", "https://app.example?q", "https://app.example#f", "app.example"} {
		cfg := testConfig()
		cfg.Origins = []string{o}
		err := cfg.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), "bad origin '"+o+"'") {
			t.Errorf("origin %q: Validate = %v, want a bad origin error", o, err)
		}
	}
	for _, o := range []string{"https://app.example", "http://localhost:5173"} {
		cfg := testConfig()
		cfg.Origins = []string{o}
		if err := cfg.WithDefaults().Validate(); err != nil {
			t.Errorf("origin %q: Validate = %v, want nil", o, err)
		}
	}
}

// Enumerations refuse unknown values and say what to write.
func TestConfigValidateEnumerations(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"unknown slow_consumer policy 'block': want close or drop": func(c *Config) { c.SlowConsumer = "block" },
		"unknown replay store 'sqlite': want memory, redis or postgres": func(c *Config) {
			c.Replay = []ReplayConfig{{Topics: "a", Store: "sqlite"}}
		},
		"unknown rate_limit action 'ban': want drop or close": func(c *Config) { c.RateLimit = &RateLimitConfig{Action: "ban"} },
		"unknown rate_limit on_error policy 'x': want allow or deny": func(c *Config) {
			c.RateLimit = &RateLimitConfig{OnError: "x"}
		},
		"unknown notify mode 'one': want all or leader": func(c *Config) {
			c.Notify = []NotifyConfig{{Channel: "ch", Mode: "one"}}
		},
	} {
		cfg := testConfig()
		mutate(&cfg)
		if err := cfg.WithDefaults().Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Validate = %v, want %q", err, name)
		}
	}
}

func TestConfigValidateDashboard(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"a dashboard beside the api is accepted", Config{APIPath: "/_realtime", DashboardPath: "/_dashboard"}, ""},
		{"a trailing slash is ignored", Config{DashboardPath: "/_dashboard/", DashboardAuth: DashboardAuthExternal}, ""},
		{"a relative path is refused", Config{DashboardPath: "_dashboard"}, "dashboard path must start with '/'"},
		{"the root would cover the websocket path", Config{DashboardPath: "/"}, "overlaps the websocket path"},
		{"a dashboard over the websocket path is refused", Config{Path: "/rt/ws", DashboardPath: "/rt"}, "overlaps the websocket path"},
		{"a dashboard inside the api is refused", Config{APIPath: "/_realtime", DashboardPath: "/_realtime/dash"}, `dashboard path "/_realtime/dash" overlaps the api path "/_realtime"`},
		{"an api inside the dashboard is refused", Config{APIPath: "/ops/api", DashboardPath: "/ops"}, "overlaps the api path"},
		{"an auth path inside the dashboard is refused", Config{AuthPath: "/ops/auth", DashboardPath: "/ops"}, "lies under the dashboard path"},
		{"an unknown auth policy is refused", Config{DashboardPath: "/ops", DashboardAuth: "open"}, "unknown dashboard auth 'open': want key or external"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.WithDefaults().Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	if got := (Config{DashboardPath: "/ops/"}).WithDefaults(); got.DashboardPath != "/ops" || got.DashboardAuth != DashboardAuthKey {
		t.Fatalf("defaults: path %q auth %q, want /ops and key", got.DashboardPath, got.DashboardAuth)
	}
}
