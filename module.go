// Package realtime is the Caddy glue of caddy-realtime: the `realtime` app
// (global option, shared backends) and the `http.handlers.realtime` handler
// (directive), which turn Caddy into a realtime WebSocket gateway in front of
// application servers. The protocol, hub and HTTP API live in handlers/; the
// capabilities (bus, replay, presence, …) in extensions/. This package only
// maps JSON onto their configs and wires them into Caddy's lifecycle.
package realtime

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/cursor"
	"github.com/caddy-realtime/realtime/extensions/groups"
	"github.com/caddy-realtime/realtime/extensions/presence"
	"github.com/caddy-realtime/realtime/extensions/ratelimit"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/extensions/snapshot"
	"github.com/caddy-realtime/realtime/extensions/tally"
	"github.com/caddy-realtime/realtime/extensions/wire"
	"github.com/caddy-realtime/realtime/handlers"
	"github.com/caddy-realtime/realtime/internal/lazyredis"
)

func init() {
	caddy.RegisterModule(App{})
	caddy.RegisterModule(Handler{})
}

// gateways holds every live gateway across config reloads, keyed by the
// handler's name: a reload that keeps the name keeps the connections
// (Caddy's UsagePool). The new config provisions before the old one cleans up,
// so the count goes 1→2→1 and Destruct runs only when the name disappears
// from the config or Caddy exits.
var gateways = caddy.NewUsagePool()

// App is the `realtime` app: state shared by every realtime handler of one
// Caddy instance: its instance id and the Redis client and Postgres pool
// every handler shares.
type App struct {
	// InstanceID names this Caddy instance among the gateways sharing a
	// backend. Default: a random UUID per process start.
	InstanceID string `json:"instance_id,omitempty"`

	// Redis makes every realtime handler of this Caddy one gateway with
	// those of every other instance using the same Redis: publishes reach
	// all instances and `store redis` replay buffers are shared.
	// Default: none (in memory, this instance only).
	Redis *RedisConfig `json:"redis,omitempty"`

	// Postgres gives `store postgres` replay buffers a durable home and
	// `notify` channels their server. Default: none.
	Postgres *PostgresConfig `json:"postgres,omitempty"`

	logger *zap.Logger
	// Provision parses the options into these; Start (or the first
	// request, whichever comes first) connects.
	redisOpt rueidis.ClientOption
	redisKey string
	pgCfg    *pgxpool.Config
	pgKey    string
	// notifyDSN is the resolved DSN of LISTEN connections: NotifyDSN, else DSN.
	notifyDSN string

	// run is what Provision sets up and Start and connect fill in.
	run *appRun
}

// appRun is an App's state once provisioned.
type appRun struct {
	mu       sync.Mutex
	redis    rueidis.Client // set by connect
	pg       *pgxpool.Pool  // set by connect
	held     bool           // connect took references to the shared clients
	handlers []*Handler     // the handlers of this config, started by Start
}

// PostgresConfig configures the shared PostgreSQL pool.
type PostgresConfig struct {
	// DSN is a postgres:// URL or key=value connection string (pgx syntax,
	// pool_* parameters included). Required. Placeholders are resolved; the
	// DSN never appears in logs or errors.
	DSN string `json:"dsn,omitempty"`

	// NotifyDSN is the connection string of the `notify` channels' LISTEN
	// connections, one per channel, held open and never pooled. Set it
	// when DSN goes through a pooler in transaction mode (PgBouncer,
	// Supavisor on 6543, …): LISTEN is session state, which such a pooler
	// drops between transactions, so notifications would silently stop;
	// point NotifyDSN at the server itself or at a session-mode port.
	// Placeholders are resolved; never logged. Default: DSN.
	NotifyDSN string `json:"notify_dsn,omitempty"`

	// MaxConns caps the pool's connections. Default: pgx's, the greater
	// of 4 and the number of CPUs (or the DSN's pool_max_conns).
	MaxConns int32 `json:"max_conns,omitempty"`

	// MinConns is how many idle connections the pool keeps open.
	// Default: pgx's, 0 (or the DSN's pool_min_conns).
	MinConns int32 `json:"min_conns,omitempty"`
}

// RedisConfig configures the shared Redis client.
type RedisConfig struct {
	// URL is redis://[user:password@]host:port[/db] or rediss:// for TLS
	// (rueidis.ParseURL syntax), or, for a master found through Redis
	// Sentinel, sentinel://[user:password@]host:port[,host:port…]/<master>[?db=N]
	// (the Sentinels' addresses, port 26379 if left out, and the master
	// set name; the credentials are the master's). A Redis Cluster is
	// recognized from a redis:// URL of any of its nodes. Required.
	// Placeholders such as {env.REDIS_URL} are resolved.
	URL string `json:"url,omitempty"`

	// SentinelUsername and SentinelPassword authenticate to the Sentinels
	// of a sentinel:// URL, when they require it (requirepass in their
	// configuration). Placeholders are resolved. Default: none.
	SentinelUsername string `json:"sentinel_username,omitempty"`
	SentinelPassword string `json:"sentinel_password,omitempty"`

	// Username and Password override those of the URL. Placeholders are
	// resolved. They never appear in logs or errors.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// DB selects the database, overriding the URL's. Default: the URL's, or 0.
	DB *int `json:"db,omitempty"`

	// TLS connects with TLS even for a redis:// URL. Default: false.
	TLS bool `json:"tls,omitempty"`

	// ClientName is sent with CLIENT SETNAME. Default: caddy-realtime.
	ClientName string `json:"client_name,omitempty"`

	// KeyPrefix starts every key this module writes. Default: none.
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Compat "uws" puts the bus on one channel (Channel) in the envelope
	// of the reference Node package, svelte-adapter-uws-extensions, so
	// that its nodes and these instances share publishes: every instance
	// receives every publish. Default: "", the bus routes per topic
	// (bus.Routing): an instance receives only the topics it serves.
	Compat string `json:"compat,omitempty"`

	// Channel is the bus's one pub/sub channel in compat mode; giving it
	// turns compat mode on. The reference package's Node apps use the
	// same default. Default: uws:pubsub.
	Channel string `json:"channel,omitempty"`

	// Partitions, when positive, hashes topics onto that many channels
	// instead of one channel per topic (not with compat): an instance's
	// subscriptions stay bounded however many topics it serves, and it
	// drops the units of its partitions' other topics. Default: 0.
	Partitions int `json:"partitions,omitempty"`
}

// compat reports whether the bus runs on the one channel of the reference
// package.
func (r *RedisConfig) compat() bool { return r.Compat != "" || r.Channel != "" }

// routing returns the routed bus's channel naming; nil in compat mode.
func (r *RedisConfig) routing() *bus.Routing {
	if r.compat() {
		return nil
	}
	return &bus.Routing{Prefix: r.KeyPrefix, Partitions: r.Partitions}
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "realtime", New: func() caddy.Module { return new(App) }}
}

// processInstanceID is generated once per process so that reloads keep it.
var processInstanceID = uuid.NewString()

// redisClients shares one rueidis client per Redis configuration across
// reloads: a reload never drops the bus's subscription.
var redisClients = caddy.NewUsagePool()

// Provision fills defaults and checks the backends' options. It connects
// to nothing: `caddy validate` provisions without starting, and must
// neither wait for nor log about backends it will never use.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.run = new(appRun)
	if a.InstanceID == "" {
		a.InstanceID = processInstanceID
	}
	if a.Postgres != nil {
		if err := a.provisionPostgres(); err != nil {
			return err
		}
	}
	if a.Redis == nil {
		return nil
	}
	opt, key, err := a.Redis.clientOption()
	if err != nil {
		return err
	}
	switch r := a.Redis; {
	case r.Compat != "" && r.Compat != "uws":
		return fmt.Errorf("redis: compat %q: the one compatibility mode is uws", r.Compat)
	case r.Partitions < 0:
		return errors.New("redis: partitions must not be negative")
	case r.Partitions > 0 && r.compat():
		return errors.New("redis: partitions route per topic, which compat mode (or a channel) turns off")
	case strings.ContainsAny(r.KeyPrefix, "{}"):
		return errors.New("redis: key_prefix must not contain '{' or '}', which would change Redis Cluster hash slots")
	}
	a.redisOpt, a.redisKey = opt, key
	return nil
}

// connect gets the shared Redis client and Postgres pool, once; every
// handler's start calls it before building its gateway.
func (a *App) connect() error {
	a.run.mu.Lock()
	defer a.run.mu.Unlock()
	if a.run.held {
		return nil
	}
	if a.redisKey != "" {
		opt, logger := a.redisOpt, a.logger.Named("redis")
		v, _, err := redisClients.LoadOrNew(a.redisKey, func() (caddy.Destructor, error) {
			return pooledRedis{newLazyRedis(opt, logger), logger}, nil
		})
		if err != nil {
			return err
		}
		a.run.redis = v.(pooledRedis).Client
	}
	if a.pgKey != "" {
		cfg, logger := a.pgCfg, a.logger.Named("postgres")
		v, _, err := pgPools.LoadOrNew(a.pgKey, func() (caddy.Destructor, error) {
			pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
			if err != nil {
				return nil, errors.New("postgres: creating the pool failed")
			}
			return pooledPG{pool, logger}, nil
		})
		if err != nil {
			if a.run.redis != nil {
				_, _ = redisClients.Delete(a.redisKey)
				a.run.redis = nil
			}
			return err
		}
		a.run.pg = v.(pooledPG).Pool
	}
	a.run.held = true
	return nil
}

// newLazyRedis connects to Redis or, if it is unreachable, starts without
// it: Caddy serves locally (the bus reports degraded, as in an outage) and
// connects when Redis appears. A bad URL is still a provision error,
// found before. It logs at warn once when starting without Redis,
// at info once connected, and every later failed attempt at debug.
func newLazyRedis(opt rueidis.ClientOption, logger *zap.Logger) *lazyredis.Client {
	addr := zap.String("address", strings.Join(opt.InitAddress, ","))
	var failures atomic.Int64
	return lazyredis.New(lazyredis.Config{
		Option: opt,
		OnError: func(err error) {
			err = redactErr(err, opt.Password)
			if failures.Add(1) == 1 {
				logger.Warn("redis unreachable at start-up: serving this instance's clients locally, the bus reports degraded; retrying every 5s at most",
					addr, zap.Error(err))
				return
			}
			logger.Debug("redis still unreachable", addr, zap.Error(err))
		},
		OnConnect: func() { logger.Info("connected to redis", addr, zap.Int64("failed_attempts", failures.Load())) },
	})
}

// clientOption maps the config onto rueidis options, with placeholders
// resolved; key identifies the client in the pool (it holds no secret in
// clear: a hash).
func (r *RedisConfig) clientOption() (rueidis.ClientOption, string, error) {
	repl := caddy.NewReplacer()
	url := repl.ReplaceAll(r.URL, "")
	if url == "" {
		return rueidis.ClientOption{}, "", errors.New("redis: url is required")
	}
	sentinel := strings.HasPrefix(url, sentinelScheme)
	var (
		opt rueidis.ClientOption
		err error
	)
	if sentinel {
		if opt, err = parseSentinelURL(url); err != nil {
			return opt, "", err
		}
		opt.Sentinel.Username = repl.ReplaceAll(r.SentinelUsername, "")
		opt.Sentinel.Password = repl.ReplaceAll(r.SentinelPassword, "")
	} else {
		if r.SentinelUsername != "" || r.SentinelPassword != "" {
			return opt, "", errors.New("redis: sentinel_username and sentinel_password need a sentinel:// url")
		}
		if opt, err = rueidis.ParseURL(url); err != nil {
			// ParseURL errors can quote the URL: never echo it (it may hold a password).
			return opt, "", errors.New("redis: url is not a valid redis://, rediss:// or sentinel:// url")
		}
	}
	if r.Username != "" {
		opt.Username = repl.ReplaceAll(r.Username, "")
	}
	if r.Password != "" {
		opt.Password = repl.ReplaceAll(r.Password, "")
	}
	if r.DB != nil {
		opt.SelectDB = *r.DB
	}
	switch {
	case r.TLS && sentinel:
		// The master's address changes at a failover: each connection
		// verifies the name of the host it dials.
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		opt.Sentinel.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	case r.TLS && opt.TLSConfig == nil:
		opt.TLSConfig = &tls.Config{ServerName: strings.Split(opt.InitAddress[0], ":")[0], MinVersion: tls.VersionTLS12}
	}
	opt.ClientName = r.ClientName
	if opt.ClientName == "" {
		opt.ClientName = "caddy-realtime"
	}
	// Settings from centrifuge's production use: no
	// client-side cache, pipelining, no retries without deadlines, and a
	// keepalive that notices a dead server in about a second.
	opt.DisableCache = true
	opt.AlwaysPipelining = true
	opt.DisableRetry = true
	opt.Dialer.KeepAlive = 400 * time.Millisecond
	opt.Dialer.Timeout = 3 * time.Second
	opt.ConnWriteTimeout = 3 * time.Second
	if sentinel {
		opt.Sentinel.Dialer = opt.Dialer
		opt.Sentinel.ClientName = opt.ClientName
		// Besides following +switch-master events, ask the Sentinels
		// every 2 s: a missed event would otherwise leave the client on a
		// demoted master that still answers.
		opt.Sentinel.TopologyRefreshInterval = 2 * time.Second
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{url, opt.Username, opt.Password, fmt.Sprint(opt.SelectDB, r.TLS), opt.ClientName,
		opt.Sentinel.Username, opt.Sentinel.Password}, "\x00")))
	return opt, "redis:" + hex.EncodeToString(sum[:]), nil
}

// redactErr removes a password from an error's text.
func redactErr(err error, password string) error {
	if password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), password, "xxxxx"))
}

// pooledRedis adapts a rueidis client to caddy.Destructor.
type pooledRedis struct {
	rueidis.Client
	logger *zap.Logger
}

// Destruct closes the client once no config uses it.
func (p pooledRedis) Destruct() error {
	p.Close()
	p.logger.Debug("closed the redis client: no configuration uses it")
	return nil
}

// pgPools shares one pgxpool per DSN across reloads.
var pgPools = caddy.NewUsagePool()

// provisionPostgres checks the Postgres options and keys the shared pool
// connect gets. pgxpool connects lazily, so an unreachable server fails
// the first use, not Caddy's start.
func (a *App) provisionPostgres() error {
	dsn := caddy.NewReplacer().ReplaceAll(a.Postgres.DSN, "")
	if dsn == "" {
		return errors.New("postgres: dsn is required")
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return errors.New("postgres: the dsn is not a valid connection string") // never echo it
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "caddy-realtime"
	if n := a.Postgres.MaxConns; n > 0 {
		cfg.MaxConns = n
	}
	if n := a.Postgres.MinConns; n > 0 {
		cfg.MinConns = n
	}
	if cfg.MinConns > cfg.MaxConns {
		return fmt.Errorf("postgres: min_conns %d exceeds max_conns %d", cfg.MinConns, cfg.MaxConns)
	}
	a.notifyDSN = dsn
	if a.Postgres.NotifyDSN != "" {
		if a.notifyDSN = caddy.NewReplacer().ReplaceAll(a.Postgres.NotifyDSN, ""); a.notifyDSN == "" {
			return errors.New("postgres: notify_dsn resolves to empty")
		}
	}
	sum := sha256.Sum256([]byte(fmt.Sprint(dsn, "\x00", cfg.MaxConns, cfg.MinConns)))
	a.pgCfg, a.pgKey = cfg, "pg:"+hex.EncodeToString(sum[:])
	return nil
}

// pooledPG adapts a pgxpool to caddy.Destructor.
type pooledPG struct {
	*pgxpool.Pool
	logger *zap.Logger
}

// Destruct closes the pool once no config uses it.
func (p pooledPG) Destruct() error {
	p.Close()
	p.logger.Debug("closed the postgres pool: no configuration uses it")
	return nil
}

// holdClients takes one more reference to the shared Redis client and
// Postgres pool the app loaded, for a gateway to keep until it has closed;
// release gives them back.
func (a *App) holdClients() (release func(), err error) {
	type ref struct {
		pool *caddy.UsagePool
		key  string
	}
	var held []ref
	release = func() {
		for _, r := range held {
			_, _ = r.pool.Delete(r.key)
		}
	}
	gone := func() (caddy.Destructor, error) {
		return nil, errors.New("a shared client was released before its gateway started")
	}
	for _, r := range []ref{{redisClients, a.redisKey}, {pgPools, a.pgKey}} {
		if r.key == "" {
			continue
		}
		if _, _, err := r.pool.LoadOrNew(r.key, gone); err != nil {
			release()
			return nil, err
		}
		held = append(held, r)
	}
	return release, nil
}

// Cleanup releases this config's references to the shared clients, if
// connect took them.
func (a *App) Cleanup() error {
	if a.run == nil {
		return nil
	}
	a.run.mu.Lock()
	defer a.run.mu.Unlock()
	if !a.run.held {
		return nil
	}
	a.run.held = false
	var errs []error
	if a.redisKey != "" {
		if _, err := redisClients.Delete(a.redisKey); err != nil {
			errs = append(errs, err)
		}
	}
	if a.pgKey != "" {
		if _, err := pgPools.Delete(a.pgKey); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Start connects the shared clients and starts the gateway of every
// realtime handler of this config. The http app may start first, in
// which case a handler's first request starts its gateway.
func (a *App) Start() error {
	a.run.mu.Lock()
	hs := slices.Clone(a.run.handlers)
	a.run.mu.Unlock()
	for _, h := range hs {
		if err := h.start(); err != nil {
			return err
		}
	}
	return nil
}

// Stop does nothing: shared state is released through the UsagePool when its
// last config lets go of it, never here (on reload the new app already runs).
func (a *App) Stop() error { return nil }

// Handler is the `realtime` HTTP handler: it upgrades WebSocket requests on
// Path, serves the HTTP API for app servers under API.Path, and passes every
// other request to the next handler.
type Handler struct {
	// Name identifies the gateway across config reloads: connections survive
	// a reload that keeps it. Two handlers in one config must have different
	// names. Default: the WebSocket path.
	Name string `json:"name,omitempty"`

	// Path is the WebSocket endpoint. Default: /ws.
	Path string `json:"path,omitempty"`

	// API enables the HTTP API for app servers. Default: off.
	API *APIConfig `json:"api,omitempty"`

	// Dashboard serves a live, read-only dashboard of the gateway (and,
	// with redis, of every instance) under its path. Default: off.
	Dashboard *DashboardConfig `json:"dashboard,omitempty"`
	// SSE serves the same events as server-sent events on a path of its
	// own, for EventSource, curl and other clients that cannot hold a
	// WebSocket (docs/protocol.md §10). Default: off.
	SSE *SSEConfig `json:"sse,omitempty"`

	// Origins is the origin policy for upgrades: ["same-origin"] requires the
	// Origin's scheme, host and port to equal the request's; ["*"] allows
	// any; otherwise a list of exact origins (scheme://host[:port]). A missing
	// Origin is accepted only when Auth is configured. Default: same-origin.
	Origins []string `json:"origins,omitempty"`

	// Auth is the upgrade hook: a GET carrying the upgrade's cookies and
	// headers; a 2xx JSON object answer becomes the connection's identity.
	// Default: none (every connection has the identity {}).
	Auth *HookConfig `json:"auth,omitempty"`

	// JWT verifies signed tokens at the upgrade and the auth preflight: a
	// valid token makes the identity without calling Auth, which is asked
	// only when no token is presented. Default: none.
	JWT *JWTConfig `json:"jwt,omitempty"`

	// AuthPath is where the handler answers the current client's auth
	// preflight (POST) with the upgrade's decision; "off" leaves the path
	// to the next handler. Default: /__ws/auth with JWT, else off.
	AuthPath string `json:"auth_path,omitempty"`

	// SubscribeHook authorizes subscriptions, one POST per subscribe or
	// subscribe-batch. Default: none (every valid topic is allowed).
	SubscribeHook *HookConfig `json:"subscribe_hook,omitempty"`

	// MessageHook receives application messages (non-control frames).
	// Default: none (such frames are dropped and counted).
	MessageHook *HookConfig `json:"message_hook,omitempty"`

	// Public lists topic patterns ('*' wildcard) allowed without asking the
	// subscribe hook. Default: none.
	Public []string `json:"public,omitempty"`

	// UserKey is the identity field that names a user, for sending to all
	// connections of a user. Default: id.
	UserKey string `json:"user_key,omitempty"`

	// AllowNonASCIITopics admits topics with any character from U+0020 up
	// except '"' and '\' (length counted in UTF-16 units). Default: false.
	AllowNonASCIITopics bool `json:"allow_non_ascii_topics,omitempty"`

	// KeepAlive is the quiet period after which a connection that was sent
	// nothing gets {"type":"heartbeat"}; 5s to 120s. Default: 60s.
	KeepAlive caddy.Duration `json:"keepalive,omitempty"`

	// PingInterval is how often connections are pinged. Default: 30s.
	PingInterval caddy.Duration `json:"ping_interval,omitempty"`

	// IdleTimeout drops a connection that sent nothing, pongs included, for
	// this long. Default: 120s.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// WriteTimeout bounds each write to a client; a client that does not
	// take a frame within it is disconnected. Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// RequestTimeout bounds a server request awaiting the client's reply.
	// Default: 5s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`

	// ShutdownSpread spreads the 1001 closes of a shutdown over this window,
	// in random order, so clients do not all reconnect in the same second.
	// Zero closes all at once. Default: 5s.
	ShutdownSpread *caddy.Duration `json:"shutdown_spread,omitempty"`

	// Compression turns on permessage-deflate (RFC 7692) for clients that
	// offer it, with no context takeover, so each published frame is
	// compressed once for all its subscribers. Absent: off.
	Compression *CompressionConfig `json:"compression,omitempty"`

	// Limits bound what one client or IP may cost.
	Limits *LimitsConfig `json:"limits,omitempty"`

	// Replay keeps recent events of matching topics so reconnecting clients
	// resume without gaps and replay requests are answered (docs/protocol.md §5).
	// The first matching entry wins. Default: none.
	Replay []ReplayConfig `json:"replay,omitempty"`

	// Presence tracks who is on matching topics (docs/protocol.md §6.1).
	// Default: none.
	Presence []PresenceConfig `json:"presence,omitempty"`

	// Cursors shares pointer positions on matching topics (docs/protocol.md
	// §6.2). Default: none.
	Cursors []CursorConfig `json:"cursors,omitempty"`

	// Groups are broadcast groups with roles and capacity (docs/protocol.md
	// §6.3). Default: none.
	Groups []GroupConfig `json:"groups,omitempty"`

	// RateLimit limits application frames per key, with bans, and backs the
	// API's /ratelimit routes. Default: none.
	RateLimit *RateLimitConfig `json:"rate_limit,omitempty"`

	// EventsHook receives group and presence events (join, leave, full,
	// close) as POSTs, best effort. Default: none.
	EventsHook *HookConfig `json:"events_hook,omitempty"`

	// Notify bridges PostgreSQL NOTIFY channels to clients: each valid
	// notification becomes a publish. Needs the global postgres option.
	// Default: none.
	Notify []NotifyConfig `json:"notify,omitempty"`

	logger *zap.Logger
	app    *App
	cfg    handlers.Config // checked and defaulted by Provision
	// poolKey names the gateway in the pool; key is set once start holds
	// a reference to it, which Cleanup gives back.
	poolKey string

	run *handlerRun
}

// handlerRun is a Handler's gateway, which start gets once.
type handlerRun struct {
	mu      sync.Mutex
	started bool
	err     error
	key     string // set once start holds a reference to the gateway
	gw      atomic.Pointer[handlers.Gateway]

	// unload is closed when this configuration stops (a reload or the
	// exit): the SSE streams its server took end, as that server goes.
	unload     chan struct{}
	unloadOnce sync.Once
}

// unloading closes unload, once.
func (r *handlerRun) unloading() { r.unloadOnce.Do(func() { close(r.unload) }) }

// APIConfig configures the HTTP API for app servers.
type APIConfig struct {
	// Path is the API's path prefix, e.g. /_realtime. Required.
	Path string `json:"path,omitempty"`

	// Key is the bearer key callers must present. Empty means only loopback
	// callers are served. Use a placeholder such as {env.REALTIME_API_KEY}.
	// Default: empty.
	Key string `json:"key,omitempty"`

	// MaxBody caps a request body in bytes; larger bodies get 413.
	// Default: 4 MiB.
	MaxBody int64 `json:"max_body,omitempty"`
}

// DashboardConfig configures the dashboard (docs/operations.md).
type DashboardConfig struct {
	// Path is where the dashboard is served, e.g. /_dashboard; it must
	// not overlap the WebSocket, api or auth paths. Required.
	Path string `json:"path,omitempty"`

	// Auth is who may open it: "key" asks for the api key (a bearer
	// header, or the login form once for a session cookie) and, without
	// a key, serves loopback callers only; "external" serves whoever the
	// handlers in front let through (basic_auth, forward_auth): with
	// nothing in front, anyone. Default: key.
	Auth string `json:"auth,omitempty"`
}

// SSEConfig configures the SSE endpoint.
type SSEConfig struct {
	// Path is the endpoint: GET <path>?topic=a&topic=b streams those
	// topics. It must differ from the WebSocket path and the auth path
	// and lie outside the API path. Required.
	Path string `json:"path,omitempty"`

	// KeepAlive is the quiet period after which a stream gets a
	// keep-alive comment, so proxies that drop idle responses keep it;
	// 5s to 120s. Default: 30s.
	KeepAlive caddy.Duration `json:"keepalive,omitempty"`
}

// HookConfig configures one call to the application.
type HookConfig struct {
	// URL is the hook's address (http or https). Required.
	URL string `json:"url,omitempty"`

	// Timeout bounds one call. Default: 10s for auth, 5s otherwise.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Headers lists extra request headers forwarded to the auth hook (Cookie,
	// Authorization, X-Forwarded-For and X-Request-ID always are).
	// Default: none.
	Headers []string `json:"headers,omitempty"`

	// MaxInFlight bounds concurrent calls to this hook across all
	// connections; excess upgrades get 503, excess subscribes
	// INTERNAL_ERROR, excess messages are dropped and counted.
	// Default: 1000 for auth, 256 otherwise.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	// Queue is the message hook's per-connection queue, in frames; a frame
	// arriving at a full queue is dropped and counted. Default: 64.
	Queue int `json:"queue,omitempty"`
}

// JWTConfig configures token verification. At least one of Secret,
// PublicKeys and JWKS is required.
type JWTConfig struct {
	// Secret verifies HS256, HS384 and HS512 tokens. Use a placeholder
	// such as {env.REALTIME_JWT_SECRET}.
	Secret string `json:"secret,omitempty"`

	// PublicKeys are files of PEM-encoded RSA, ECDSA or Ed25519 public
	// keys (RS*, PS*, ES*, EdDSA), read at provision time.
	PublicKeys []string `json:"public_keys,omitempty"`

	// JWKS is the URL of a JWKS endpoint. Its keys are fetched in the
	// background at start, refreshed every JWKSRefresh and when a token
	// names an unknown kid (at most every 30s); the last good keys stay
	// in use while the endpoint fails.
	JWKS string `json:"jwks,omitempty"`

	// JWKSRefresh is the background refresh interval. Default: 10m.
	JWKSRefresh caddy.Duration `json:"jwks_refresh,omitempty"`

	// Issuer and Audience, when set, must match the iss claim and be
	// named by the aud claim.
	Issuer   string `json:"issuer,omitempty"`
	Audience string `json:"audience,omitempty"`

	// Leeway is the clock skew allowed on exp, nbf and iat. Default: 0.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// From lists where a token is looked for, in order. Default: the
	// Authorization header's Bearer credentials.
	From []TokenSourceConfig `json:"from,omitempty"`

	// UserClaim names the claim that becomes the identity's user_key
	// field. Default: sub.
	UserClaim string `json:"user_claim,omitempty"`

	// IdentityClaims are claims copied into the identity under their own
	// names (what presence select and the hooks see). Default: none.
	IdentityClaims []string `json:"identity_claims,omitempty"`

	// TopicsClaim names a claim holding the topic patterns the token may
	// subscribe to. Default: none.
	TopicsClaim string `json:"topics_claim,omitempty"`

	// MaxSize refuses longer tokens, in bytes. Default: 4096.
	MaxSize int64 `json:"max_size,omitempty"`
}

// TokenSourceConfig is one place a token is looked for.
type TokenSourceConfig struct {
	// Source is header, cookie or query.
	Source string `json:"source,omitempty"`
	// Name is the header, cookie or query parameter name.
	Name string `json:"name,omitempty"`
}

// CompressionConfig configures permessage-deflate.
type CompressionConfig struct {
	// Level is the flate level, 1 (fastest) to 9 (smallest). Default: 1.
	Level int `json:"level,omitempty"`
	// MinSize is the frame size in bytes under which frames stay
	// uncompressed. Default: 256.
	MinSize int `json:"min_size,omitempty"`
}

// LimitsConfig bounds resources per connection and per client IP.
type LimitsConfig struct {
	// MaxPayload is the largest inbound frame in bytes; larger frames close
	// the connection with 1009. Default: 1 MiB.
	MaxPayload int64 `json:"max_payload,omitempty"`

	// MaxBackpressure is the most bytes queued for one client; beyond it the
	// SlowConsumer policy applies. Default: 1 MiB.
	MaxBackpressure int64 `json:"max_backpressure,omitempty"`

	// SlowConsumer is the policy for a client over MaxBackpressure: "close"
	// closes it with 1013 Slow consumer; "drop" drops the frame for that
	// client only and counts it. Default: close.
	SlowConsumer string `json:"slow_consumer,omitempty"`

	// UpgradeRate is the number of upgrades one client IP may make per
	// UpgradeWindow (sliding window); excess gets 429. Zero uses the default;
	// -1 disables the check. Default: 30.
	UpgradeRate int `json:"upgrade_rate,omitempty"`

	// UpgradeWindow is the window of UpgradeRate. Default: 10s.
	UpgradeWindow caddy.Duration `json:"upgrade_window,omitempty"`

	// MaxConnections caps open connections of this gateway; excess upgrades
	// get 503. Default: 0 (unlimited).
	MaxConnections int `json:"max_connections,omitempty"`

	// MaxSubscriptions caps topics per connection; excess subscribes are
	// denied RATE_LIMITED. Default: 1000.
	MaxSubscriptions int `json:"max_subscriptions,omitempty"`

	// InboundRate is the sustained rate of frames per second one connection
	// may send; excess frames are dropped and counted. -1 disables.
	// Default: 200.
	InboundRate int `json:"inbound_rate,omitempty"`

	// InboundBurst is the burst allowance of InboundRate. Default: 400.
	InboundBurst int `json:"inbound_burst,omitempty"`

	// RateLimitClose closes a connection with 4429 once it had more than
	// this many frames dropped within 10s. -1 never closes. Default: 1000.
	RateLimitClose int `json:"rate_limit_close,omitempty"`
}

// ReplayConfig enables a replay buffer on the topics matching a pattern.
type ReplayConfig struct {
	// Topics is the topic pattern ('*' matches any run of characters).
	// Required.
	Topics string `json:"topics,omitempty"`

	// Store is the backend: memory (this instance only), redis (shared,
	// seq order kept across instances) or postgres (durable). Default: memory.
	Store string `json:"store,omitempty"`

	// Table is the Postgres table of `store postgres` (schema-qualified
	// allowed); its counters live in <table>_seq. Default: realtime_replay.
	Table string `json:"table,omitempty"`

	// Size is how many events a topic keeps. Default: 1000.
	Size int `json:"size,omitempty"`

	// TTL drops a topic's events after this long without a publish; its seq
	// counter stays. Default: 0 (never).
	TTL caddy.Duration `json:"ttl,omitempty"`

	// TruncationNotice sends {"topic":t,"event":"truncated","data":null}
	// before a resume gap fill that could not cover the whole gap.
	// Default: true.
	TruncationNotice *bool `json:"truncation_notice,omitempty"`
}

// PresenceConfig enables presence on the topics matching a pattern.
type PresenceConfig struct {
	// Topics is the topic pattern. Required.
	Topics string `json:"topics,omitempty"`

	// Key is the field of the member's data (the selected projection of
	// the identity) naming a member; connections sharing its value are one
	// member (multi-tab). Without it, or when Select leaves it out, a
	// connection is its own member. Default: id.
	Key string `json:"key,omitempty"`

	// Select lists the identity fields a member's data shows. Default: the
	// whole identity minus secrets (keys starting with __, constructor,
	// prototype, and keys matching token|secret|password|auth|session|
	// cookie|jwt|credential, recursively).
	Select []string `json:"select,omitempty"`

	// Heartbeat is how often members and observers get the heartbeat frame
	// listing present keys; 0 turns it off. Default: 30s.
	Heartbeat *caddy.Duration `json:"heartbeat,omitempty"`

	// TTL is how long entries of a stopped instance survive. Default: 90s.
	TTL caddy.Duration `json:"ttl,omitempty"`
}

// CursorConfig enables shared cursors on the topics matching a pattern.
type CursorConfig struct {
	// Topics is the topic pattern. Required.
	Topics string `json:"topics,omitempty"`

	// Throttle is the per-connection leading- and trailing-edge throttle:
	// at most one update per connection and topic per interval, the
	// trailing one carrying the latest data. Default: 16ms.
	Throttle *caddy.Duration `json:"throttle,omitempty"`

	// TopicThrottle is the per-topic flush interval: changed entries go out
	// at most once per interval, one as update, several as one bulk frame.
	// At least 16ms. Default: 50ms.
	TopicThrottle caddy.Duration `json:"topic_throttle,omitempty"`

	// TTL is how long entries of a stopped instance survive. Default: 30s.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// Select lists the identity fields an entry's user shows. Default: as
	// presence, the identity minus secrets.
	Select []string `json:"select,omitempty"`

	// MaxData is the largest cursor payload in bytes of JSON; larger
	// cursor frames are dropped and counted. Default: 8192.
	MaxData int `json:"max_data,omitempty"`
}

// GroupConfig declares a broadcast group.
type GroupConfig struct {
	// Name is the group's name; its frames go on __group:<name>. Required.
	Name string `json:"name,omitempty"`

	// MaxMembers caps the group; joins beyond it are refused. 0: unlimited.
	// Default: 0.
	MaxMembers int `json:"max_members,omitempty"`

	// Meta is the group's initial metadata, a JSON object. Default: {}.
	Meta json.RawMessage `json:"meta,omitempty"`

	// MemberTTL is how long members of a stopped instance keep counting.
	// Default: 120s.
	MemberTTL caddy.Duration `json:"member_ttl,omitempty"`

	// RoleFrom is the identity field holding the member's role (member,
	// admin or viewer). Absent or unknown values join as member.
	// Default: none (everyone is a member).
	RoleFrom string `json:"role_from,omitempty"`

	// JoinOn lists topic patterns whose authorized subscribe joins the
	// group (and unsubscribe leaves it). Default: none (joins come from
	// legacy __group:<name> subscribes and the API).
	JoinOn []string `json:"join_on,omitempty"`
}

// NotifyConfig bridges one PostgreSQL NOTIFY channel: payloads are JSON
// objects naming a topic, an event and data, each published to the topic's
// subscribers. Payloads that are not such objects, or name a "__" topic,
// are dropped and counted.
type NotifyConfig struct {
	// Channel is the channel to LISTEN on, as pg_notify names it: letters,
	// digits and '_', up to 63 bytes, case-sensitive. Required.
	Channel string `json:"channel,omitempty"`

	// Mode is leader or all. leader: one instance, the holder of an
	// advisory lock on the LISTEN connection (id: LockID of the channel),
	// listens and publishes through the bus and replay store, so every
	// client gets each notification once and a replayed topic one seq;
	// when it dies another takes over within poll_interval. all: every
	// instance listens and delivers to its own clients only; topics
	// replayed in a shared store (redis, postgres) are dropped, since
	// each instance would store them. Default: leader with the global
	// redis option (a cluster), else all.
	Mode string `json:"mode,omitempty"`

	// TopicField, EventField and DataField name the payload's members
	// holding the topic, the event and the data (e.g. table, op, row).
	// Defaults: topic, event, data.
	TopicField string `json:"topic_field,omitempty"`
	EventField string `json:"event_field,omitempty"`
	DataField  string `json:"data_field,omitempty"`

	// PollInterval is how often a follower tries the leader lock: the
	// longest the channel goes unheard after its leader dies. Default: 2s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// Resync is a topic on which the gateway publishes event "resync"
	// with data {"channel":"<channel>"} whenever notifications may have
	// been lost: after the listener reconnects, and when an instance
	// takes the leadership. Clients refetch on it. Default: none.
	Resync string `json:"resync,omitempty"`
}

// RateLimitConfig limits application frames (and optionally subscribes).
type RateLimitConfig struct {
	// Points is how many frames a key may send per Interval. Default: 10.
	Points int `json:"points,omitempty"`

	// Interval is the refill period of Points. Default: 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// Block bans a key for this long once it exceeds its points.
	// Default: 0 (no ban; frames are limited until points refill).
	Block caddy.Duration `json:"block,omitempty"`

	// Key is what is limited: ip, connection, user (the presence key
	// field, user_key) or any other identity field. Default: ip.
	Key string `json:"key,omitempty"`

	// Action on an excess frame: drop (dropped and counted, the client is
	// told nothing) or close (close with 4429 Rate limited).
	// Default: drop.
	Action string `json:"action,omitempty"`

	// Subscribes counts subscribe frames too (each topic one point).
	// Default: false.
	Subscribes bool `json:"subscribes,omitempty"`

	// OnError is the policy when the limiter's backend (Redis) cannot
	// answer: allow (fail open: frames pass) or deny (fail closed: frames
	// are dropped). Default: allow.
	OnError string `json:"on_error,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.realtime", New: func() caddy.Module { return new(Handler) }}
}

// Provision maps the JSON config onto the gateway's and checks it. It
// builds no gateway and connects to nothing: the app's Start does (see
// start), so `caddy validate` stays cheap with every backend down.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.run = &handlerRun{unload: make(chan struct{})}
	if err := handlers.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	appModule, err := ctx.App("realtime")
	if err != nil {
		return fmt.Errorf("loading realtime app: %w", err)
	}
	app := appModule.(*App)
	cfg, err := h.gatewayConfig()
	if err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	for _, r := range cfg.Replay {
		if r.Store == handlers.ReplayStoreRedis && app.Redis == nil {
			return fmt.Errorf("replay %q: store redis needs the global option realtime { redis <url> }", r.Topics)
		}
		if r.Store == handlers.ReplayStorePostgres && app.Postgres == nil {
			return fmt.Errorf("replay %q: store postgres needs the global option realtime { postgres <dsn> }", r.Topics)
		}
	}
	if len(cfg.Notify) > 0 && app.Postgres == nil {
		return fmt.Errorf("notify %q: needs the global option realtime { postgres <dsn> }", cfg.Notify[0].Channel)
	}
	for i, n := range h.Notify {
		cfg.Notify[i].ConnString = app.notifyDSN
		// A cluster (Redis) defaults to one listener for all.
		if n.Mode == "" && app.Redis != nil {
			cfg.Notify[i].Mode = handlers.NotifyLeader
		}
		if cfg.Notify[i].Mode == handlers.NotifyLeader && app.Redis == nil {
			h.logger.Warn("notify mode leader without the global redis option: only the leader instance's clients get notifications", zap.String("channel", n.Channel))
		}
	}
	// The key covers the extension config: their state (buffers, members,
	// groups) cannot be carried into a different shape, so changing it
	// starts a new gateway and the old one closes its connections with 1001.
	// Every other option is applied to the live gateway by Reconfigure.
	// The Postgres pool, the notify DSN and the Redis client, key prefix
	// and channel are part of the gateway's identity too: the backends and
	// the bus are built with them.
	h.poolKey = "gateway:" + cfg.Name + ":" + h.extensionsFingerprint() + ":" + app.pgKey
	if len(cfg.Notify) > 0 {
		sum := sha256.Sum256([]byte(app.notifyDSN))
		h.poolKey += ":" + hex.EncodeToString(sum[:8])
	}
	h.poolKey += ":" + app.redisIdentity()
	h.app, h.cfg = app, cfg
	// On process exit, start closing WebSockets as soon as Caddy begins to
	// stop rather than after the HTTP servers' grace period: hijacked
	// connections are invisible to that grace period.
	if ev, err := ctx.App("events"); err == nil {
		if err := ev.(*caddyevents.App).On("stopping", drainOnExit{h}); err != nil {
			return fmt.Errorf("subscribing to the stopping event: %w", err)
		}
	}
	app.run.mu.Lock()
	app.run.handlers = append(app.run.handlers, h)
	app.run.mu.Unlock()
	return nil
}

// start gets the gateway from the pool, once: a reload that keeps the
// name keeps its connections and applies the new options to it. The
// app's Start calls it; so does the first request, should the http app
// start first. A failure is kept and returned again.
func (h *Handler) start() error {
	h.run.mu.Lock()
	defer h.run.mu.Unlock()
	if h.run.started {
		return h.run.err
	}
	h.run.started = true
	h.run.err = h.startGateway()
	return h.run.err
}

func (h *Handler) startGateway() error {
	app, cfg, logger := h.app, h.cfg, h.logger
	if err := app.connect(); err != nil {
		return err
	}
	// handlers.Config's slices are the handler's own: Provision defaulted
	// a copy, and start runs once.
	for i := range cfg.Replay {
		if cfg.Replay[i].Store == handlers.ReplayStorePostgres {
			pool, table := app.run.pg, cfg.Replay[i].Table
			cfg.Replay[i].NewStore = func(c replay.Config) (replay.Store, error) {
				return replay.NewPostgres(pool, replay.PostgresConfig{Config: c, Table: table})
			}
		}
	}
	opts := handlers.Options{Logger: logger, InstanceID: app.InstanceID, StateDir: filepath.Join(caddy.AppDataDir(), "realtime")}
	if app.run.redis != nil {
		app.wireRedis(&cfg, &opts)
	}
	options := h.optionsJSON()
	v, loaded, err := gateways.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		// The gateway holds its own references to the shared Redis client
		// and Postgres pool: Caddy may clean the app up before the
		// handler, and a draining gateway still needs them (leaves,
		// group memberships and replay reads of closing connections).
		release, err := app.holdClients()
		if err != nil {
			return nil, err
		}
		// Not ctx: the gateway outlives this config.
		gw, err := handlers.New(cfg, opts)
		if err != nil {
			release()
			return nil, err
		}
		p := newPooledGateway(gw, cfg.Name, h.identity(app), options, logger)
		p.release = release
		return p, nil
	})
	if err != nil {
		return fmt.Errorf("starting gateway %q: %w", cfg.Name, err)
	}
	h.run.key = h.poolKey
	pooled := v.(*pooledGateway)
	if loaded {
		if err := pooled.Reconfigure(cfg); err != nil {
			return fmt.Errorf("reconfiguring gateway %q: %w", cfg.Name, err)
		}
		pooled.logReconfigured(options)
	}
	h.run.gw.Store(pooled.Gateway)
	return nil
}

// wireRedis points the gateway's bus and backends at the shared Redis
// client.
func (a *App) wireRedis(cfg *handlers.Config, opts *handlers.Options) {
	client, rc := a.run.redis, a.Redis
	channel := rc.Channel
	if channel == "" {
		channel = bus.DefaultChannel
	}
	routing := rc.routing()
	// In compat mode the gateways' own traffic (direct sends, cursor and
	// group frames) stays off the reference package's channel.
	gatewayChannel := ""
	if routing == nil {
		gatewayChannel = rc.KeyPrefix + "rt:bus:gateway"
	}
	// sharded: on a Redis Cluster, topic channels are shard channels.
	sharded := routing != nil && routing.Partitions == 0
	// channelOf names the bus channel of a topic's store-published events.
	channelOf := func(string) string { return channel }
	if routing != nil {
		channelOf = routing.TopicChannel
	}
	opts.BusName = "redis"
	opts.NewBus = func(hooks handlers.BusHooks) (bus.Bus, error) {
		// StartUnreachable: a gateway starts (or reloads) during a Redis
		// outage, degraded, rather than failing Caddy's start.
		return bus.NewRedis(client, bus.RedisConfig{Channel: channel, GatewayChannel: gatewayChannel, Routing: routing, InstanceID: a.InstanceID, Handler: hooks.Handler, OnHealth: hooks.OnHealth, OnResync: hooks.OnResync, StartUnreachable: true,
			// Instances relay cursor and group frames to each other.
			EnvelopeOptions: bus.EnvelopeOptions{SystemTopics: wire.Patterns{wire.CursorPrefix + "*", wire.GroupPrefix + "*"}}})
	}
	prefix := rc.KeyPrefix
	// Direct sends and group publishes of the API, with the other
	// instances' delivery counts; NewRedis does not wait for Redis.
	opts.NewTally = func(h tally.Handler) (tally.Tally, error) {
		return tally.NewRedis(client, tally.RedisConfig{KeyPrefix: prefix, Gateway: cfg.WithDefaults().Name, InstanceID: a.InstanceID, Handler: h,
			EnvelopeOptions: bus.EnvelopeOptions{SystemTopics: wire.Patterns{wire.GroupPrefix + "*"}}})
	}
	// The dashboard's cluster view; it holds nothing until a dashboard
	// is opened, so every gateway on Redis gets one.
	if st, err := snapshot.NewRedis(client, snapshot.RedisConfig{KeyPrefix: prefix, Gateway: cfg.WithDefaults().Name}); err == nil {
		opts.Snapshots = st
	}
	// Each backend instance gets its own id: a tracker ignores its own
	// id's events and leases are per id, so two rules must not share one.
	var serial atomic.Int32
	backendID := func(kind string) string {
		return fmt.Sprintf("%s-%s%d", a.InstanceID, kind, serial.Add(1))
	}
	opts.Backends = handlers.Backends{
		Presence: func(c presence.Config) (presence.Tracker, error) {
			// StartUnreachable, as the bus: Caddy starts during a Redis
			// outage and presence joins once Redis is back.
			return presence.NewRedis(client, presence.RedisConfig{Config: c, KeyPrefix: prefix, InstanceID: backendID("p"), StartUnreachable: true})
		},
		Cursor: func(c cursor.Config) (cursor.Tracker, error) {
			return cursor.NewRedis(client, cursor.RedisConfig{Config: c, KeyPrefix: prefix, InstanceID: backendID("c")})
		},
		Groups: func(c groups.Config) (groups.Registry, error) {
			return groups.NewRedis(client, groups.RedisConfig{Config: c, KeyPrefix: prefix, InstanceID: backendID("g")})
		},
		RateLimit: func(c ratelimit.Config) (ratelimit.Limiter, error) {
			return ratelimit.NewRedis(client, ratelimit.RedisConfig{Config: c, KeyPrefix: prefix})
		},
	}
	for i := range cfg.Replay {
		switch cfg.Replay[i].Store {
		case handlers.ReplayStoreRedis:
			cfg.Replay[i].NewStore = func(c replay.Config) (replay.Store, error) {
				return replay.NewRedis(client, replay.RedisConfig{Config: c, KeyPrefix: prefix, Channel: channel, ChannelOf: channelOf,
					Sharded: sharded})
			}
		case handlers.ReplayStorePostgres:
			// In a cluster a Postgres buffer publishes each event on the
			// bus once its append has committed (replay.PostgresOnBus);
			// the receiving gateways put concurrent appends back in seq
			// order and fill what they miss from the table.
			newPG := cfg.Replay[i].NewStore
			cfg.Replay[i].NewStore = func(c replay.Config) (replay.Store, error) {
				st, err := newPG(c)
				if err != nil {
					return nil, err
				}
				pg, ok := st.(*replay.Postgres)
				if !ok {
					return st, nil
				}
				return replay.NewPostgresOnBus(pg, func(ctx context.Context, topic string, env []byte) error {
					ch, msg := channelOf(topic), rueidis.BinaryString(env)
					// On a Cluster the routed bus subscribes to shard
					// channels (bus.Redis), decided once connected.
					if sharded && client.Mode() == rueidis.ClientModeCluster {
						return client.Do(ctx, client.B().Spublish().Channel(ch).Message(msg).Build()).Error()
					}
					return client.Do(ctx, client.B().Publish().Channel(ch).Message(msg).Build()).Error()
				}), nil
			}
		}
	}
}

// gatewayConfig copies the JSON config onto handlers.Config, which
// checks and defaults it; only placeholders such as
// {env.REALTIME_API_KEY} in the key and hook URLs are resolved here.
func (h *Handler) gatewayConfig() (handlers.Config, error) {
	repl := caddy.NewReplacer()
	l := h.Limits
	if l == nil {
		l = &LimitsConfig{}
	}
	cfg := handlers.Config{
		Name:                h.Name,
		Path:                h.Path,
		Origins:             h.Origins,
		Public:              h.Public,
		UserKey:             h.UserKey,
		AllowNonASCIITopics: h.AllowNonASCIITopics,
		KeepAlive:           time.Duration(h.KeepAlive),
		PingInterval:        time.Duration(h.PingInterval),
		IdleTimeout:         time.Duration(h.IdleTimeout),
		WriteTimeout:        time.Duration(h.WriteTimeout),
		RequestTimeout:      time.Duration(h.RequestTimeout),
		ShutdownSpread:      optDuration(h.ShutdownSpread),
		Compression:         compressionConfig(h.Compression),
		MaxPayload:          l.MaxPayload,
		MaxBackpressure:     l.MaxBackpressure,
		SlowConsumer:        handlers.SlowConsumer(l.SlowConsumer),
		UpgradeRate:         l.UpgradeRate,
		UpgradeWindow:       time.Duration(l.UpgradeWindow),
		MaxConnections:      l.MaxConnections,
		MaxSubscriptions:    l.MaxSubscriptions,
		InboundRate:         l.InboundRate,
		InboundBurst:        l.InboundBurst,
		RateLimitClose:      l.RateLimitClose,
		ClientIP:            clientIP,
		TrustedProxy: func(r *http.Request) bool {
			trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
			return trusted
		},
	}
	if h.SSE != nil {
		if h.SSE.Path == "" {
			return cfg, errors.New("sse: path is required (e.g. \"sse\": {\"path\": \"/events\"})")
		}
		cfg.SSEPath, cfg.SSEKeepAlive = h.SSE.Path, time.Duration(h.SSE.KeepAlive)
	}
	if h.API != nil {
		if h.API.Path == "" {
			return cfg, errors.New("api: path is required (e.g. \"api\": {\"path\": \"/_realtime\"})")
		}
		// An unset {env.…} key resolves to empty: the API then serves only
		// loopback callers, which is the safe reading of "no key".
		key := repl.ReplaceAll(h.API.Key, "")
		cfg.APIPath, cfg.APIKey, cfg.APIMaxBody = h.API.Path, key, h.API.MaxBody
	}
	if d := h.Dashboard; d != nil {
		if d.Path == "" {
			return cfg, errors.New("dashboard: path is required (e.g. \"dashboard\": {\"path\": \"/_dashboard\"})")
		}
		cfg.DashboardPath, cfg.DashboardAuth = d.Path, handlers.DashboardAuth(d.Auth)
	}
	hook := func(name string, hc *HookConfig) (*handlers.HookConfig, error) {
		if hc == nil {
			return nil, nil
		}
		u, err := repl.ReplaceOrErr(hc.URL, true, true)
		if err != nil {
			return nil, fmt.Errorf("%s: resolving url: %w", name, err)
		}
		return &handlers.HookConfig{URL: u, Timeout: time.Duration(hc.Timeout), Headers: hc.Headers, MaxInFlight: hc.MaxInFlight, Queue: hc.Queue}, nil
	}
	for _, r := range h.Replay {
		notice := r.TruncationNotice == nil || *r.TruncationNotice
		cfg.Replay = append(cfg.Replay, handlers.ReplayConfig{Topics: r.Topics, Store: handlers.ReplayStore(r.Store), Table: r.Table,
			Size: r.Size, TTL: time.Duration(r.TTL), TruncationNotice: notice})
	}
	for _, p := range h.Presence {
		cfg.Presence = append(cfg.Presence, handlers.PresenceConfig{Topics: p.Topics, Key: p.Key, Select: p.Select,
			Heartbeat: optDuration(p.Heartbeat), TTL: time.Duration(p.TTL)})
	}
	for _, c := range h.Cursors {
		cfg.Cursors = append(cfg.Cursors, handlers.CursorConfig{Topics: c.Topics, Throttle: optDuration(c.Throttle),
			TopicThrottle: time.Duration(c.TopicThrottle), TTL: time.Duration(c.TTL), Select: c.Select, MaxData: c.MaxData})
	}
	for _, g := range h.Groups {
		cfg.Groups = append(cfg.Groups, handlers.GroupConfig{Name: g.Name, MaxMembers: g.MaxMembers, Meta: g.Meta,
			MemberTTL: time.Duration(g.MemberTTL), RoleFrom: g.RoleFrom, JoinOn: g.JoinOn})
	}
	if rl := h.RateLimit; rl != nil {
		cfg.RateLimit = &handlers.RateLimitConfig{Points: rl.Points, Interval: time.Duration(rl.Interval), Block: time.Duration(rl.Block),
			Key: rl.Key, Action: handlers.RateLimitAction(rl.Action), Subscribes: rl.Subscribes, OnError: handlers.RateLimitOnError(rl.OnError)}
	}
	for _, n := range h.Notify {
		cfg.Notify = append(cfg.Notify, handlers.NotifyConfig{Channel: n.Channel, Mode: handlers.NotifyMode(n.Mode), TopicField: n.TopicField,
			EventField: n.EventField, DataField: n.DataField, PollInterval: time.Duration(n.PollInterval), Resync: n.Resync})
	}
	var err error
	if cfg.JWT, err = h.jwtConfig(repl); err != nil {
		return cfg, err
	}
	cfg.AuthPath = h.AuthPath
	if cfg.EventsHook, err = hook("events_hook", h.EventsHook); err != nil {
		return cfg, err
	}
	if cfg.Auth, err = hook("auth", h.Auth); err != nil {
		return cfg, err
	}
	if cfg.SubscribeHook, err = hook("subscribe_hook", h.SubscribeHook); err != nil {
		return cfg, err
	}
	if cfg.MessageHook, err = hook("message_hook", h.MessageHook); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// jwtConfig maps the jwt block, resolving placeholders in the secret and
// the JWKS URL and reading the public key files.
func (h *Handler) jwtConfig(repl *caddy.Replacer) (*handlers.JWTConfig, error) {
	j := h.JWT
	if j == nil {
		return nil, nil
	}
	jwksURL, err := repl.ReplaceOrErr(j.JWKS, true, true)
	if err != nil {
		return nil, fmt.Errorf("jwt: resolving jwks: %w", err)
	}
	out := &handlers.JWTConfig{
		// An unset {env.…} secret resolves to empty: with no other key
		// the config is refused, never run with an empty HMAC key.
		Secret: repl.ReplaceAll(j.Secret, ""), JWKS: jwksURL, JWKSRefresh: time.Duration(j.JWKSRefresh),
		Issuer: j.Issuer, Audience: j.Audience, Leeway: time.Duration(j.Leeway),
		UserClaim: j.UserClaim, IdentityClaims: j.IdentityClaims, TopicsClaim: j.TopicsClaim, MaxSize: int(j.MaxSize),
	}
	for _, file := range j.PublicKeys {
		b, err := os.ReadFile(repl.ReplaceAll(file, ""))
		if err != nil {
			return nil, fmt.Errorf("jwt: public_key: %w", err)
		}
		out.PublicKeys = append(out.PublicKeys, b)
	}
	for _, src := range j.From {
		out.From = append(out.From, handlers.TokenSource{Kind: handlers.TokenSourceKind(src.Source), Name: src.Name})
	}
	return out, nil
}

// optDuration maps an optional duration: nil is the default (0), an
// explicit 0 turns the feature off (negative for handlers.Config, which
// keeps it off however often defaults are applied).
func optDuration(d *caddy.Duration) time.Duration {
	switch {
	case d == nil:
		return 0
	case *d == 0:
		return -1
	}
	return time.Duration(*d)
}

// extensionsFingerprint hashes the extension config (see Provision).
func (h *Handler) extensionsFingerprint() string {
	b, _ := json.Marshal([]any{h.Replay, h.Presence, h.Cursors, h.Groups, h.RateLimit, h.Notify})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// clientIP is the address Caddy resolved for the request, honouring the
// server's trusted_proxies.
func clientIP(r *http.Request) string {
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && v != "" {
		return v
	}
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i > strings.LastIndexByte(host, ']') {
		host = host[:i]
	}
	return strings.Trim(host, "[]")
}

// ServeHTTP serves upgrades on the WebSocket path and the API under its
// path; every other request goes to next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	gw := h.run.gw.Load()
	if gw == nil {
		// The http app started before the realtime app.
		if err := h.start(); err != nil {
			return caddyhttp.Error(http.StatusServiceUnavailable, err)
		}
		gw = h.run.gw.Load()
	}
	if gw.ServeHTTPUntil(w, r, h.run.unload) {
		// Never return an error once the gateway answered: after a hijack
		// Caddy would write a second response.
		return nil
	}
	return next.ServeHTTP(w, r)
}

// Cleanup releases this config's reference to the gateway; the last
// reference closes it. Safe after a failed Provision and idempotent.
func (h *Handler) Cleanup() error {
	if h.run == nil {
		return nil
	}
	h.run.unloading()
	h.run.mu.Lock()
	defer h.run.mu.Unlock()
	// A request arriving after Cleanup must not start a gateway again.
	h.run.started, h.run.err = true, errors.New("the configuration of this handler was unloaded")
	if h.run.key == "" {
		return nil
	}
	key := h.run.key
	h.run.key = ""
	_, err := gateways.Delete(key)
	return err
}

// drainOnExit starts a gateway's drain when the process is exiting; on a
// reload (also a "stopping" event) the gateway lives on, and only the SSE
// streams of the stopping configuration's server end.
type drainOnExit struct{ h *Handler }

// Handle implements caddyevents.Handler.
func (d drainOnExit) Handle(context.Context, caddy.Event) error {
	// A stream is a request of the server being stopped, which would wait
	// for it for ever (the default grace period), keeping the old
	// configuration's server alive after a reload.
	d.h.run.unloading()
	gw := d.h.run.gw.Load()
	if gw != nil && caddy.Exiting() {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), gw.ShutdownBudget())
			defer cancel()
			if err := gw.Close(ctx); err != nil {
				d.h.logger.Warn("draining the gateway on exit", zap.Error(err))
			}
		}()
	}
	return nil
}

// identity lists what the gateway's pool key is made of, part by part
// (see Provision), so that a reload that replaces the gateway can say
// which part changed. Values are fingerprints, never secrets.
func (h *Handler) identity(app *App) map[string]string {
	hash := func(v any) string {
		b, _ := json.Marshal(v)
		sum := sha256.Sum256(b)
		return hex.EncodeToString(sum[:8])
	}
	return map[string]string{
		"replay rules":   hash(h.Replay),
		"presence rules": hash(h.Presence),
		"cursor rules":   hash(h.Cursors),
		"groups":         hash(h.Groups),
		"rate_limit":     hash(h.RateLimit),
		"notify":         hash([]any{h.Notify, app.notifyDSN}),
		"postgres":       app.pgKey,
		"redis":          app.redisIdentity(),
	}
}

// redisIdentity is what of the redis option a gateway is built with: the
// client (redisKey) and the key prefix and channel. Empty without Redis.
func (a *App) redisIdentity() string {
	if a.Redis == nil {
		return ""
	}
	sum := sha256.Sum256([]byte(fmt.Sprint(a.Redis.KeyPrefix, "\x00", a.Redis.Channel, "\x00", a.Redis.Compat, "\x00", a.Redis.Partitions)))
	return a.redisKey + ":" + hex.EncodeToString(sum[:8])
}

// optionsJSON is the handler's configuration by top-level JSON field, for
// telling which options a live reload changed.
func (h *Handler) optionsJSON() map[string]string {
	b, _ := json.Marshal(h)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

// liveGateways lists, by gateway name, the pooled gateways alive, oldest
// first: when one is destructed while another of its name lives, a
// reload replaced it, and the difference of their identities says why.
var (
	liveGatewaysMu sync.Mutex
	liveGateways   = map[string][]*pooledGateway{}
)

// pooledGateway adapts a gateway to caddy.Destructor and remembers what it
// was built from, to log what a reload does to it.
type pooledGateway struct {
	*handlers.Gateway
	name     string
	identity map[string]string
	logger   *zap.Logger
	release  func() // drops the gateway's references to the shared clients

	mu      sync.Mutex
	options map[string]string // the configuration last applied
}

func newPooledGateway(gw *handlers.Gateway, name string, identity, options map[string]string, logger *zap.Logger) *pooledGateway {
	p := &pooledGateway{Gateway: gw, name: name, identity: identity, options: options, logger: logger}
	liveGatewaysMu.Lock()
	liveGateways[name] = append(liveGateways[name], p)
	liveGatewaysMu.Unlock()
	return p
}

// logReconfigured logs a reload that kept the gateway: which options it
// applied live, with no connection closed.
func (p *pooledGateway) logReconfigured(options map[string]string) {
	p.mu.Lock()
	changed := changedKeys(p.options, options)
	p.options = options
	p.mu.Unlock()
	if len(changed) == 0 {
		p.logger.Debug("reload kept the gateway unchanged", zap.String("gateway", p.name))
		return
	}
	p.logger.Info("reload applied new options to the live gateway; no connection closed",
		zap.String("gateway", p.name), zap.Strings("changed", changed), zap.Int("connections", p.Stats().Connections))
}

// changedKeys lists, sorted, the keys whose values differ between a and b.
func changedKeys(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// Destruct closes every connection with 1001 and waits for the gateway's
// goroutines, bounded so Caddy's exit never hangs. It first logs why: a
// reload that replaced the gateway (and which part of the configuration
// made it necessary), the gateway leaving the configuration, or Caddy
// stopping. Each connection then logs its id at debug as it closes.
func (p *pooledGateway) Destruct() error {
	liveGatewaysMu.Lock()
	newest := slices.Index(liveGateways[p.name], p) == len(liveGateways[p.name])-1
	live := slices.DeleteFunc(liveGateways[p.name], func(q *pooledGateway) bool { return q == p })
	if len(live) == 0 {
		delete(liveGateways, p.name)
	} else {
		liveGateways[p.name] = live
	}
	liveGatewaysMu.Unlock()
	n := p.Stats().Connections
	level := zap.WarnLevel
	if n == 0 {
		level = zap.InfoLevel
	}
	fields := []zap.Field{zap.String("gateway", p.name), zap.Int("connections", n)}
	switch {
	case len(live) > 0 && newest:
		// An older gateway of this name outlives it: the config that
		// built it failed to load, or its reload was rolled back.
		p.logger.Log(level, "a configuration that was not applied built this gateway: closing it", fields...)
	case len(live) > 0:
		var reasons []string
		for _, part := range changedKeys(p.identity, live[len(live)-1].identity) {
			reasons = append(reasons, part+" changed")
		}
		p.logger.Log(level, "reload replaced the gateway: closing its connections with 1001 so that clients reconnect and resume",
			append(fields, zap.String("reason", strings.Join(reasons, ", ")))...)
	case caddy.Exiting():
		p.logger.Info("Caddy is stopping: closing the gateway's connections with 1001", fields...)
	default:
		p.logger.Log(level, "the gateway left the configuration: closing its connections with 1001", fields...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.ShutdownBudget())
	defer cancel()
	err := p.Close(ctx)
	if p.release != nil {
		p.release()
	}
	return err
}

// Interface guards
var (
	_ caddy.App                   = (*App)(nil)
	_ caddy.Provisioner           = (*App)(nil)
	_ caddy.CleanerUpper          = (*App)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Destructor            = (*pooledGateway)(nil)
)

func compressionConfig(c *CompressionConfig) *handlers.CompressionConfig {
	if c == nil {
		return nil
	}
	return &handlers.CompressionConfig{Level: c.Level, MinSize: c.MinSize}
}
