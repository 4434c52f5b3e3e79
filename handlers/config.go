package handlers

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Config configures a Gateway. The zero value of every field means its
// documented default (see WithDefaults); the root package maps Caddy's JSON
// onto it field for field.
type Config struct {
	Name string // identity across reloads; default: Path
	Path string // WebSocket endpoint; default /ws

	APIPath    string // HTTP API prefix; empty: API off
	APIKey     string // bearer key; empty: loopback callers only
	APIMaxBody int64  // default 4 MiB

	Origins []string // default ["same-origin"]

	Auth          *HookConfig
	SubscribeHook *HookConfig
	MessageHook   *HookConfig

	Public              []string // topic patterns allowed without the subscribe hook
	UserKey             string   // identity field naming a user; default "id"
	AllowNonASCIITopics bool

	KeepAlive      time.Duration // default 60s, 5s..120s
	PingInterval   time.Duration // default 30s
	IdleTimeout    time.Duration // default 120s
	WriteTimeout   time.Duration // default 10s
	RequestTimeout time.Duration // default 5s
	ShutdownSpread time.Duration // default 5s; negative: 0

	MaxPayload       int64 // default 1 MiB
	MaxBackpressure  int64 // default 1 MiB
	DropSlow         bool  // slow consumer policy "drop" instead of "close"
	UpgradeRate      int   // per IP per UpgradeWindow; default 30; -1 off
	UpgradeWindow    time.Duration
	MaxConnections   int // 0: unlimited
	MaxSubscriptions int // default 1000
	InboundRate      int // frames/s; default 200; -1 off
	InboundBurst     int // default 400
	RateLimitClose   int // drops within 10s before 4429; default 1000; -1 never

	Replay     []ReplayConfig
	Presence   []PresenceConfig
	Cursors    []CursorConfig
	Groups     []GroupConfig
	RateLimit  *RateLimitConfig
	EventsHook *HookConfig
	Notify     []NotifyConfig

	// ClientIP returns the client address of a request as the server
	// resolves it (Caddy: honouring trusted proxies). Default: the host of
	// r.RemoteAddr.
	ClientIP func(r *http.Request) string

	// TrustedProxy reports whether the request came through a trusted
	// proxy, whose X-Forwarded-For the auth hook may see. Default: never.
	TrustedProxy func(r *http.Request) bool

	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

// HookConfig configures one HTTP call to the application.
type HookConfig struct {
	URL         string
	Timeout     time.Duration // default 10s for auth, 5s otherwise
	Headers     []string      // auth only: extra headers to forward
	MaxInFlight int           // default 1000 for auth, 256 otherwise
	Queue       int           // message hook only: per-connection queue; default 64
}

// ReplayConfig enables a replay buffer on matching topics (PROTOCOL.md §5).
type ReplayConfig struct {
	Topics           string
	Size             int           // default 1000
	TTL              time.Duration // 0: never
	TruncationNotice bool          // send "truncated" before a partial gap fill

	// NewStore builds the store (Redis, Postgres). Default: memory.
	NewStore func(cfg replay.Config) (replay.Store, error)
}

// PresenceConfig enables presence on matching topics (PROTOCOL.md §6.1).
type PresenceConfig struct {
	Topics    string
	Key       string        // identity field; default "id"
	Select    []string      // nil: identity minus secrets
	Heartbeat time.Duration // default 30s; negative: off
	TTL       time.Duration // default 90s
}

// CursorConfig enables cursors on matching topics (PROTOCOL.md §6.2).
type CursorConfig struct {
	Topics        string
	Throttle      time.Duration // per connection; default 16ms; negative: off
	TopicThrottle time.Duration // per topic flush; default 50ms, at least 16ms
	TTL           time.Duration // default 30s
	Select        []string
	MaxData       int // default 8192
}

// GroupConfig declares a broadcast group (PROTOCOL.md §6.3).
type GroupConfig struct {
	Name       string
	MaxMembers int    // 0: unlimited
	Meta       []byte // initial meta, a JSON object
	MemberTTL  time.Duration
	RoleFrom   string
	JoinOn     []string
}

// RateLimitConfig limits application frames per key.
type RateLimitConfig struct {
	Points     int           // default 10
	Interval   time.Duration // default 1s
	Block      time.Duration
	Key        string // ip | connection | user | <identity field>; default ip
	Close      bool   // action close (4429) instead of drop
	Subscribes bool
	FailClosed bool // limiter backend unreachable: refuse frames instead of allowing them
}

// NotifyConfig bridges one PostgreSQL NOTIFY channel to publishes (see
// notify.go for the two modes).
type NotifyConfig struct {
	Channel    string
	ConnString string // the LISTEN connection's, pgx syntax; required
	// Leader elects one listener per channel across instances (advisory
	// lock); its notifications take the normal publish path (store and
	// bus). Otherwise every instance listens and delivers locally.
	Leader                            bool
	TopicField, EventField, DataField string        // defaults topic, event, data
	PollInterval                      time.Duration // leader lock poll; default 2s
	Resync                            string        // topic told "resync" after a gap; "" none
}

// Defaults of PROTOCOL.md §8.
const (
	DefaultPath             = "/ws"
	DefaultAPIMaxBody       = 4 << 20
	DefaultUserKey          = "id"
	DefaultKeepAlive        = 60 * time.Second
	DefaultPingInterval     = 30 * time.Second
	DefaultIdleTimeout      = 120 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultRequestTimeout   = 5 * time.Second
	DefaultShutdownSpread   = 5 * time.Second
	DefaultMaxPayload       = 1 << 20
	DefaultMaxBackpressure  = 1 << 20
	DefaultUpgradeRate      = 30
	DefaultUpgradeWindow    = 10 * time.Second
	DefaultMaxSubscriptions = 1000
	DefaultInboundRate      = 200
	DefaultInboundBurst     = 400
	DefaultRateLimitClose   = 1000
	DefaultAuthTimeout      = 10 * time.Second
	DefaultHookTimeout      = 5 * time.Second
	DefaultAuthInFlight     = 1000
	DefaultHookInFlight     = 256
	DefaultHookQueue        = 64
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	setStr := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	setDur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	setInt := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setStr(&c.Path, DefaultPath)
	setStr(&c.Name, c.Path)
	setStr(&c.UserKey, DefaultUserKey)
	if c.APIMaxBody == 0 {
		c.APIMaxBody = DefaultAPIMaxBody
	}
	if len(c.Origins) == 0 {
		c.Origins = []string{"same-origin"}
	}
	setDur(&c.KeepAlive, DefaultKeepAlive)
	setDur(&c.PingInterval, DefaultPingInterval)
	setDur(&c.IdleTimeout, DefaultIdleTimeout)
	setDur(&c.WriteTimeout, DefaultWriteTimeout)
	setDur(&c.RequestTimeout, DefaultRequestTimeout)
	switch {
	case c.ShutdownSpread == 0:
		c.ShutdownSpread = DefaultShutdownSpread
	case c.ShutdownSpread < 0:
		c.ShutdownSpread = 0
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxBackpressure == 0 {
		c.MaxBackpressure = DefaultMaxBackpressure
	}
	setInt(&c.UpgradeRate, DefaultUpgradeRate)
	setDur(&c.UpgradeWindow, DefaultUpgradeWindow)
	setInt(&c.MaxSubscriptions, DefaultMaxSubscriptions)
	setInt(&c.InboundRate, DefaultInboundRate)
	setInt(&c.InboundBurst, DefaultInboundBurst)
	setInt(&c.RateLimitClose, DefaultRateLimitClose)
	c.Auth = c.Auth.withDefaults(DefaultAuthTimeout, DefaultAuthInFlight)
	c.SubscribeHook = c.SubscribeHook.withDefaults(DefaultHookTimeout, DefaultHookInFlight)
	c.MessageHook = c.MessageHook.withDefaults(DefaultHookTimeout, DefaultHookInFlight)
	if c.MessageHook != nil && c.MessageHook.Queue == 0 {
		c.MessageHook.Queue = DefaultHookQueue
	}
	c.EventsHook = c.EventsHook.withDefaults(DefaultHookTimeout, DefaultHookInFlight)
	for i := range c.Replay {
		r := &c.Replay[i]
		if r.Size <= 0 {
			r.Size = 1000
		}
	}
	for i := range c.Presence {
		p := &c.Presence[i]
		setStr(&p.Key, "id")
		setDur(&p.Heartbeat, 30*time.Second)
		setDur(&p.TTL, 90*time.Second)
	}
	for i := range c.Cursors {
		cu := &c.Cursors[i]
		setDur(&cu.Throttle, 16*time.Millisecond)
		setDur(&cu.TopicThrottle, 50*time.Millisecond)
		setDur(&cu.TTL, 30*time.Second)
		setInt(&cu.MaxData, 8192)
	}
	for i := range c.Groups {
		setDur(&c.Groups[i].MemberTTL, 120*time.Second)
	}
	if r := c.RateLimit; r != nil {
		rl := *r
		setInt(&rl.Points, 10)
		setDur(&rl.Interval, time.Second)
		setStr(&rl.Key, "ip")
		c.RateLimit = &rl
	}
	if c.ClientIP == nil {
		c.ClientIP = remoteHost
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.TrustedProxy == nil {
		c.TrustedProxy = func(*http.Request) bool { return false }
	}
	return c
}

func (h *HookConfig) withDefaults(timeout time.Duration, inFlight int) *HookConfig {
	if h == nil {
		return nil
	}
	c := *h
	if c.Timeout == 0 {
		c.Timeout = timeout
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = inFlight
	}
	return &c
}

// Validate reports the first invalid option of a config with defaults
// applied, naming the option.
func (c Config) Validate() error {
	if !strings.HasPrefix(c.Path, "/") {
		return fmt.Errorf("path %q must start with /", c.Path)
	}
	if c.APIPath != "" {
		if !strings.HasPrefix(c.APIPath, "/") {
			return fmt.Errorf("api path %q must start with /", c.APIPath)
		}
		if c.APIPath == c.Path || strings.HasPrefix(c.Path, strings.TrimSuffix(c.APIPath, "/")+"/") {
			return fmt.Errorf("api path %q overlaps the websocket path %q", c.APIPath, c.Path)
		}
	}
	if c.KeepAlive < 5*time.Second || c.KeepAlive > 120*time.Second {
		return fmt.Errorf("keepalive %s out of range: must be between 5s and 120s (PROTOCOL.md §2.5)", c.KeepAlive)
	}
	for _, o := range c.Origins {
		if o == "same-origin" || o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("origin %q must be same-origin, * or scheme://host[:port]", o)
		}
	}
	for name, h := range map[string]*HookConfig{"auth": c.Auth, "subscribe_hook": c.SubscribeHook, "message_hook": c.MessageHook} {
		if h == nil {
			continue
		}
		u, err := url.Parse(h.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: url must be an absolute http or https url", name)
		}
		if h.Timeout < 0 || h.MaxInFlight < 0 || h.Queue < 0 {
			return fmt.Errorf("%s: timeout, max_in_flight and queue must not be negative", name)
		}
	}
	for _, p := range c.Public {
		if p == "" || wire.IsSystem(p) {
			return fmt.Errorf("public pattern %q must be a non-empty, non-system topic pattern", p)
		}
	}
	for _, r := range c.Replay {
		if !validPattern(r.Topics) {
			return fmt.Errorf("replay: topic pattern %q must be a non-empty, non-system pattern", r.Topics)
		}
	}
	for _, p := range c.Presence {
		if !validPattern(p.Topics) {
			return fmt.Errorf("presence: topic pattern %q must be a non-empty, non-system pattern", p.Topics)
		}
	}
	for _, cu := range c.Cursors {
		if !validPattern(cu.Topics) {
			return fmt.Errorf("cursor: topic pattern %q must be a non-empty, non-system pattern", cu.Topics)
		}
		if cu.TopicThrottle < 16*time.Millisecond {
			return fmt.Errorf("cursor %q: topic_throttle %s is below 16ms", cu.Topics, cu.TopicThrottle)
		}
	}
	seen := map[string]bool{}
	for _, gr := range c.Groups {
		if !wire.ValidTopic(gr.Name, false) || wire.IsSystem(gr.Name) {
			return fmt.Errorf("group name %q must be a valid, non-system topic name", gr.Name)
		}
		if seen[gr.Name] {
			return fmt.Errorf("group %q declared twice", gr.Name)
		}
		seen[gr.Name] = true
		if gr.MaxMembers < 0 {
			return fmt.Errorf("group %q: max_members must not be negative", gr.Name)
		}
		for _, p := range gr.JoinOn {
			if !validPattern(p) {
				return fmt.Errorf("group %q: join_on pattern %q must be a non-empty, non-system pattern", gr.Name, p)
			}
		}
	}
	channels := map[string]bool{}
	for _, n := range c.Notify {
		if n.Channel == "" || channels[n.Channel] {
			return fmt.Errorf("notify: channel %q is empty or declared twice", n.Channel)
		}
		channels[n.Channel] = true
		if n.Resync != "" && (!wire.ValidTopic(n.Resync, c.AllowNonASCIITopics) || wire.IsSystem(n.Resync)) {
			return fmt.Errorf("notify %q: resync topic %q must be a valid, non-system topic", n.Channel, n.Resync)
		}
		if n.PollInterval < 0 {
			return fmt.Errorf("notify %q: poll_interval must not be negative", n.Channel)
		}
	}
	if c.MaxPayload < 1 {
		return errors.New("max_payload must be positive")
	}
	if c.MaxBackpressure < 1 {
		return errors.New("max_backpressure must be positive")
	}
	if c.MaxSubscriptions < 1 {
		return errors.New("max_subscriptions must be positive")
	}
	if c.MaxConnections < 0 {
		return errors.New("max_connections must not be negative")
	}
	if c.PingInterval <= 0 || c.IdleTimeout <= 0 || c.WriteTimeout <= 0 || c.RequestTimeout <= 0 {
		return errors.New("ping_interval, idle_timeout, write_timeout and request_timeout must be positive")
	}
	if c.PingInterval >= c.IdleTimeout {
		return fmt.Errorf("ping_interval %s must be shorter than idle_timeout %s, or clients answering pings are dropped", c.PingInterval, c.IdleTimeout)
	}
	return nil
}

func remoteHost(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return strings.Trim(r.RemoteAddr, "[]") // no port
}

func validPattern(p string) bool {
	return p != "" && !wire.IsSystem(p) && wire.ValidTopic(p, false)
}
