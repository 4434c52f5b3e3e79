package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/caddy-realtime/realtime/extensions/cursor"
	"github.com/caddy-realtime/realtime/extensions/groups"
	"github.com/caddy-realtime/realtime/extensions/notify"
	"github.com/caddy-realtime/realtime/extensions/presence"
	"github.com/caddy-realtime/realtime/extensions/ratelimit"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Config configures a Gateway. It is the one place options are checked
// (Validate) and defaulted (WithDefaults); the zero value of every field
// means its documented default. The root package copies Caddy's JSON onto
// it field for field, and its Caddyfile parser calls the exported checks
// below so that both front ends accept exactly the same options.
type Config struct {
	Name string // identity across reloads; default: Path
	Path string // WebSocket endpoint; default /ws

	APIPath    string // HTTP API prefix, trailing slashes ignored; empty: API off
	APIKey     string // bearer key; empty: loopback callers only
	APIMaxBody int64  // default 4 MiB

	// DashboardPath is where the live dashboard is served (dashboard.go),
	// trailing slashes ignored; empty: no dashboard.
	DashboardPath string
	// DashboardAuth is who may open it: DashboardAuthKey (default) asks
	// for APIKey (loopback callers only without one), DashboardAuthExternal
	// leaves the decision to the handlers in front, such as basic_auth.
	DashboardAuth DashboardAuth

	Origins []string // default ["same-origin"]

	Auth *HookConfig
	JWT  *JWTConfig // signed tokens instead of, or before, the auth hook
	// AuthPath is where the gateway answers the current client's auth
	// preflight (§2.2). Default: DefaultAuthPath with JWT, else off;
	// AuthPathOff: off.
	AuthPath      string
	SubscribeHook *HookConfig
	MessageHook   *HookConfig

	Public              []string // topic patterns allowed without the subscribe hook
	UserKey             string   // identity field naming a user; default "id"
	AllowNonASCIITopics bool

	// SSEPath is the SSE endpoint (sse.go, docs/protocol.md §10); empty: off.
	SSEPath string
	// SSEKeepAlive is the quiet period after which an SSE stream gets a
	// keep-alive comment; default 30s, 5s..120s.
	SSEKeepAlive time.Duration

	KeepAlive      time.Duration // default 60s, 5s..120s
	PingInterval   time.Duration // default 30s
	IdleTimeout    time.Duration // default 120s
	WriteTimeout   time.Duration // default 10s
	RequestTimeout time.Duration // default 5s
	ShutdownSpread time.Duration // default 5s; negative: no spread, all closes at once

	// Compression turns on permessage-deflate for clients that offer it;
	// nil: off.
	Compression *CompressionConfig

	MaxPayload       int64        // default 1 MiB
	MaxBackpressure  int64        // default 1 MiB
	SlowConsumer     SlowConsumer // default close
	UpgradeRate      int          // per IP per UpgradeWindow; default 30; -1 off
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

// CompressionConfig configures permessage-deflate (RFC 7692).
type CompressionConfig struct {
	Level   int // flate level 1 (fastest) to 9 (smallest); default DefaultCompressionLevel
	MinSize int // frames shorter than this stay uncompressed; default DefaultCompressionMinSize
}

// HookConfig configures one HTTP call to the application.
type HookConfig struct {
	URL         string
	Timeout     time.Duration // default 10s for auth, 5s otherwise
	Headers     []string      // auth only: extra headers to forward
	MaxInFlight int           // default 1000 for auth, 256 otherwise
	Queue       int           // message hook only: per-connection queue; default 64
}

// ReplayConfig enables a replay buffer on matching topics.
type ReplayConfig struct {
	Topics           string
	Store            ReplayStore   // default memory
	Table            string        // postgres store only; default the store's
	Size             int           // default replay.DefaultSize
	TTL              time.Duration // 0: never
	TruncationNotice bool          // send "truncated" before a partial gap fill

	// NewStore builds the store Store names; the embedder wires it (the
	// root package: Redis, Postgres). Default: memory.
	NewStore func(cfg replay.Config) (replay.Store, error)
}

// PresenceConfig enables presence on matching topics.
type PresenceConfig struct {
	Topics string
	Key    string   // member data field naming a member; default presence.DefaultKey
	Select []string // nil: identity minus secrets
	// Heartbeat is how often members and observers get the heartbeat
	// frame; default presence.DefaultHeartbeat; negative: off.
	Heartbeat time.Duration
	TTL       time.Duration // default presence.DefaultTTL
}

// CursorConfig enables cursors on matching topics.
type CursorConfig struct {
	Topics        string
	Throttle      time.Duration // per connection; default cursor.DefaultThrottle; negative: off
	TopicThrottle time.Duration // per topic flush; default cursor.DefaultTopicThrottle, at least cursor.MinTopicThrottle
	TTL           time.Duration // default cursor.DefaultTTL
	Select        []string
	MaxData       int // default cursor.DefaultMaxData
}

// GroupConfig declares a broadcast group.
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
	Points     int           // default ratelimit.DefaultPoints
	Interval   time.Duration // default ratelimit.DefaultInterval
	Block      time.Duration
	Key        string // ip | connection | user | <identity field>; default ip
	Action     RateLimitAction
	Subscribes bool
	OnError    RateLimitOnError // limiter backend unreachable: allow (default) or deny frames
}

// NotifyConfig bridges one PostgreSQL NOTIFY channel to publishes (see
// notify.go for the two modes).
type NotifyConfig struct {
	Channel    string
	ConnString string // the LISTEN connection's, pgx syntax; required
	// Mode leader elects one listener per channel across instances
	// (advisory lock); its notifications take the normal publish path
	// (store and bus). Mode all (the default) has every instance listen
	// and deliver locally.
	Mode                              NotifyMode
	TopicField, EventField, DataField string        // defaults topic, event, data
	PollInterval                      time.Duration // leader lock poll; default 2s
	Resync                            string        // topic told "resync" after a gap; "" none
}

// SlowConsumer is the policy for a client over MaxBackpressure.
type SlowConsumer string

// Slow consumer policies.
const (
	SlowConsumerClose SlowConsumer = "close" // close it with 1013
	SlowConsumerDrop  SlowConsumer = "drop"  // drop the frame for it and count it
)

// ReplayStore names the backend of a replay buffer.
type ReplayStore string

// Replay stores.
const (
	ReplayStoreMemory   ReplayStore = "memory"
	ReplayStoreRedis    ReplayStore = "redis"
	ReplayStorePostgres ReplayStore = "postgres"
)

// RateLimitAction is what happens to a frame over the rate limit.
type RateLimitAction string

// Rate limit actions.
const (
	RateLimitDrop  RateLimitAction = "drop"  // drop and count it; the client is told nothing
	RateLimitClose RateLimitAction = "close" // close the connection with 4429
)

// RateLimitOnError is the policy while the limiter's backend cannot answer.
type RateLimitOnError string

// Rate limit error policies.
const (
	RateLimitAllow RateLimitOnError = "allow" // fail open: frames pass
	RateLimitDeny  RateLimitOnError = "deny"  // fail closed: frames are dropped
)

// NotifyMode is how the instances of a cluster share a NOTIFY channel.
type NotifyMode string

// Notify modes.
const (
	NotifyAll    NotifyMode = "all"
	NotifyLeader NotifyMode = "leader"
)

// parseEnum returns s as a T if it is one of values; the error names the
// option (what) and lists what to write instead.
func parseEnum[T ~string](what, s string, values ...T) (T, error) {
	for _, v := range values {
		if string(v) == s {
			return v, nil
		}
	}
	want := make([]string, len(values))
	for i, v := range values {
		want[i] = string(v)
	}
	list := strings.Join(want[:len(want)-1], ", ") + " or " + want[len(want)-1]
	return "", fmt.Errorf("unknown %s '%s': want %s", what, s, list)
}

// ParseSlowConsumer reads a slow_consumer policy: close or drop.
func ParseSlowConsumer(s string) (SlowConsumer, error) {
	return parseEnum("slow_consumer policy", s, SlowConsumerClose, SlowConsumerDrop)
}

// ParseReplayStore reads a replay store: memory, redis or postgres.
func ParseReplayStore(s string) (ReplayStore, error) {
	return parseEnum("replay store", s, ReplayStoreMemory, ReplayStoreRedis, ReplayStorePostgres)
}

// ParseRateLimitAction reads a rate_limit action: drop or close.
func ParseRateLimitAction(s string) (RateLimitAction, error) {
	return parseEnum("rate_limit action", s, RateLimitDrop, RateLimitClose)
}

// ParseRateLimitOnError reads a rate_limit on_error policy: allow or deny.
func ParseRateLimitOnError(s string) (RateLimitOnError, error) {
	return parseEnum("rate_limit on_error policy", s, RateLimitAllow, RateLimitDeny)
}

// ParseNotifyMode reads a notify mode: all or leader.
func ParseNotifyMode(s string) (NotifyMode, error) {
	return parseEnum("notify mode", s, NotifyAll, NotifyLeader)
}

// checkEnum checks an optional enumeration of a JSON config: empty is
// its default.
func checkEnum[T ~string](v T, parse func(string) (T, error)) error {
	if v == "" {
		return nil
	}
	_, err := parse(string(v))
	return err
}

// Defaults of the gateway's own options; those of the capabilities are
// the extension packages' Default constants.
const (
	DefaultPath           = "/ws"
	DefaultAPIMaxBody     = 4 << 20
	DefaultUserKey        = "id"
	DefaultKeepAlive      = 60 * time.Second
	DefaultSSEKeepAlive   = 30 * time.Second
	DefaultPingInterval   = 30 * time.Second
	DefaultIdleTimeout    = 120 * time.Second
	DefaultWriteTimeout   = 10 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultShutdownSpread = 5 * time.Second
	DefaultMaxPayload     = 1 << 20

	DefaultCompressionLevel   = 1
	DefaultCompressionMinSize = 256
	DefaultMaxBackpressure    = 1 << 20
	DefaultUpgradeRate        = 30
	DefaultUpgradeWindow      = 10 * time.Second
	DefaultMaxSubscriptions   = 1000
	DefaultInboundRate        = 200
	DefaultInboundBurst       = 400
	DefaultRateLimitClose     = 1000
	DefaultAuthTimeout        = 10 * time.Second
	DefaultHookTimeout        = 5 * time.Second
	DefaultAuthInFlight       = 1000
	DefaultHookInFlight       = 256
	DefaultHookQueue          = 64
	DefaultRateLimitKey       = "ip"

	// MinKeepAlive and MaxKeepAlive bound KeepAlive: clients treat a
	// connection quiet for longer than their own timeout as dead.
	MinKeepAlive = 5 * time.Second
	MaxKeepAlive = 120 * time.Second
)

// WithDefaults returns c with every zero field set to its default. It is
// idempotent: applying it again changes nothing, so an explicit "off"
// (a negative duration) stays off however many layers default the config.
func (c Config) WithDefaults() Config {
	setDefault(&c.Path, DefaultPath)
	setDefault(&c.Name, c.Path)
	setDefault(&c.UserKey, DefaultUserKey)
	c.APIPath = NormalizeAPIPath(c.APIPath)
	c.DashboardPath = NormalizeAPIPath(c.DashboardPath)
	if c.DashboardPath != "" {
		setDefault(&c.DashboardAuth, DashboardAuthKey)
	}
	setDefault(&c.APIMaxBody, DefaultAPIMaxBody)
	if len(c.Origins) == 0 {
		c.Origins = []string{"same-origin"}
	}
	setDefault(&c.KeepAlive, DefaultKeepAlive)
	setDefault(&c.SSEKeepAlive, DefaultSSEKeepAlive)
	setDefault(&c.PingInterval, DefaultPingInterval)
	setDefault(&c.IdleTimeout, DefaultIdleTimeout)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.RequestTimeout, DefaultRequestTimeout)
	setDefault(&c.ShutdownSpread, DefaultShutdownSpread)
	setDefault(&c.MaxPayload, DefaultMaxPayload)
	if c.Compression != nil {
		z := *c.Compression
		setDefault(&z.Level, DefaultCompressionLevel)
		setDefault(&z.MinSize, DefaultCompressionMinSize)
		c.Compression = &z
	}
	setDefault(&c.MaxBackpressure, DefaultMaxBackpressure)
	setDefault(&c.SlowConsumer, SlowConsumerClose)
	setDefault(&c.UpgradeRate, DefaultUpgradeRate)
	setDefault(&c.UpgradeWindow, DefaultUpgradeWindow)
	setDefault(&c.MaxSubscriptions, DefaultMaxSubscriptions)
	setDefault(&c.InboundRate, DefaultInboundRate)
	setDefault(&c.InboundBurst, DefaultInboundBurst)
	setDefault(&c.RateLimitClose, DefaultRateLimitClose)
	c.Auth = c.Auth.withDefaults(DefaultAuthTimeout, DefaultAuthInFlight)
	if c.AuthPath == "" && c.JWT != nil {
		c.AuthPath = DefaultAuthPath
	}
	c.SubscribeHook = c.SubscribeHook.withDefaults(DefaultHookTimeout, DefaultHookInFlight)
	c.MessageHook = c.MessageHook.withDefaults(DefaultHookTimeout, DefaultHookInFlight)
	if c.MessageHook != nil {
		setDefault(&c.MessageHook.Queue, DefaultHookQueue)
	}
	c.EventsHook = c.EventsHook.withDefaults(DefaultHookTimeout, DefaultHookInFlight)
	// The slices are copied before their elements are defaulted: the
	// caller's config stays as written.
	c.Replay = slices.Clone(c.Replay)
	for i := range c.Replay {
		r := &c.Replay[i]
		setDefault(&r.Store, ReplayStoreMemory)
		if r.Size <= 0 {
			r.Size = replay.DefaultSize
		}
	}
	c.Presence = slices.Clone(c.Presence)
	for i := range c.Presence {
		p := &c.Presence[i]
		setDefault(&p.Key, presence.DefaultKey)
		setDefault(&p.Heartbeat, presence.DefaultHeartbeat)
		setDefault(&p.TTL, presence.DefaultTTL)
	}
	c.Cursors = slices.Clone(c.Cursors)
	for i := range c.Cursors {
		cu := &c.Cursors[i]
		setDefault(&cu.Throttle, cursor.DefaultThrottle)
		setDefault(&cu.TopicThrottle, cursor.DefaultTopicThrottle)
		setDefault(&cu.TTL, cursor.DefaultTTL)
		setDefault(&cu.MaxData, cursor.DefaultMaxData)
	}
	c.Groups = slices.Clone(c.Groups)
	for i := range c.Groups {
		setDefault(&c.Groups[i].MemberTTL, groups.DefaultTTL)
	}
	if r := c.RateLimit; r != nil {
		rl := *r
		setDefault(&rl.Points, ratelimit.DefaultPoints)
		setDefault(&rl.Interval, ratelimit.DefaultInterval)
		setDefault(&rl.Key, DefaultRateLimitKey)
		setDefault(&rl.Action, RateLimitDrop)
		setDefault(&rl.OnError, RateLimitAllow)
		c.RateLimit = &rl
	}
	c.Notify = slices.Clone(c.Notify)
	for i := range c.Notify {
		setDefault(&c.Notify[i].Mode, NotifyAll)
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

// setDefault sets *p to v if *p is the zero value.
func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

func (h *HookConfig) withDefaults(timeout time.Duration, inFlight int) *HookConfig {
	if h == nil {
		return nil
	}
	c := *h
	setDefault(&c.Timeout, timeout)
	setDefault(&c.MaxInFlight, inFlight)
	return &c
}

// NormalizeAPIPath drops the trailing slashes of an API path prefix, so
// that "/_realtime/" and "/_realtime" serve the same routes. "/" stays
// "/" (which Validate refuses: it would cover the WebSocket path).
func NormalizeAPIPath(p string) string {
	if t := strings.TrimRight(p, "/"); t != "" {
		return t
	}
	return p
}

// CheckPath checks a path option (path, api): it must start with '/'.
func CheckPath(option, p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%s must start with '/', got '%s'", option, p)
	}
	return nil
}

// CheckSSEKeepAlive checks the sse block's keepalive option. Proxies and
// load balancers commonly drop a response quiet for 60 s, hence the cap.
func CheckSSEKeepAlive(d time.Duration) error {
	if d < MinKeepAlive || d > MaxKeepAlive {
		return fmt.Errorf("sse keepalive must be between %.0fs and %.0fs, got '%s'", MinKeepAlive.Seconds(), MaxKeepAlive.Seconds(), d)
	}
	return nil
}

// CheckKeepAlive checks the keepalive option.
func CheckKeepAlive(d time.Duration) error {
	if d < MinKeepAlive || d > MaxKeepAlive {
		return fmt.Errorf("keepalive must be between %.0fs and %.0fs, got '%s'", MinKeepAlive.Seconds(), MaxKeepAlive.Seconds(), d)
	}
	return nil
}

// CheckOrigins checks an origin policy: same-origin or * alone, or exact
// origins scheme://host[:port], without path, user info, query or
// fragment (a browser's Origin header never has them, so such an entry
// would never match).
func CheckOrigins(origins []string) error {
	for _, o := range origins {
		switch o {
		case "same-origin", "*":
			if len(origins) > 1 {
				return fmt.Errorf("origin '%s' must be the only origin", o)
			}
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Opaque != "" || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
			return fmt.Errorf("bad origin '%s': want same-origin, * or scheme://host[:port]", o)
		}
	}
	return nil
}

// CheckHookURL checks the URL of a hook (kind: auth, subscribe_hook,
// message_hook or events_hook): an absolute http or https URL.
func CheckHookURL(kind, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("bad %s url '%s': %v", kind, raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("bad %s url '%s': want http://host[:port]/path or https://…", kind, raw)
	}
	return nil
}

// CheckHeaderName checks a header name the auth hook forwards.
func CheckHeaderName(name string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("bad header name '%s'", name)
	}
	return nil
}

// ValidPattern reports whether p is a valid topic pattern ('*' matches
// any run of characters): a topic of printable ASCII without '"' or ”,
// outside the "__" system namespace.
func ValidPattern(p string) bool {
	return p != "" && !wire.IsSystem(p) && wire.ValidTopic(p, false)
}

// CheckPattern checks the topic pattern p of option (replay, presence,
// cursor, join_on, public).
func CheckPattern(option, p string) error {
	if !ValidPattern(p) {
		return fmt.Errorf("bad %s pattern '%s': want printable ASCII without '\"' or '\\', not starting with __", option, p)
	}
	return nil
}

// CheckGroupName checks a group name: a topic name without spaces,
// outside the "__" system namespace (its frames go on __group:<name>).
func CheckGroupName(name string) error {
	if !wire.ValidTopic(name, false) || wire.IsSystem(name) || strings.Contains(name, " ") {
		return fmt.Errorf("bad group name '%s': want a topic name of printable ASCII without spaces, '\"' or '\\', not starting with __", name)
	}
	return nil
}

// CheckGroupMeta checks a group's initial metadata: a JSON object.
func CheckGroupMeta(meta []byte) error {
	var obj map[string]json.RawMessage
	if len(meta) > 0 && json.Unmarshal(meta, &obj) != nil {
		return errors.New("meta must be a JSON object")
	}
	return nil
}

// CheckTopicThrottle checks a cursor topic_throttle.
func CheckTopicThrottle(d time.Duration) error {
	if d < cursor.MinTopicThrottle {
		return fmt.Errorf("topic_throttle must be at least %s, got '%s'", cursor.MinTopicThrottle, d)
	}
	return nil
}

// CheckNotifyChannel checks a NOTIFY channel name.
func CheckNotifyChannel(name string) error {
	if !notify.ValidChannel(name) {
		return fmt.Errorf("bad notify channel '%s': want letters, digits and '_', up to 63, not starting with a digit", name)
	}
	return nil
}

// CheckResyncTopic checks a notify resync topic: a topic outside the
// "__" system namespace.
func CheckResyncTopic(t string, allowNonASCII bool) error {
	if wire.IsSystem(t) || !wire.ValidTopic(t, allowNonASCII) {
		return fmt.Errorf("bad resync topic '%s': want a topic not starting with __", t)
	}
	return nil
}

// Validate reports the first invalid option of a config with defaults
// applied, naming the option.
func (c Config) Validate() error {
	if err := CheckPath("path", c.Path); err != nil {
		return err
	}
	if c.APIPath != "" {
		if err := CheckPath("api path", c.APIPath); err != nil {
			return err
		}
		if p := NormalizeAPIPath(c.APIPath); p == c.Path || strings.HasPrefix(c.Path, strings.TrimSuffix(p, "/")+"/") {
			return fmt.Errorf("api path %q overlaps the websocket path %q", c.APIPath, c.Path)
		}
	}
	if c.DashboardPath != "" {
		if err := c.checkDashboard(); err != nil {
			return err
		}
	}
	if err := CheckKeepAlive(c.KeepAlive); err != nil {
		return err
	}
	if c.SSEPath != "" {
		if err := CheckPath("sse path", c.SSEPath); err != nil {
			return err
		}
		if c.SSEPath == c.Path || c.SSEPath == c.AuthPath || (c.APIPath != "" && pathUnder(c.SSEPath, NormalizeAPIPath(c.APIPath))) ||
			(c.DashboardPath != "" && pathUnder(c.SSEPath, c.DashboardPath)) {
			return fmt.Errorf("sse path %q must differ from the websocket path and the auth_path and lie outside the api and dashboard paths", c.SSEPath)
		}
		if err := CheckSSEKeepAlive(c.SSEKeepAlive); err != nil {
			return err
		}
	}
	if c.JWT != nil {
		if err := CheckJWT(c.JWT); err != nil {
			return err
		}
	}
	if c.AuthPath != "" {
		if err := CheckAuthPath(c.AuthPath); err != nil {
			return err
		}
		if c.AuthPath == c.Path || (c.APIPath != "" && pathUnder(c.AuthPath, NormalizeAPIPath(c.APIPath))) {
			return fmt.Errorf("auth_path %q must differ from the websocket path and lie outside the api path", c.AuthPath)
		}
	}
	if err := CheckOrigins(c.Origins); err != nil {
		return err
	}
	if err := checkEnum(c.SlowConsumer, ParseSlowConsumer); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	for _, hk := range []struct {
		name string
		h    *HookConfig
	}{{"auth", c.Auth}, {"subscribe_hook", c.SubscribeHook}, {"message_hook", c.MessageHook}, {"events_hook", c.EventsHook}} {
		if hk.h == nil {
			continue
		}
		if err := CheckHookURL(hk.name, hk.h.URL); err != nil {
			return err
		}
		if hk.h.Timeout < 0 || hk.h.MaxInFlight < 0 || hk.h.Queue < 0 {
			return fmt.Errorf("%s: timeout, max_in_flight and queue must not be negative", hk.name)
		}
		for _, name := range hk.h.Headers {
			if err := CheckHeaderName(name); err != nil {
				return fmt.Errorf("%s: %w", hk.name, err)
			}
		}
	}
	for _, p := range c.Public {
		if err := CheckPattern("public", p); err != nil {
			return err
		}
	}
	for _, r := range c.Replay {
		if err := CheckPattern("replay", r.Topics); err != nil {
			return err
		}
		if err := checkEnum(r.Store, ParseReplayStore); err != nil {
			return fmt.Errorf("replay %q: %w", r.Topics, err)
		}
	}
	for _, p := range c.Presence {
		if err := CheckPattern("presence", p.Topics); err != nil {
			return err
		}
	}
	for _, cu := range c.Cursors {
		if err := CheckPattern("cursor", cu.Topics); err != nil {
			return err
		}
		if err := CheckTopicThrottle(cu.TopicThrottle); err != nil {
			return fmt.Errorf("cursor %q: %w", cu.Topics, err)
		}
	}
	seen := map[string]bool{}
	for _, gr := range c.Groups {
		if err := CheckGroupName(gr.Name); err != nil {
			return err
		}
		if seen[gr.Name] {
			return fmt.Errorf("group %q declared twice", gr.Name)
		}
		seen[gr.Name] = true
		if gr.MaxMembers < 0 {
			return fmt.Errorf("group %q: max_members must not be negative", gr.Name)
		}
		if err := CheckGroupMeta(gr.Meta); err != nil {
			return fmt.Errorf("group %q: %w", gr.Name, err)
		}
		for _, p := range gr.JoinOn {
			if err := CheckPattern("join_on", p); err != nil {
				return fmt.Errorf("group %q: %w", gr.Name, err)
			}
		}
	}
	if rl := c.RateLimit; rl != nil {
		if err := checkEnum(rl.Action, ParseRateLimitAction); err != nil {
			return err
		}
		if err := checkEnum(rl.OnError, ParseRateLimitOnError); err != nil {
			return err
		}
	}
	channels := map[string]bool{}
	for _, n := range c.Notify {
		if err := CheckNotifyChannel(n.Channel); err != nil {
			return fmt.Errorf("notify %q: %w", n.Channel, err)
		}
		if channels[n.Channel] {
			return fmt.Errorf("notify %q: channel declared twice", n.Channel)
		}
		channels[n.Channel] = true
		if err := checkEnum(n.Mode, ParseNotifyMode); err != nil {
			return fmt.Errorf("notify %q: %w", n.Channel, err)
		}
		if n.Resync != "" {
			if err := CheckResyncTopic(n.Resync, c.AllowNonASCIITopics); err != nil {
				return fmt.Errorf("notify %q: %w", n.Channel, err)
			}
		}
		if n.PollInterval < 0 {
			return fmt.Errorf("notify %q: poll_interval must not be negative", n.Channel)
		}
	}
	if c.MaxPayload < 1 {
		return errors.New("max_payload must be positive")
	}
	if z := c.Compression; z != nil {
		if err := CheckCompression(z.Level, z.MinSize); err != nil {
			return err
		}
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

// CheckCompression checks a compression level (1-9; 0 means the default)
// and minimum size (not negative).
func CheckCompression(level, minSize int) error {
	if level < 0 || level > 9 {
		return fmt.Errorf("compression level %d: want 1 (fastest) to 9 (smallest)", level)
	}
	if minSize < 0 {
		return errors.New("compression min_size must not be negative")
	}
	return nil
}
