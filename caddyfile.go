package realtime

import (
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"golang.org/x/net/http/httpguts"
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
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "instance_id":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			a.InstanceID = v
		default:
			return d.Errf("unrecognized subdirective: %s", opt)
		}
	}
	return nil
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
//		origins <same-origin|*|scheme://host[:port]...>
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
//	}
//
// Blocks after api, auth and the hooks are optional. Sizes take a unit
// (4MiB, 1MB) or plain bytes; durations use Caddy's syntax (10s, 1m30s, 1d).
// path and api paths start with '/'; hook URLs are http or https; keepalive
// is 5s to 120s; shutdown_spread may be 0 (close all at once); `off` sets
// the -1 that disables upgrade_rate, inbound_rate or rate_limit_close.
// Each option may appear once per block. Nothing is defaulted here:
// Provision does it, so `caddy adapt` shows only what was written.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "name":
			h.Name, err = singleArg(d)
		case "path":
			h.Path, err = pathArg(d)
		case "api":
			h.API, err = parseAPI(d)
		case "origins":
			h.Origins, err = parseOrigins(d)
		case "auth":
			h.Auth, err = parseHook(d)
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
			h.KeepAlive, err = durationArg(d, false)
			if ka := time.Duration(h.KeepAlive); err == nil && (ka < 5*time.Second || ka > 120*time.Second) {
				return d.Errf("keepalive must be between 5s and 120s, got '%s'", ka)
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
		case "limits":
			h.Limits, err = parseLimits(d)
		default:
			return d.Errf("unrecognized subdirective: %s", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseAPI parses `api <path> [{ … }]`; the cursor is on "api".
func parseAPI(d *caddyfile.Dispenser) (*APIConfig, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	p := d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if !strings.HasPrefix(p, "/") {
		return nil, d.Errf("api path must start with '/', got '%s'", p)
	}
	api := &APIConfig{Path: p}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "key":
			api.Key, err = singleArg(d)
		case "max_body":
			api.MaxBody, err = sizeArg(d)
		default:
			return nil, d.Errf("unrecognized api subdirective: %s", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return api, nil
}

// parseOrigins parses `origins <origin...>`; the cursor is on "origins".
func parseOrigins(d *caddyfile.Dispenser) ([]string, error) {
	origins, err := listArg(d)
	if err != nil {
		return nil, err
	}
	for _, o := range origins {
		switch o {
		case "same-origin", "*":
			if len(origins) > 1 {
				return nil, d.Errf("origin '%s' must be the only origin", o)
			}
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Opaque != "" || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
			return nil, d.Errf("bad origin '%s': want same-origin, * or scheme://host[:port]", o)
		}
	}
	return origins, nil
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
	u, err := url.Parse(raw)
	if err != nil {
		return nil, d.Errf("bad %s url '%s': %v", kind, raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, d.Errf("bad %s url '%s': want http://host[:port]/path or https://…", kind, raw)
	}
	hook := &HookConfig{URL: raw}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "timeout":
			hook.Timeout, err = durationArg(d, false)
		case "max_in_flight":
			hook.MaxInFlight, err = intArg(d, 1)
		case "headers":
			if kind != "auth" {
				return nil, d.Errf("headers is only valid in auth, not in %s", kind)
			}
			hook.Headers, err = listArg(d)
			for _, name := range hook.Headers {
				if !httpguts.ValidHeaderFieldName(name) {
					return nil, d.Errf("bad header name '%s'", name)
				}
			}
		case "queue":
			if kind != "message_hook" {
				return nil, d.Errf("queue is only valid in message_hook, not in %s", kind)
			}
			hook.Queue, err = intArg(d, 1)
		default:
			return nil, d.Errf("unrecognized %s subdirective: %s", kind, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return hook, nil
}

// parseLimits parses the `limits { … }` block; the cursor is on "limits".
func parseLimits(d *caddyfile.Dispenser) (*LimitsConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	lim := new(LimitsConfig)
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "max_payload":
			lim.MaxPayload, err = sizeArg(d)
		case "max_backpressure":
			lim.MaxBackpressure, err = sizeArg(d)
		case "slow_consumer":
			var v string
			if v, err = singleArg(d); err != nil {
				return nil, err
			}
			if v != "close" && v != "drop" {
				return nil, d.Errf("unknown slow_consumer policy '%s': want close or drop", v)
			}
			lim.SlowConsumer = v
		case "upgrade_rate":
			var v string
			if v, err = singleArg(d); err != nil {
				return nil, err
			}
			if v == "off" {
				lim.UpgradeRate = -1
				break
			}
			n, window, ok := parseRate(v)
			if !ok {
				return nil, d.Errf("bad upgrade_rate value '%s': want <n>/<duration> such as 30/10s, or off", v)
			}
			lim.UpgradeRate, lim.UpgradeWindow = n, caddy.Duration(window)
		case "max_connections":
			lim.MaxConnections, err = intArg(d, 0)
		case "max_subscriptions":
			lim.MaxSubscriptions, err = intArg(d, 1)
		case "inbound_rate":
			var v string
			if v, err = singleArg(d); err != nil {
				return nil, err
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
				return nil, d.Errf("bad inbound_rate value '%s': want <n>/s, <n> (per second) or off", v)
			}
			lim.InboundRate = n
		case "inbound_burst":
			lim.InboundBurst, err = intArg(d, 1)
		case "rate_limit_close":
			var v string
			if v, err = singleArg(d); err != nil {
				return nil, err
			}
			if v == "off" {
				lim.RateLimitClose = -1
				break
			}
			lim.RateLimitClose, err = checkInt(d, opt, v, 1)
		default:
			return nil, d.Errf("unrecognized limits subdirective: %s", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return lim, nil
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
	if !strings.HasPrefix(p, "/") {
		return "", d.Errf("%s must start with '/', got '%s'", opt, p)
	}
	return p, nil
}

// durationArg reads a duration argument; it must be positive, or zero when
// allowZero is set.
func durationArg(d *caddyfile.Dispenser, allowZero bool) (caddy.Duration, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("bad duration value '%s' for %s: %v", v, opt, err)
	}
	if dur < 0 || (dur == 0 && !allowZero) {
		return 0, d.Errf("%s must be positive, got '%s'", opt, v)
	}
	return caddy.Duration(dur), nil
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

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
