// Package handlers is the HTTP side of the gateway: the WebSocket upgrade
// and connection loops, the hub that fans published frames out to
// subscribers, the HTTP API for app servers, and the calls to app hooks.
//
// A Gateway is safe for concurrent use. It owns its goroutines: one read
// loop per connection, a write loop per connection only while frames are
// queued, a message-hook worker per connection only while messages wait,
// a sweeper and the other once-a-second loops, and a dashboard sampler;
// Close stops them all.
package handlers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/caddy-realtime/realtime/extensions/bus"
	"github.com/caddy-realtime/realtime/extensions/ratelimit"
	"github.com/caddy-realtime/realtime/extensions/replay"
	"github.com/caddy-realtime/realtime/extensions/snapshot"
	"github.com/caddy-realtime/realtime/extensions/tally"
	"github.com/caddy-realtime/realtime/extensions/wire"
)

// Errors of the request/reply API.
var (
	errLegacyConnection = errors.New("connection speaks the legacy protocol, which has no requests")
	errConnectionClosed = errors.New("connection closed")
	errRequestTimeout   = errors.New("request timed out")
	errUnknownConn      = errors.New("no such connection")
)

// Options carries what a Gateway needs besides its Config.
type Options struct {
	// Logger receives the gateway's logs. Default: a no-op logger.
	Logger *zap.Logger

	// InstanceID names this instance on the bus. Default: a random UUID.
	InstanceID string

	// NewBus builds the bus that relays publishes to other instances,
	// wired to the gateway's BusHooks. Default: an in-memory bus alone on
	// this instance (nothing to relay).
	NewBus func(hooks BusHooks) (bus.Bus, error)

	// StateDir is where the gateway keeps what it must remember across a
	// restart of the process: a marker that tells a memory replay store's
	// restart from its first start (see memoryBase). Default: "", memory
	// stores count from 1 on every start.
	StateDir string

	// NewTally builds what carries direct sends and group publishes of
	// the HTTP API to the other instances and collects their delivery
	// counts (tally.go), wired to the gateway's delivery. Default: none,
	// the instance is alone and its counts are the cluster's; the bus
	// relays those messages then.
	NewTally func(h tally.Handler) (tally.Tally, error)

	// BusName names the bus backend in GET /health. Default: memory.
	BusName string

	// Backends builds the extensions' state. Default: memory backends.
	Backends Backends

	// Snapshots shares the dashboard's stats snapshots with the other
	// instances of a cluster (dashboard_stats.go). Default: none, the
	// dashboard shows this instance only.
	Snapshots snapshot.Store
}

// logPanic logs a panic recovered in one of the gateway's goroutines, with
// its stack; the goroutine's work goes on or ends, never the process.
func (g *Gateway) logPanic(where string, p any) {
	g.logger.Error("panic in a gateway goroutine (recovered)",
		zap.String("where", where), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
}

// BusHooks are the gateway's callbacks a bus calls; none may block.
type BusHooks struct {
	// Handler receives the units other instances published.
	Handler bus.Handler
	// OnHealth reports the bus's health changes.
	OnHealth func(healthy bool)
	// OnResync reports that units may have been missed (a resubscription,
	// a dropped unit): the gateway then fills the replayed topics it
	// delivers from their stores.
	OnResync func()
}

// Gateway is one realtime endpoint: its connections, topic index, HTTP API
// and hooks. It outlives config reloads that keep its name; Reconfigure
// applies a reloaded config to it.
type Gateway struct {
	cfg        atomic.Pointer[settings]
	logger     *zap.Logger
	m          *gatewayMetrics
	hub        *hub
	bus        bus.Bus
	router     bus.Router  // bus, when it routes per topic (route.go); nil otherwise
	tally      tally.Tally // nil: alone, counts are local (tally.go)
	instanceID string
	client     *http.Client
	upgrades   *ipWindow
	started    time.Time

	ctx    context.Context // ends when the gateway closes; parent of every socket operation
	cancel context.CancelFunc
	// posting outlives ctx: messages a client sent before it went away and
	// queued events are still posted to the app while Close drains, until
	// Close runs out of its budget.
	posting     context.Context
	stopPosting context.CancelFunc
	wg          sync.WaitGroup // read loops, write loops, hook workers, the sweeper

	draining  atomic.Bool
	closed    chan struct{} // closed when Close has finished draining
	lifeMu    sync.RWMutex  // orders accepting a connection against Close's snapshot
	conns     connIndex
	closeOnce sync.Once

	busName string
	healthy atomic.Bool // the shared backends are reachable (docs/protocol.md §4.3)

	ext      *extensions // replay, presence, cursors, groups, rate limit: fixed for the gateway's life
	presence presenceTopics
	cursors  cursorTopics
	events   eventPoster
	notify   []*notifyBridge // PostgreSQL NOTIFY channels (notify.go); fixed for the gateway's life

	memoryBase uint64 // where memory replay stores count from (memoryBase)

	tokens tokenState // the jwt verifier and its JWKS fetcher (token.go)

	dash      dashState      // the dashboard's sampler and viewers (dashboard_stats.go)
	snapshots snapshot.Store // nil: no cluster view

	fillSem   chan struct{} // bounds the live fills reading stores at once (order.go)
	resyncSig chan struct{} // the bus may have missed units (order.go)
}

// extensions holds the gateway's extension state. It is built once: a
// config that changes extensions gets a new gateway (the pool key covers
// them), because their state cannot be carried over piecemeal.
type extensions struct {
	replay   []*replayRule
	shared   bool // some replay store is shared (not in memory): publishViaStores appends to it
	presence []*presenceRule
	cursors  []*cursorRule
	groups   map[string]*group
	rate     *rateRule
	logger   *zap.Logger // for the errors nobody waits for: initial meta, closes
}

// sweep lets memory backends drop expired buffers and idle keys.
func (e *extensions) sweep(now time.Time) {
	for _, r := range e.replay {
		switch s := r.store.(type) {
		case replay.Sweeper:
			s.Sweep(now)
		case replay.Cleaner:
			// Postgres drops expired topics' rows with an indexed query.
			ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
			if _, err := s.Cleanup(ctx); err != nil && e.logger != nil {
				e.logger.Warn("dropping expired replay entries failed; tried again in a minute", zap.String("pattern", string(r.pattern)), zap.Error(err))
			}
			cancel()
		}
	}
	if e.rate != nil {
		if s, ok := e.rate.limiter.(ratelimit.Sweeper); ok {
			s.Sweep(now)
		}
	}
}

// newExtensions builds the extensions' backends. Each builder returns
// the backends it built before failing, so one close releases them all.
func newExtensions(cfg Config, b Backends, g *Gateway) (*extensions, error) {
	e := &extensions{logger: g.logger}
	var err error
	e.replay, err = newReplayRules(cfg.Replay, cfg.Now, g.memoryBase)
	if err == nil {
		e.presence, err = newPresenceRules(cfg.Presence, b, cfg.Now, g.presenceRemote)
	}
	if err == nil {
		e.cursors, err = newCursorRules(cfg.Cursors, b, cfg.Now, g.cursorExpired)
	}
	if err == nil {
		e.groups, err = newGroups(cfg.Groups, b, cfg.Now, g.logger)
	}
	if err == nil {
		e.rate, err = newRateRule(cfg.RateLimit, b, cfg.Now)
	}
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.close(ctx, g.logger)
		return nil, err
	}
	for _, r := range e.replay {
		if !r.local {
			e.shared = true
		}
	}
	return e, nil
}

// New builds a gateway and starts its sweeper. The caller must Close it.
func New(cfg Config, opts Options) (*Gateway, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.InstanceID == "" {
		opts.InstanceID = uuid.NewString()
	}
	g := &Gateway{
		logger:     opts.Logger,
		m:          newGatewayMetrics(cfg.Name),
		instanceID: opts.InstanceID,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               nil, // hooks go straight to the app, never through an environment proxy
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     90 * time.Second,
			},
			// A hook's redirect is its answer: following it could take the
			// identity or the authorization from another endpoint.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		upgrades:  newIPWindow(),
		started:   cfg.Now(),
		snapshots: opts.Snapshots,
	}
	g.conns.init()
	if hasMemoryReplay(cfg.Replay) {
		g.memoryBase = memoryBase(opts.StateDir, cfg.Name, time.Now())
	}
	g.closed = make(chan struct{})
	if err := g.configureTokens(cfg); err != nil {
		return nil, err
	}
	g.cfg.Store(newSettings(cfg))
	// Before the extensions: their loops may call back into the hub as
	// soon as they exist.
	g.hub = newHub(g.stamp, func(t string) bool { return g.orderedRule(t) != nil })
	g.fillSem = make(chan struct{}, fillConcurrency)
	g.resyncSig = make(chan struct{}, 1)
	g.presence.g, g.cursors.g, g.events.g = g, g, g
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.posting, g.stopPosting = context.WithCancel(context.Background())
	// fail releases, newest first, whatever this call has built (the
	// extensions' loops and connections, the notify listeners, which are
	// not started yet), so a failed New leaves nothing running.
	fail := func(err error) (*Gateway, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.cancel()
		g.stopPosting()
		g.closeTokens()
		closeNotify(ctx, g.notify)
		if g.ext != nil {
			g.ext.close(ctx, g.logger)
		}
		g.client.CloseIdleConnections()
		return nil, err
	}
	ext, err := newExtensions(cfg, opts.Backends, g)
	if err != nil {
		return fail(err) // newExtensions released its own
	}
	g.ext = ext
	if g.notify, err = g.newNotify(cfg.Notify, cfg.AllowNonASCIITopics); err != nil {
		return fail(err) // newNotify released its own
	}
	newBus := opts.NewBus
	g.busName = opts.BusName
	if newBus == nil {
		g.busName = "memory"
		newBus = func(h BusHooks) (bus.Bus, error) {
			return bus.NewMemory(bus.MemoryConfig{Handler: h.Handler}), nil
		}
	}
	g.healthy.Store(true)
	metricBusHealthy.WithLabelValues(g.m.name, g.busName).Set(1)
	b, err := newBus(BusHooks{Handler: g.deliverRemote, OnHealth: g.setHealth, OnResync: g.resync})
	if err != nil {
		return fail(err)
	}
	g.bus = b
	g.router, _ = b.(bus.Router)
	if opts.NewTally != nil {
		if g.tally, err = opts.NewTally(g.deliverAsked); err != nil {
			if cl, ok := b.(bus.Closer); ok {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = cl.Close(ctx)
				cancel()
			}
			return fail(err)
		}
	}
	g.holdStaticRoutes()
	g.wg.Add(4)
	go g.sweeper()
	go g.backendLoop()
	go g.resyncLoop()
	go g.dashboardLoop()
	// Last: a notification publishes through the hub, stores and bus.
	for _, nb := range g.notify {
		nb.l.Start()
	}
	return g, nil
}

// Reconfigure applies a new config to the live gateway: limits, hooks,
// origins, timeouts and the API take effect for every later frame and
// request; open connections stay open. The name and path of a gateway
// are its identity and cannot change here.
func (g *Gateway) Reconfigure(cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := g.configureTokens(cfg); err != nil {
		return err
	}
	g.cfg.Store(newSettings(cfg))
	return nil
}

func (g *Gateway) settings() *settings { return g.cfg.Load() }
func (g *Gateway) now() time.Time      { return g.settings().Now() }

// ServeHTTP serves the gateway's paths: WebSocket upgrades on Path, SSE
// streams on SSEPath, the auth preflight and the API under APIPath. It
// reports false, writing nothing, for every other request, which the
// caller passes on (to reverse_proxy, typically).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) bool {
	return g.ServeHTTPUntil(w, r, nil)
}

// ServeHTTPUntil is ServeHTTP for a server that goes away before the
// gateway does: once unload is closed (Caddy unloading the configuration
// whose server took the request, on a reload) the SSE streams it serves
// end, spread over ShutdownSpread, and their clients reconnect to the
// server that replaced it. A WebSocket, hijacked from its server, stays.
func (g *Gateway) ServeHTTPUntil(w http.ResponseWriter, r *http.Request, unload <-chan struct{}) bool {
	s := g.settings()
	if s.APIPath != "" && pathUnder(r.URL.Path, s.APIPath) {
		g.serveAPI(w, r, s)
		return true
	}
	if s.DashboardPath != "" && pathUnder(r.URL.Path, s.DashboardPath) {
		g.serveDashboard(w, r, s)
		return true
	}
	if s.AuthPath != "" && s.AuthPath != AuthPathOff && r.URL.Path == s.AuthPath {
		g.servePreflight(w, r, s)
		return true
	}
	if s.SSEPath != "" && r.URL.Path == s.SSEPath {
		g.serveSSE(w, r, s, unload)
		return true
	}
	if r.URL.Path != s.Path || !isUpgrade(r) {
		return false
	}
	g.serveUpgrade(w, r, s)
	return true
}

// Close drains the gateway: new upgrades get 503, every connection is
// closed with 1001 "Server shutting down" in random order spread over
// ShutdownSpread, then it waits for every goroutine, bounded by ctx. Every
// call waits for the one drain, which the first caller's ctx bounds (Caddy
// starts it at the stopping event and waits for it at cleanup).
func (g *Gateway) Close(ctx context.Context) error {
	first, err := false, error(nil)
	g.closeOnce.Do(func() {
		first = true
		err = g.drain(ctx) // the first caller's ctx bounds the drain
		g.closeTokens()
		close(g.closed)
	})
	if first {
		return err
	}
	// Later callers only wait: the drain's own error was its first caller's.
	select {
	case <-g.closed:
		return nil
	default:
	}
	select {
	case <-g.closed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain is Close's one run.
func (g *Gateway) drain(ctx context.Context) error {
	var err error
	{
		// First: no notification publishes into a closing gateway, and a
		// leader's lock is freed for another instance at once.
		closeNotify(ctx, g.notify)
		g.lifeMu.Lock()
		g.draining.Store(true)
		g.lifeMu.Unlock()
		conns := g.conns.all()
		rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
		spread := g.settings().ShutdownSpread
		start := time.Now()
		var closers sync.WaitGroup
		sem := make(chan struct{}, 256)
	closing:
		for i, c := range conns {
			if spread > 0 && len(conns) > 1 {
				at := start.Add(spread * time.Duration(i) / time.Duration(len(conns)))
				if d := time.Until(at); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
					}
				}
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				// Out of time: the ctx branch below drops what is left. A
				// closer started without a slot would block forever on <-sem
				// (TestGatewayCloseWithExpiredContextLeavesNoGoroutines).
				break closing
			}
			closers.Add(1)
			go func() {
				defer closers.Done()
				defer func() { <-sem }()
				defer c.recoverPanic("shutdown close")
				c.closeWith(websocket.StatusGoingAway, "Server shutting down")
			}()
		}
		done := make(chan struct{})
		go func() {
			closers.Wait()
			g.presence.stop()
			g.cursors.stop()
			g.cancel() // ends the sweeper
			// Read loops end when their socket closes; closeWith closed
			// every socket above, this catches any that slipped past.
			for _, c := range g.conns.all() {
				c.closeNow()
			}
			g.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			g.cancel()
			g.stopPosting()
			for _, c := range g.conns.all() {
				c.closeNow()
			}
			err = ctx.Err()
		}
		g.stopPosting()
		g.ext.close(ctx, g.logger)
		if cl, ok := g.tally.(tally.Closer); ok {
			if e := cl.Close(ctx); e != nil && err == nil {
				err = e
			}
		}
		if cl, ok := g.bus.(bus.Closer); ok {
			if e := cl.Close(ctx); e != nil && err == nil {
				err = e
			}
		}
		g.client.CloseIdleConnections()
	}
	return err
}

// sweeper is the connections' one clock: keep-alive heartbeats, pings,
// idle drops and topic-index trimming, so no connection holds a timer. It
// does no network I/O, so a slow backend never delays a keep-alive.
func (g *Gateway) sweeper() {
	lastTrim := time.Now()
	g.everySecond("sweeper", func() {
		s := g.settings()
		now := s.Now()
		g.sweepConns(s, now)
		g.upgrades.trim(now, s.UpgradeWindow)
		if now.Sub(lastTrim) > time.Minute {
			g.hub.sweep(now, 10*time.Minute)
			lastTrim = now
		}
	})
}

// backendLoop is the clock of the work that waits on backends: presence
// heartbeat frames, presence joins that failed during an outage, and the
// stores' expiry sweeps. Its calls run without any topic lock.
func (g *Gateway) backendLoop() {
	lastSweep := time.Now()
	g.everySecond("backend loop", func() {
		now := g.settings().Now()
		g.presenceHeartbeat(now)
		g.presence.retryJoins(now)
		if now.Sub(lastSweep) > time.Minute {
			g.ext.sweep(now)
			lastSweep = now
		}
	})
}

// everySecond runs round once a second until the gateway closes, each
// round safely; it is a goroutine of g.wg.
func (g *Gateway) everySecond(where string, round func()) {
	defer g.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-tick.C:
		}
		g.safely(where, round)
	}
}

// safely runs one round of a long-lived loop: a panic is logged and the
// loop goes on with its next round.
func (g *Gateway) safely(where string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			g.logPanic(where, r)
		}
	}()
	f()
}

func (g *Gateway) sweepConns(s *settings, now time.Time) {
	n := now.UnixNano()
	for _, c := range g.conns.all() {
		if c.sse != nil {
			// An SSE client sends nothing to time out on: a dead one is
			// found by its failing writes (the keep-alive comments bound
			// how long that takes) and by its request's context.
			if n-c.lastWrite.Load() >= int64(s.SSEKeepAlive) {
				c.lastWrite.Store(n)
				c.send(wire.HeartbeatFrame)
			}
			continue
		}
		if n-c.lastRead.Load() > int64(s.IdleTimeout) {
			// Half-open or silent: the read loop ends and cleans up (docs/design.md, conventions §9.5).
			c.ws.CloseNow()
			continue
		}
		if n-c.lastWrite.Load() >= int64(s.KeepAlive) {
			c.lastWrite.Store(n) // one heartbeat per quiet period, even while it is queued
			c.send(wire.HeartbeatFrame)
		}
		if n-c.lastPing >= int64(s.PingInterval) {
			c.lastPing = n
			g.wg.Add(1)
			go g.ping(c, s.PingInterval)
		}
	}
}

// ping sends a ping; the pong (handled on the read loop) refreshes lastRead.
// A missing pong is caught by the idle check, not here.
func (g *Gateway) ping(c *conn, timeout time.Duration) {
	defer g.wg.Done()
	defer c.recoverPanic("ping")
	ctx, cancel := context.WithTimeout(g.ctx, timeout)
	defer cancel()
	_ = c.ws.Ping(ctx)
}

// connIndex finds connections by id and by user.
type connIndex struct {
	mu     sync.RWMutex
	byID   map[string]*conn
	byUser map[string]map[*conn]struct{}
}

func (x *connIndex) init() {
	x.byID = make(map[string]*conn)
	x.byUser = make(map[string]map[*conn]struct{})
}

func (x *connIndex) add(c *conn) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.byID[c.id] = c
	if c.user != "" {
		set := x.byUser[c.user]
		if set == nil {
			set = make(map[*conn]struct{})
			x.byUser[c.user] = set
		}
		set[c] = struct{}{}
	}
	return len(x.byID)
}

func (x *connIndex) remove(c *conn) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.byID, c.id)
	if set := x.byUser[c.user]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(x.byUser, c.user)
		}
	}
}

func (x *connIndex) get(id string) *conn {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.byID[id]
}

func (x *connIndex) user(u string) []*conn {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]*conn, 0, len(x.byUser[u]))
	for c := range x.byUser[u] {
		out = append(out, c)
	}
	return out
}

func (x *connIndex) all() []*conn {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]*conn, 0, len(x.byID))
	for _, c := range x.byID {
		out = append(out, c)
	}
	return out
}

func (x *connIndex) count() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byID)
}

func (g *Gateway) unregister(c *conn) {
	g.conns.remove(c)
	g.m.connections.Dec()
	if c.sse != nil {
		g.m.sseConnections.Dec()
	}
}

// ShutdownBudget is how long Close may take before it gives up waiting:
// the spread, plus the close handshake's own bound (coder/websocket waits
// up to 5 s for each peer's close frame).
func (g *Gateway) ShutdownBudget() time.Duration {
	return g.settings().ShutdownSpread + 7*time.Second
}

// setHealth tells every connection that a shared backend became unhealthy
// (degraded) or healed (recovered), on __realtime (docs/protocol.md §4.3). It is
// the bus's health callback: it only enqueues.
func (g *Gateway) setHealth(healthy bool) {
	if g.healthy.Swap(healthy) == healthy {
		return
	}
	metricBusHealthy.WithLabelValues(g.m.name, g.busName).Set(boolGauge(healthy))
	g.dash.busChanged(healthy, time.Now())
	event := "recovered"
	if !healthy {
		event = "degraded"
		g.logger.Warn("the bus lost its backend: local delivery continues, clients are told degraded", zap.String("bus", g.busName))
	} else {
		g.logger.Info("the bus recovered", zap.String("bus", g.busName))
	}
	data := strconv.AppendInt([]byte(`{"at":`), g.now().UnixMilli(), 10)
	frame := wire.AppendEnvelope(nil, wire.HealthTopic, event, append(data, '}'), 0)
	for _, c := range g.conns.all() {
		c.send(frame)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// relaySystem sends one of the gateway's own frames (cursor and group
// frames) to the other instances, which deliver it to their local
// recipients. frame is the encoded envelope; its data is relayed as is.
func (g *Gateway) relaySystem(topic, event string, frame []byte) {
	g.relaySystemTo(topic, event, frame, "")
}

// relaySystemTo is relaySystem with a group role filter.
func (g *Gateway) relaySystemTo(topic, event string, frame []byte, role string) {
	if g.busName == "memory" {
		return // alone: nobody to relay to
	}
	data := envelopeData(frame)
	m := bus.Message{Topic: topic, Event: event, Data: data}
	if role != "" {
		// A role-filtered group frame travels as a "direct send" to the
		// pseudo-user role:<role>, which deliverSystem recognizes on
		// __group: topics only. On purpose, not a role field of its own:
		// a node of the reference package on the same channel delivers a
		// direct send to that user (nobody), where it would deliver an
		// envelope with an unknown field to every subscriber of the topic
		// and leak the frame to the other roles.
		m.User = "role:" + role
	}
	ctx, cancel := context.WithTimeout(g.ctx, storeTimeout)
	defer cancel()
	if err := g.bus.Publish(ctx, []bus.Message{m}); err != nil {
		g.logger.Debug("relaying a system frame failed", zap.String("topic", topic), zap.Error(err))
	}
}

// envelopeData returns the data of an envelope AppendEnvelope encoded
// without seq: everything between `"data":` and the final brace.
func envelopeData(frame []byte) []byte {
	i := bytes.Index(frame, []byte(`","data":`))
	if i < 0 {
		return nil
	}
	return frame[i+len(`","data":`) : len(frame)-1]
}
