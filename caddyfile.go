package realtime

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/caddy-realtime/realtime/handlers"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("realtime", parseHandlerCaddyfile)
	// Right after encode, as Mercure does: after basic_auth and forward_auth
	// (their placeholders are set), before handle/route blocks, templates,
	// respond, reverse_proxy and file_server, so the upgrade and API paths
	// win without an order line.
	httpcaddyfile.RegisterDirectiveOrder("realtime", httpcaddyfile.After, "encode")
	httpcaddyfile.RegisterGlobalOption("realtime", parseGlobalOption)
}

// parseHandlerCaddyfile sets up the `realtime` directive. The matcher, if
// any, has already been taken off the dispenser by httpcaddyfile.
func parseHandlerCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return handler, nil
}

// parseGlobalOption sets up the `realtime` global option, which configures
// the `realtime` app.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("realtime global option already specified")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "realtime", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the `realtime` global option.
// Syntax:
//
//	{
//		realtime {
//			instance_id <id>
//			redis <url> {
//				key_prefix <prefix>
//				username <user>
//				password <password>
//				sentinel_username <user>
//				sentinel_password <password>
//				db <n>
//				tls
//				client_name <name>
//				compat uws
//				channel <channel>
//				partitions <n>
//			}
//			postgres <dsn> {
//				notify_dsn <dsn>
//				max_conns <n>
//				min_conns <n>
//			}
//		}
//	}
//
// Nothing is defaulted here: Provision does it, so `caddy adapt` shows only
// what was written.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	return eachOption(d, nil, func(opt string) error {
		switch opt {
		case "instance_id":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			a.InstanceID = v
		case "redis":
			r, err := parseRedis(d)
			if err != nil {
				return err
			}
			a.Redis = r
		case "postgres":
			p, err := parsePostgres(d)
			if err != nil {
				return err
			}
			a.Postgres = p
		default:
			return d.Errf("unrecognized subdirective: %s", opt)
		}
		return nil
	})
}

// parseRedis reads `redis <url> { … }` of the global option.
func parseRedis(d *caddyfile.Dispenser) (*RedisConfig, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	r := &RedisConfig{URL: d.Val()}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if !strings.HasPrefix(r.URL, "redis://") && !strings.HasPrefix(r.URL, "rediss://") &&
		!strings.HasPrefix(r.URL, "unix://") && !strings.HasPrefix(r.URL, "sentinel://") && !strings.HasPrefix(r.URL, "{") {
		// Never quote the value: it may carry a password.
		return nil, d.Errf("redis url must start with redis://, rediss://, unix:// or sentinel:// (or be a placeholder)")
	}
	if strings.HasPrefix(r.URL, sentinelScheme) && !strings.Contains(r.URL, "{") {
		if _, err := parseSentinelURL(r.URL); err != nil {
			return nil, d.Err(err.Error())
		}
	}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "key_prefix":
			r.KeyPrefix, err = singleArg(d)
		case "username":
			r.Username, err = singleArg(d)
		case "password":
			r.Password, err = singleArg(d)
		case "sentinel_username":
			r.SentinelUsername, err = singleArg(d)
		case "sentinel_password":
			r.SentinelPassword, err = singleArg(d)
		case "client_name":
			r.ClientName, err = singleArg(d)
		case "channel":
			r.Channel, err = singleArg(d)
		case "compat":
			r.Compat, err = singleArg(d)
		case "partitions":
			r.Partitions, err = intArg(d, 1)
		case "db":
			var n int
			n, err = intArg(d, 0)
			r.DB = &n
		case "tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.TLS = true
		default:
			return d.Errf("unrecognized redis subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return r, nil
}

// parsePostgres reads `postgres <dsn> [{ … }]` of the global option. The
// DSNs are never quoted back in errors: they may hold a password.
func parsePostgres(d *caddyfile.Dispenser) (*PostgresConfig, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	p := &PostgresConfig{DSN: d.Val()}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "notify_dsn":
			if !d.NextArg() {
				return d.ArgErr()
			}
			p.NotifyDSN = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			err = noBlock(d, opt)
		case "max_conns":
			var n int
			n, err = intArg(d, 1)
			p.MaxConns = int32(min(n, math.MaxInt32))
		case "min_conns":
			var n int
			n, err = intArg(d, 0)
			p.MinConns = int32(min(n, math.MaxInt32))
		default:
			return d.Errf("unrecognized postgres subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return p, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	realtime [<matcher>] {
//		name <name>
//		path <path>
//		api <path> {
//			key <key>
//			max_body <size>
//		}
//		dashboard <path> {
//			auth key|external
//		}
//		sse <path> {
//			keepalive <duration>
//		}
//		origins <same-origin|*|scheme://host[:port]...>
//		jwt {
//			secret <secret>
//			public_key <pem file>
//			jwks <url>
//			jwks_refresh <duration>
//			issuer <iss>
//			audience <aud>
//			leeway <duration>
//			from header|cookie|query <name>
//			user_claim <claim>
//			identity_claims <claim...>
//			topics_claim <claim>
//			max_size <size>
//		}
//		auth_path <path>|off
//		auth <url> {
//			timeout <duration>
//			headers <header...>
//			max_in_flight <n>
//		}
//		subscribe_hook <url> {
//			timeout <duration>
//			max_in_flight <n>
//		}
//		message_hook <url> {
//			timeout <duration>
//			max_in_flight <n>
//			queue <n>
//		}
//		public <pattern...>
//		user_key <field>
//		allow_non_ascii_topics
//		keepalive <duration>
//		ping_interval <duration>
//		idle_timeout <duration>
//		write_timeout <duration>
//		request_timeout <duration>
//		shutdown_spread <duration>
//		compression [{
//			level <1-9>
//			min_size <size>
//		}]
//		limits {
//			max_payload <size>
//			max_backpressure <size>
//			slow_consumer close|drop
//			upgrade_rate <n>/<duration>|off
//			max_connections <n>
//			max_subscriptions <n>
//			inbound_rate <n>[/s]|off
//			inbound_burst <n>
//			rate_limit_close <n>|off
//		}
//		replay <pattern> {
//			store memory|redis|postgres
//			table <name>
//			size <n>
//			ttl <duration>
//			truncation_notice on|off
//		}
//		presence <pattern> {
//			key <field>
//			select <field...>
//			heartbeat <duration>|off
//			ttl <duration>
//		}
//		cursor <pattern> {
//			throttle <duration>|off
//			topic_throttle <duration>
//			ttl <duration>
//			select <field...>
//			max_data <size>
//		}
//		group <name> {
//			max_members <n>
//			meta <key> <value>
//			member_ttl <duration>
//			role_from <field>
//			join_on <pattern...>
//		}
//		rate_limit {
//			points <n>
//			interval <duration>
//			block <duration>
//			key ip|connection|user|<field>
//			action drop|close
//			on_error allow|deny
//			subscribes
//		}
//		events_hook <url> {
//			timeout <duration>
//			max_in_flight <n>
//		}
//		notify <channel> {
//			mode all|leader
//			topic_field <field>
//			event_field <field>
//			data_field <field>
//			poll_interval <duration>
//			resync <topic>
//		}
//	}
//
// jwt requires a block; public_key and from may repeat (from is tried in
// the order written). Blocks after api, sse, auth, the hooks, replay, presence, cursor and group are
// optional; rate_limit requires one (it may be empty). Sizes take a unit
// (4MiB, 1MB) or plain bytes; durations use Caddy's syntax (10s, 1m30s, 1d).
// path and api paths start with '/'; hook URLs are http or https; keepalive
// is 5s to 120s; shutdown_spread may be 0 (close all at once); `off` sets
// the -1 that disables upgrade_rate, inbound_rate or rate_limit_close, and
// the 0 that disables a presence heartbeat or a cursor throttle.
// topic_throttle is at least 16ms.
//
// A topic pattern ('*' matches any run of characters) is printable ASCII
// without '"' or '\' and does not start with "__"; a group name is a topic
// name without spaces that does not start with "__". replay, presence,
// cursor, group and notify may repeat, each for a different pattern, name or
// channel; a notify channel is letters, digits and '_' (up to 63, not
// starting with a digit) and its resync topic a valid non-"__" topic; meta
// may repeat, each for a different key, and builds the group's metadata as
// a JSON object of strings in the order written. Every other option may
// appear once per block. Nothing is defaulted here: Provision does it, so
// `caddy adapt` shows only what was written.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return eachOption(d, repeatable, func(opt string) error {
		var err error
		switch opt {
		case "name":
			h.Name, err = singleArg(d)
		case "path":
			h.Path, err = pathArg(d)
		case "api":
			h.API, err = parseAPI(d)
		case "dashboard":
			h.Dashboard, err = parseDashboard(d)
		case "sse":
			h.SSE, err = parseSSE(d)
		case "origins":
			h.Origins, err = parseOrigins(d)
		case "auth":
			h.Auth, err = parseHook(d)
		case "jwt":
			h.JWT, err = parseJWT(d)
		case "auth_path":
			if h.AuthPath, err = singleArg(d); err == nil {
				err = check(d, handlers.CheckAuthPath(h.AuthPath))
			}
		case "subscribe_hook":
			h.SubscribeHook, err = parseHook(d)
		case "message_hook":
			h.MessageHook, err = parseHook(d)
		case "public":
			h.Public, err = listArg(d)
		case "user_key":
			h.UserKey, err = singleArg(d)
		case "allow_non_ascii_topics":
			if d.NextArg() {
				return d.ArgErr()
			}
			err = noBlock(d, opt)
			h.AllowNonASCIITopics = true
		case "keepalive":
			if h.KeepAlive, err = durationArg(d, false); err == nil {
				err = check(d, handlers.CheckKeepAlive(time.Duration(h.KeepAlive)))
			}
		case "ping_interval":
			h.PingInterval, err = durationArg(d, false)
		case "idle_timeout":
			h.IdleTimeout, err = durationArg(d, false)
		case "write_timeout":
			h.WriteTimeout, err = durationArg(d, false)
		case "request_timeout":
			h.RequestTimeout, err = durationArg(d, false)
		case "shutdown_spread":
			var dur caddy.Duration
			dur, err = durationArg(d, true)
			h.ShutdownSpread = &dur
		case "compression":
			h.Compression, err = parseCompression(d)
		case "limits":
			h.Limits, err = parseLimits(d)
		case "replay":
			var r ReplayConfig
			if r, err = parseReplay(d, h.Replay); err == nil {
				h.Replay = append(h.Replay, r)
			}
		case "presence":
			var p PresenceConfig
			if p, err = parsePresence(d, h.Presence); err == nil {
				h.Presence = append(h.Presence, p)
			}
		case "cursor":
			var c CursorConfig
			if c, err = parseCursor(d, h.Cursors); err == nil {
				h.Cursors = append(h.Cursors, c)
			}
		case "group":
			var g GroupConfig
			if g, err = parseGroup(d, h.Groups); err == nil {
				h.Groups = append(h.Groups, g)
			}
		case "rate_limit":
			h.RateLimit, err = parseRateLimit(d)
		case "events_hook":
			h.EventsHook, err = parseHook(d)
		case "notify":
			var n NotifyConfig
			if n, err = parseNotify(d, h.Notify); err == nil {
				h.Notify = append(h.Notify, n)
			}
		default:
			return d.Errf("unrecognized subdirective: %s", opt)
		}
		return err
	})
}

// repeatable lists the handler options that may appear more than once, each
// for a different pattern or name.
var repeatable = map[string]bool{"replay": true, "presence": true, "cursor": true, "group": true, "notify": true}

// parseDashboard parses `dashboard <path> [{ auth key|external }]`; the
// cursor is on "dashboard".
func parseDashboard(d *caddyfile.Dispenser) (*DashboardConfig, error) {
	if !d.NextArg() {
		return nil, argErr(d, "a path, like: dashboard /_dashboard")
	}
	p := d.Val()
	if d.NextArg() {
		return nil, argErr(d, "one path, like: dashboard /_dashboard")
	}
	if err := handlers.CheckPath("dashboard path", p); err != nil {
		return nil, d.WrapErr(err)
	}
	dc := &DashboardConfig{Path: p}
	if err := eachOption(d, nil, func(opt string) error {
		switch opt {
		case "auth":
			v, err := singleArg(d)
			if err == nil {
				_, err = handlers.ParseDashboardAuth(v)
				err = check(d, err)
			}
			dc.Auth = v
			return err
		default:
			return d.Errf("unrecognized dashboard subdirective: %s", opt)
		}
	}); err != nil {
		return nil, err
	}
	return dc, nil
}

// parseAPI parses `api <path> [{ … }]`; the cursor is on "api".
func parseAPI(d *caddyfile.Dispenser) (*APIConfig, error) {
	if !d.NextArg() {
		return nil, argErr(d, "a path prefix, like: api /_realtime")
	}
	p := d.Val()
	if d.NextArg() {
		return nil, argErr(d, "one path prefix, like: api /_realtime")
	}
	if err := handlers.CheckPath("api path", p); err != nil {
		return nil, d.WrapErr(err)
	}
	api := &APIConfig{Path: p}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "key":
			api.Key, err = singleArg(d)
		case "max_body":
			api.MaxBody, err = sizeArg(d)
		default:
			return d.Errf("unrecognized api subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return api, nil
}

// parseSSE parses `sse <path> [{ keepalive <duration> }]`; the cursor is
// on "sse".
func parseSSE(d *caddyfile.Dispenser) (*SSEConfig, error) {
	if !d.NextArg() {
		return nil, argErr(d, "a path, like: sse /events")
	}
	p := d.Val()
	if d.NextArg() {
		return nil, argErr(d, "one path, like: sse /events")
	}
	if err := handlers.CheckPath("sse path", p); err != nil {
		return nil, d.WrapErr(err)
	}
	sse := &SSEConfig{Path: p}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "keepalive":
			if sse.KeepAlive, err = durationArg(d, false); err == nil {
				err = check(d, handlers.CheckSSEKeepAlive(time.Duration(sse.KeepAlive)))
			}
		default:
			return d.Errf("unrecognized sse subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return sse, nil
}

// parseJWT parses the `jwt { … }` block; the cursor is on "jwt".
func parseJWT(d *caddyfile.Dispenser) (*JWTConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	j := new(JWTConfig)
	opened := false
	if err := eachOption(d, map[string]bool{"public_key": true, "from": true}, func(opt string) error {
		opened = true
		var err error
		switch opt {
		case "secret":
			j.Secret, err = singleArg(d)
		case "public_key":
			var file string
			if file, err = singleArg(d); err == nil {
				j.PublicKeys = append(j.PublicKeys, file)
			}
		case "jwks":
			if j.JWKS, err = singleArg(d); err == nil && !strings.Contains(j.JWKS, "{") {
				err = check(d, handlers.CheckJWKSURL(j.JWKS))
			}
		case "jwks_refresh":
			j.JWKSRefresh, err = durationArg(d, false)
		case "issuer":
			j.Issuer, err = singleArg(d)
		case "audience":
			j.Audience, err = singleArg(d)
		case "leeway":
			j.Leeway, err = durationArg(d, true)
		case "from":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("wrong argument count after 'from': from wants a source and a name, like: from cookie rt")
			}
			if _, err := handlers.ParseTokenSourceKind(args[0]); err != nil {
				return d.WrapErr(err)
			}
			if args[0] == string(handlers.TokenFromHeader) {
				if err := handlers.CheckHeaderName(args[1]); err != nil {
					return d.WrapErr(err)
				}
			}
			j.From = append(j.From, TokenSourceConfig{Source: args[0], Name: args[1]})
			err = noBlock(d, opt)
		case "user_claim":
			j.UserClaim, err = singleArg(d)
		case "identity_claims":
			j.IdentityClaims, err = listArg(d)
		case "topics_claim":
			j.TopicsClaim, err = singleArg(d)
		case "max_size":
			j.MaxSize, err = sizeArg(d)
		default:
			return d.Errf("unrecognized jwt subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	if !opened && d.Val() == "jwt" {
		return nil, d.Err("jwt requires a block with a secret, a public_key or a jwks url")
	}
	return j, check(d, handlers.CheckJWTKeys(j.Secret, len(j.PublicKeys), j.JWKS))
}

// parseOrigins parses `origins <origin...>`; the cursor is on "origins".
func parseOrigins(d *caddyfile.Dispenser) ([]string, error) {
	origins, err := listArg(d)
	if err != nil {
		return nil, err
	}
	return origins, check(d, handlers.CheckOrigins(origins))
}

// parseHook parses `auth|subscribe_hook|message_hook <url> [{ … }]`; the
// cursor is on the directive. Only auth takes headers; only message_hook
// takes queue.
func parseHook(d *caddyfile.Dispenser) (*HookConfig, error) {
	kind := d.Val()
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	raw := d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if err := handlers.CheckHookURL(kind, raw); err != nil {
		return nil, d.WrapErr(err)
	}
	hook := &HookConfig{URL: raw}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "timeout":
			hook.Timeout, err = durationArg(d, false)
		case "max_in_flight":
			hook.MaxInFlight, err = intArg(d, 1)
		case "headers":
			if kind != "auth" {
				return d.Errf("headers is only valid in auth, not in %s", kind)
			}
			hook.Headers, err = listArg(d)
			for _, name := range hook.Headers {
				if err := handlers.CheckHeaderName(name); err != nil {
					return d.WrapErr(err)
				}
			}
		case "queue":
			if kind != "message_hook" {
				return d.Errf("queue is only valid in message_hook, not in %s", kind)
			}
			hook.Queue, err = intArg(d, 1)
		default:
			return d.Errf("unrecognized %s subdirective: %s", kind, opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return hook, nil
}

// parseLimits parses the `limits { … }` block; the cursor is on "limits".
// parseCompression parses `compression`, alone (the defaults) or with a
// block.
func parseCompression(d *caddyfile.Dispenser) (*CompressionConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	z := new(CompressionConfig)
	err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "level":
			if z.Level, err = intArg(d, 1); err == nil {
				err = check(d, handlers.CheckCompression(z.Level, 0))
			}
		case "min_size":
			var n int64
			if n, err = sizeArg(d); err == nil {
				z.MinSize = int(n)
				err = check(d, handlers.CheckCompression(0, z.MinSize))
			}
		default:
			return d.Errf("unknown compression option '%s': want level or min_size", opt)
		}
		return err
	})
	return z, err
}

func parseLimits(d *caddyfile.Dispenser) (*LimitsConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	lim := new(LimitsConfig)
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "max_payload":
			lim.MaxPayload, err = sizeArg(d)
		case "max_backpressure":
			lim.MaxBackpressure, err = sizeArg(d)
		case "slow_consumer":
			lim.SlowConsumer, err = enumArg(d, handlers.ParseSlowConsumer)
		case "upgrade_rate":
			var v string
			if v, err = singleArg(d); err != nil {
				return err
			}
			if v == "off" {
				lim.UpgradeRate = -1
				break
			}
			n, window, ok := parseRate(v)
			if !ok {
				return d.Errf("bad upgrade_rate value '%s': want <n>/<duration> such as 30/10s, or off", v)
			}
			lim.UpgradeRate, lim.UpgradeWindow = n, caddy.Duration(window)
		case "max_connections":
			lim.MaxConnections, err = intArg(d, 0)
		case "max_subscriptions":
			lim.MaxSubscriptions, err = intArg(d, 1)
		case "inbound_rate":
			var v string
			if v, err = singleArg(d); err != nil {
				return err
			}
			if v == "off" {
				lim.InboundRate = -1
				break
			}
			rate := v
			if !strings.Contains(rate, "/") {
				rate += "/s"
			}
			n, window, ok := parseRate(rate)
			if !ok || window != time.Second {
				return d.Errf("bad inbound_rate value '%s': want <n>/s, <n> (per second) or off", v)
			}
			lim.InboundRate = n
		case "inbound_burst":
			lim.InboundBurst, err = intArg(d, 1)
		case "rate_limit_close":
			var v string
			if v, err = singleArg(d); err != nil {
				return err
			}
			if v == "off" {
				lim.RateLimitClose = -1
				break
			}
			lim.RateLimitClose, err = checkInt(d, opt, v, 1)
		default:
			return d.Errf("unrecognized limits subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	return lim, nil
}

// parseReplay parses `replay <pattern> [{ … }]`; the cursor is on "replay".
func parseReplay(d *caddyfile.Dispenser, declared []ReplayConfig) (ReplayConfig, error) {
	topics, err := patternHead(d)
	if err != nil {
		return ReplayConfig{}, err
	}
	if slices.ContainsFunc(declared, func(r ReplayConfig) bool { return r.Topics == topics }) {
		return ReplayConfig{}, d.Errf("replay pattern '%s' already declared", topics)
	}
	r := ReplayConfig{Topics: topics}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "store":
			r.Store, err = enumArg(d, handlers.ParseReplayStore)
		case "table":
			r.Table, err = singleArg(d)
		case "size":
			r.Size, err = intArg(d, 1)
		case "ttl":
			r.TTL, err = durationArg(d, false)
		case "truncation_notice":
			var on bool
			on, err = onOffArg(d)
			r.TruncationNotice = &on
		default:
			return d.Errf("unrecognized replay subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return ReplayConfig{}, err
	}
	return r, nil
}

// parsePresence parses `presence <pattern> [{ … }]`; the cursor is on
// "presence".
func parsePresence(d *caddyfile.Dispenser, declared []PresenceConfig) (PresenceConfig, error) {
	topics, err := patternHead(d)
	if err != nil {
		return PresenceConfig{}, err
	}
	if slices.ContainsFunc(declared, func(p PresenceConfig) bool { return p.Topics == topics }) {
		return PresenceConfig{}, d.Errf("presence pattern '%s' already declared", topics)
	}
	p := PresenceConfig{Topics: topics}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "key":
			p.Key, err = singleArg(d)
		case "select":
			p.Select, err = listArg(d)
		case "heartbeat":
			p.Heartbeat, err = durationOrOffArg(d)
		case "ttl":
			p.TTL, err = durationArg(d, false)
		default:
			return d.Errf("unrecognized presence subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return PresenceConfig{}, err
	}
	return p, nil
}

// parseCursor parses `cursor <pattern> [{ … }]`; the cursor is on "cursor".
func parseCursor(d *caddyfile.Dispenser, declared []CursorConfig) (CursorConfig, error) {
	topics, err := patternHead(d)
	if err != nil {
		return CursorConfig{}, err
	}
	if slices.ContainsFunc(declared, func(c CursorConfig) bool { return c.Topics == topics }) {
		return CursorConfig{}, d.Errf("cursor pattern '%s' already declared", topics)
	}
	c := CursorConfig{Topics: topics}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "throttle":
			c.Throttle, err = durationOrOffArg(d)
		case "topic_throttle":
			if c.TopicThrottle, err = durationArg(d, false); err == nil {
				err = check(d, handlers.CheckTopicThrottle(time.Duration(c.TopicThrottle)))
			}
		case "ttl":
			c.TTL, err = durationArg(d, false)
		case "select":
			c.Select, err = listArg(d)
		case "max_data":
			var n int64
			if n, err = sizeArg(d); err == nil && n > math.MaxInt {
				return d.Errf("bad size value '%s' for max_data: too large", d.Val())
			}
			c.MaxData = int(n)
		default:
			return d.Errf("unrecognized cursor subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return CursorConfig{}, err
	}
	return c, nil
}

// parseGroup parses `group <name> [{ … }]`; the cursor is on "group".
func parseGroup(d *caddyfile.Dispenser, declared []GroupConfig) (GroupConfig, error) {
	if !d.NextArg() {
		return GroupConfig{}, d.ArgErr()
	}
	name := d.Val()
	if d.NextArg() {
		return GroupConfig{}, d.ArgErr()
	}
	if err := handlers.CheckGroupName(name); err != nil {
		return GroupConfig{}, d.WrapErr(err)
	}
	if slices.ContainsFunc(declared, func(g GroupConfig) bool { return g.Name == name }) {
		return GroupConfig{}, d.Errf("group '%s' already declared", name)
	}
	g := GroupConfig{Name: name}
	var meta []byte
	metaKeys := make(map[string]bool)
	if err := eachOption(d, map[string]bool{"meta": true}, func(opt string) error {
		var err error
		switch opt {
		case "max_members":
			g.MaxMembers, err = intArg(d, 1)
		case "meta":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			key, value := args[0], args[1]
			if key == "" {
				return d.Err("meta key must not be empty")
			}
			if metaKeys[key] {
				return d.Errf("meta key '%s' already declared", key)
			}
			metaKeys[key] = true
			if meta, err = appendMeta(meta, key, value); err != nil {
				return d.Errf("meta key '%s': %v", key, err)
			}
			err = noBlock(d, opt)
		case "member_ttl":
			g.MemberTTL, err = durationArg(d, false)
		case "role_from":
			g.RoleFrom, err = singleArg(d)
		case "join_on":
			if g.JoinOn, err = listArg(d); err != nil {
				return err
			}
			for _, p := range g.JoinOn {
				if err := handlers.CheckPattern(opt, p); err != nil {
					return d.WrapErr(err)
				}
			}
		default:
			return d.Errf("unrecognized group subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return GroupConfig{}, err
	}
	if meta != nil {
		g.Meta = json.RawMessage(append(meta, '}'))
	}
	return g, nil
}

// appendMeta appends "key":"value" to the JSON object being built in meta,
// opening it first if meta is empty; the caller closes it.
func appendMeta(meta []byte, key, value string) ([]byte, error) {
	k, err := json.Marshal(key)
	if err != nil {
		return nil, err
	}
	v, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	if meta == nil {
		meta = append(meta, '{')
	} else {
		meta = append(meta, ',')
	}
	meta = append(meta, k...)
	meta = append(meta, ':')
	return append(meta, v...), nil
}

// parseRateLimit parses the `rate_limit { … }` block; the cursor is on
// "rate_limit". The block is required but may be empty.
func parseRateLimit(d *caddyfile.Dispenser) (*RateLimitConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	rl := new(RateLimitConfig)
	opened := false
	if err := eachOption(d, nil, func(opt string) error {
		opened = true
		var err error
		switch opt {
		case "points":
			rl.Points, err = intArg(d, 1)
		case "interval":
			rl.Interval, err = durationArg(d, false)
		case "block":
			rl.Block, err = durationArg(d, false)
		case "key":
			rl.Key, err = singleArg(d)
		case "action":
			rl.Action, err = enumArg(d, handlers.ParseRateLimitAction)
		case "on_error":
			rl.OnError, err = enumArg(d, handlers.ParseRateLimitOnError)
		case "subscribes":
			if d.NextArg() {
				return d.ArgErr()
			}
			err = noBlock(d, opt)
			rl.Subscribes = true
		default:
			return d.Errf("unrecognized rate_limit subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return nil, err
	}
	// Without a block NextBlock leaves the cursor on "rate_limit"; an empty
	// block leaves it on the closing brace.
	if !opened && d.Val() == "rate_limit" {
		return nil, d.Err("rate_limit requires a block")
	}
	return rl, nil
}

// parseNotify parses `notify <channel> [{ … }]`; the cursor is on "notify".
func parseNotify(d *caddyfile.Dispenser, declared []NotifyConfig) (NotifyConfig, error) {
	if !d.NextArg() {
		return NotifyConfig{}, d.ArgErr()
	}
	n := NotifyConfig{Channel: d.Val()}
	if d.NextArg() {
		return NotifyConfig{}, d.ArgErr()
	}
	if err := handlers.CheckNotifyChannel(n.Channel); err != nil {
		return NotifyConfig{}, d.WrapErr(err)
	}
	if slices.ContainsFunc(declared, func(o NotifyConfig) bool { return o.Channel == n.Channel }) {
		return NotifyConfig{}, d.Errf("notify channel '%s' already declared", n.Channel)
	}
	if err := eachOption(d, nil, func(opt string) error {
		var err error
		switch opt {
		case "mode":
			n.Mode, err = enumArg(d, handlers.ParseNotifyMode)
		case "topic_field":
			n.TopicField, err = singleArg(d)
		case "event_field":
			n.EventField, err = singleArg(d)
		case "data_field":
			n.DataField, err = singleArg(d)
		case "poll_interval":
			n.PollInterval, err = durationArg(d, false)
		case "resync":
			// allow_non_ascii_topics may come later in the block:
			// Validate checks the topic against it.
			if n.Resync, err = singleArg(d); err == nil {
				err = check(d, handlers.CheckResyncTopic(n.Resync, true))
			}
		default:
			return d.Errf("unrecognized notify subdirective: %s", opt)
		}
		return err
	}); err != nil {
		return NotifyConfig{}, err
	}
	return n, nil
}

// patternHead reads the one topic pattern argument of the current option
// (replay, presence or cursor), which may be followed by a block.
func patternHead(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", argErr(d, "a topic pattern, like: "+opt+" chat:*")
	}
	p := d.Val()
	if d.NextArg() {
		return "", argErr(d, "one topic pattern, like: "+opt+" chat:*")
	}
	return p, check(d, handlers.CheckPattern(opt, p))
}

// check adds the position of the dispenser's token to err, if any.
func check(d *caddyfile.Dispenser, err error) error {
	if err != nil {
		return d.WrapErr(err)
	}
	return nil
}

// argErr is Caddy's argument-count error for the current option, saying
// what the option wants.
func argErr(d *caddyfile.Dispenser, want string) error {
	return d.Errf("wrong argument count or unexpected line ending after '%s': %s wants %s", d.Val(), d.Val(), want)
}

// enumArg reads the one argument of the current option with parse, one
// of handlers' enumeration parsers.
func enumArg[T ~string](d *caddyfile.Dispenser, parse func(string) (T, error)) (string, error) {
	v, err := singleArg(d)
	if err != nil {
		return "", err
	}
	if _, err := parse(v); err != nil {
		return "", d.WrapErr(err)
	}
	return v, nil
}

// parseRate parses "<n>/<duration>" with n > 0 and a positive duration; a
// bare unit counts one of it ("30/s" is "30/1s").
func parseRate(s string) (int, time.Duration, bool) {
	count, per, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, false
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		return 0, 0, false
	}
	if per != "" && (per[0] < '0' || per[0] > '9') && per[0] != '.' {
		per = "1" + per
	}
	window, err := caddy.ParseDuration(per)
	if err != nil || window <= 0 {
		return 0, 0, false
	}
	return n, window, true
}

// singleArg reads the one non-empty argument of the current option, which
// takes no block.
func singleArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	if v == "" {
		return "", d.Errf("%s must not be empty", opt)
	}
	return v, noBlock(d, opt)
}

// listArg reads the one or more arguments of the current option, which
// takes no block.
func listArg(d *caddyfile.Dispenser) ([]string, error) {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	return args, noBlock(d, opt)
}

// pathArg reads a path argument, which must start with '/'.
func pathArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	p, err := singleArg(d)
	if err != nil {
		return "", err
	}
	return p, check(d, handlers.CheckPath(opt, p))
}

// durationArg reads a duration argument; it must be positive, or zero when
// allowZero is set.
func durationArg(d *caddyfile.Dispenser, allowZero bool) (caddy.Duration, error) {
	opt := d.Val()
	v, err := durationToken(d)
	if err != nil {
		return 0, err
	}
	return checkDuration(d, opt, v, allowZero)
}

// durationToken reads the one argument of a duration option, saying what
// to write when there is none or more than one ("ttl 10 minutes").
func durationToken(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.Errf("wrong argument count or unexpected line ending after '%s': %s wants one duration like 10m (units ms, s, m, h, d; 1m30s)", opt, opt)
	}
	if args[0] == "" {
		return "", d.Errf("%s must not be empty", opt)
	}
	return args[0], noBlock(d, opt)
}

// durationOrOffArg reads a positive duration argument, or off for zero.
func durationOrOffArg(d *caddyfile.Dispenser) (*caddy.Duration, error) {
	opt := d.Val()
	v, err := durationToken(d)
	if err != nil {
		return nil, err
	}
	var dur caddy.Duration
	if v != "off" {
		if dur, err = checkDuration(d, opt, v, false); err != nil {
			return nil, err
		}
	}
	return &dur, nil
}

// checkDuration parses v, the argument of opt, as a positive duration, or
// a zero one when allowZero is set.
func checkDuration(d *caddyfile.Dispenser, opt, v string, allowZero bool) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("bad duration value '%s' for %s: %v; %s wants a duration like 10m", v, opt, err, opt)
	}
	if dur < 0 || (dur == 0 && !allowZero) {
		return 0, d.Errf("%s must be positive, got '%s'", opt, v)
	}
	return caddy.Duration(dur), nil
}

// onOffArg reads an on or off argument.
func onOffArg(d *caddyfile.Dispenser) (bool, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return false, err
	}
	switch v {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, d.Errf("bad %s value '%s': want on or off", opt, v)
}

// intArg reads an integer argument of at least least (0 or 1).
func intArg(d *caddyfile.Dispenser, least int) (int, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	return checkInt(d, opt, v, least)
}

// checkInt parses v, the argument of opt, as an integer of at least least.
func checkInt(d *caddyfile.Dispenser, opt, v string, least int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, d.Errf("bad %s value '%s': want an integer", opt, v)
	}
	if n < least {
		if least == 1 {
			return 0, d.Errf("%s must be positive, got '%s'", opt, v)
		}
		return 0, d.Errf("%s must not be negative, got '%s'", opt, v)
	}
	return n, nil
}

// sizeArg reads a positive byte size such as 4MiB, 1MB or 1048576.
func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n > math.MaxInt64 {
		return 0, d.Errf("bad size value '%s' for %s: want bytes or a size such as 4MiB or 1MB", v, opt)
	}
	if n == 0 {
		return 0, d.Errf("%s must be positive, got '%s'", opt, v)
	}
	return int64(n), nil
}

// noBlock reports an error if the current option, which takes no block,
// is followed by one.
func noBlock(d *caddyfile.Dispenser, opt string) error {
	if d.NextBlock(d.Nesting()) {
		return d.Errf("%s does not take a block", opt)
	}
	return nil
}

// eachOption calls fn for each subdirective of the block the dispenser is
// at, in order, refusing one given twice unless mayRepeat lists it (nil:
// none may repeat). It stops at the first error.
func eachOption(d *caddyfile.Dispenser, mayRepeat map[string]bool, fn func(opt string) error) error {
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] && !mayRepeat[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		if err := fn(opt); err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
