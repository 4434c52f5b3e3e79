// Package benchtool is the load tool of caddy-realtime (realtime-bench, and
// `caddy realtime bench`): it opens
// thousands of WebSocket connections to one or several gateway instances
// (or to Centrifugo, for comparison), subscribes them, publishes through
// the HTTP API and measures what the servers deliver and what they cost.
//
//	realtime-bench <scenario> [flags]
//
// Scenarios:
//
//	idle           N connections without subscriptions: server RSS and goroutines per connection
//	idle-presence  N connections with 3 subscriptions, one of them with presence
//	fanout         1 topic × N subscribers, timestamped payloads at given rates: deliveries/s, latency
//	connect        connect rate: upgrade + greeting + acknowledged subscribe per second
//	reconnect      N clients close and reconnect with resume on a replayed topic
//	compare        realtime-bench compare NAME=report.json NAME=report.json …: headline ratios
//
// Its readers are a minimal RFC 6455 client (net.Conn, bufio.Reader, frame
// headers parsed in place, timestamps found without decoding JSON), so the
// load costs far less CPU than the server serving it; each fan-out step
// reports the bench's own CPU beside the server's.
package benchtool

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

type config struct {
	scenario string
	proto    string
	targets  []string
	apis     []string
	admins   []string
	pids     []int
	apiKey   string
	// publishVia is the one API base to publish through when the targets
	// share a bus; empty: every target's own API.
	publishVia string

	n           int
	concurrency int
	connectRate float64
	sourceIPs   []net.IP
	timeout     time.Duration

	topic          string
	size           int
	shape          string // payload shape: pad or json
	compress       bool   // offer permessage-deflate
	rates          []float64
	ramp           bool
	rateStart      float64
	rateMax        float64
	rampFactor     float64
	window         int
	publishers     int
	duration       time.Duration
	warmup         time.Duration
	drain          time.Duration
	p99Limit       time.Duration
	settle         time.Duration
	idleWindow     time.Duration
	hold           time.Duration
	presenceRoom   int
	presencePrefix string
	replayTopic    string
	events         int
	missed         int

	reader     string
	json       bool
	quiet      bool
	out        string
	cpuProfile string
}

func (c *config) params() map[string]any {
	p := map[string]any{
		"connections": c.n, "concurrency": c.concurrency, "timeout": c.timeout.String(), "reader": c.reader,
	}
	if c.connectRate > 0 {
		p["connect_rate"] = c.connectRate
	}
	if len(c.sourceIPs) > 0 {
		p["source_ips"] = len(c.sourceIPs)
	}
	switch c.scenario {
	case "idle", "idle-presence":
		p["settle"] = c.settle.String()
		if c.scenario == "idle-presence" {
			p["presence_room"] = c.presenceRoom
			p["topics_per_conn"] = 3
		}
	case "fanout":
		p["topic"], p["payload_bytes"], p["publishers"] = c.topic, c.size, c.publishers
		p["duration"], p["warmup"], p["p99_limit"] = c.duration.String(), c.warmup.String(), c.p99Limit.String()
		if c.ramp {
			p["ramp"] = fmt.Sprintf("%g×%g up to %g", c.rateStart, c.rampFactor, c.rateMax)
		} else {
			p["rates"] = c.rates
		}
		if len(c.rates) > 0 && c.rates[0] == 0 || c.ramp && c.rateStart == 0 {
			p["window"] = c.window
		}
	case "reconnect":
		p["topic"], p["events"], p["missed"] = c.replayTopic, c.events, c.missed
	}
	return p
}

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

const usage = `usage: realtime-bench <scenario> [flags]

scenarios: idle, idle-presence, fanout, connect, reconnect
           compare NAME=report.json NAME=report.json ...

Run "realtime-bench <scenario> -h" for the flags.
`

// Main runs the load tool with args (a scenario, then its flags, as on the
// realtime-bench command line) and returns the process exit code: 0 when
// every step passed, 1 when one failed, 2 for a usage error.
func Main(args []string) int {
	if len(args) < 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	scenario := args[0]
	if scenario == "compare" {
		return runCompare(args[1:])
	}
	switch scenario {
	case "idle", "idle-presence", "fanout", "connect", "reconnect":
	default:
		fmt.Fprintf(os.Stderr, "unknown scenario %q\n%s", scenario, usage)
		return 2
	}
	cfg, err := parseFlags(scenario, args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return run(cfg)
}

func parseFlags(scenario string, args []string) (*config, error) {
	cfg := &config{scenario: scenario}
	fs := flag.NewFlagSet(scenario, flag.ContinueOnError)
	var targets, apis, admins, pids, sources listFlag
	var rates string
	fs.Var(&targets, "target", "WebSocket URL of an instance (repeatable or comma-separated); connections are spread round-robin\n(default ws://127.0.0.1:8080/ws, or ws://127.0.0.1:8000/connection/websocket for centrifugo)")
	fs.Var(&apis, "api", "HTTP API base per target, by position (default http://<target host>/_realtime, or /api for centrifugo)")
	fs.Var(&admins, "admin", "admin base URL per target, by position, serving /metrics and /debug/pprof/ (Caddy: its admin address)")
	fs.Var(&pids, "pid", "server process id per target, by position (default: the process listening on the target's port)")
	fs.Var(&sources, "source-ips", "local addresses to dial from, round-robin: a list or ranges like 127.0.0.2-127.0.0.9\n(each gives ~28k ephemeral ports)")
	fs.StringVar(&cfg.proto, "proto", "realtime", "client protocol: realtime or centrifugo")
	fs.StringVar(&cfg.publishVia, "publish-via", "", "publish through this API base only, for instances that share a bus (default: each publish\ngoes to every target's API, for independent instances)")
	fs.StringVar(&cfg.apiKey, "api-key", "", "API key: Bearer for realtime (none: loopback), X-API-Key for centrifugo")
	fs.IntVar(&cfg.n, "n", 1000, "connections")
	fs.IntVar(&cfg.concurrency, "concurrency", 256, "handshakes in flight at once")
	fs.Float64Var(&cfg.connectRate, "connect-rate", 0, "connections started per second (0: as fast as concurrency allows)")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "limit on one connection's dial, upgrade and subscribe")
	fs.StringVar(&cfg.topic, "topic", "fanout", "topic of the fanout and connect scenarios")
	fs.IntVar(&cfg.size, "size", 100, "publish payload (the data JSON) in bytes, timestamp included (at least 35)")
	fs.StringVar(&cfg.shape, "shape", "pad", "publish payload shape: pad (a run of x, compresses to nothing) or json (a list of\ntodo-like objects, as dashboards and lists publish)")
	fs.BoolVar(&cfg.compress, "compress", false, "offer permessage-deflate (no context takeover) on every connection, and inflate\nwhat comes compressed")
	fs.StringVar(&rates, "rate", "", "fanout: publishes per second, a comma-separated list run as steps; 0 or max: closed loop (see -window)")
	fs.BoolVar(&cfg.ramp, "ramp", false, "fanout: raise the rate by -ramp-factor from -rate-start each step until two steps in a row fail")
	fs.Float64Var(&cfg.rateStart, "rate-start", 10, "fanout -ramp: first rate")
	fs.Float64Var(&cfg.rateMax, "rate-max", 100000, "fanout -ramp: last rate")
	fs.Float64Var(&cfg.rampFactor, "ramp-factor", 1.25, "fanout -ramp: rate multiplier per step")
	fs.IntVar(&cfg.window, "window", 2, "fanout at rate max: publishes allowed in flight (not yet delivered to every subscriber)")
	fs.IntVar(&cfg.publishers, "publishers", 4, "fanout: concurrent HTTP publishers")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "fanout: length of each rate step")
	fs.DurationVar(&cfg.warmup, "warmup", 3*time.Second, "fanout: unmeasured publishing at the first rate")
	fs.DurationVar(&cfg.drain, "drain", 5*time.Second, "fanout: how long a step waits for deliveries after its last publish")
	fs.DurationVar(&cfg.p99Limit, "p99", 50*time.Millisecond, "fanout: a step passes with p99 at most this, ≥ 99.9% delivered and no drops")
	fs.DurationVar(&cfg.settle, "settle", 10*time.Second, "idle: wait after the last connection before the GC and the reading")
	fs.DurationVar(&cfg.idleWindow, "idle-window", 5*time.Second, "idle: window over which idle CPU is measured")
	fs.DurationVar(&cfg.hold, "hold", 0, "idle: keep the connections open this long after measuring (to profile)")
	fs.IntVar(&cfg.presenceRoom, "presence-room", 10, "idle-presence: connections per presence topic")
	fs.StringVar(&cfg.presencePrefix, "presence-prefix", "presence:", "idle-presence: prefix of the presence topics (the server must configure presence for it)")
	fs.StringVar(&cfg.replayTopic, "replay-topic", "replay:bench", "reconnect: topic with a replay buffer on the server")
	fs.IntVar(&cfg.events, "events", 5, "reconnect: events published before the clients close")
	fs.IntVar(&cfg.missed, "missed", 5, "reconnect: events published while the clients are away")
	defReader := "goroutine"
	if epollAvailable {
		defReader = "epoll"
	}
	fs.StringVar(&cfg.reader, "reader", defReader, "how the bench reads its connections: epoll (Linux: a few epoll loops read raw sockets)\nor goroutine (one read goroutine per connection)")
	fs.BoolVar(&cfg.json, "json", false, "print the report as JSON")
	fs.StringVar(&cfg.out, "o", "", "also write the JSON report to this file")
	fs.BoolVar(&cfg.quiet, "quiet", false, "no progress lines on stderr")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write the bench's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if len(targets) == 0 {
		if cfg.proto == "centrifugo" {
			targets = listFlag{"ws://127.0.0.1:8000/connection/websocket"}
		} else {
			targets = listFlag{"ws://127.0.0.1:8080/ws"}
		}
	}
	cfg.targets, cfg.apis, cfg.admins = targets, apis, admins
	for _, p := range pids {
		v, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("-pid %q: %w", p, err)
		}
		cfg.pids = append(cfg.pids, v)
	}
	for _, s := range sources {
		ips, err := parseIPRange(s)
		if err != nil {
			return nil, err
		}
		cfg.sourceIPs = append(cfg.sourceIPs, ips...)
	}
	if cfg.shape != "pad" && cfg.shape != "json" {
		return nil, fmt.Errorf("-shape %q: want pad or json", cfg.shape)
	}
	if cfg.shape == "json" && cfg.size < 64 {
		return nil, fmt.Errorf("-size %d: a json payload needs at least 64 bytes", cfg.size)
	}
	if cfg.size < 35 {
		return nil, fmt.Errorf("-size %d: the payload needs at least 35 bytes", cfg.size)
	}
	if rates == "" {
		rates = "100"
	}
	for _, s := range strings.Split(rates, ",") {
		s = strings.TrimSpace(s)
		if s == "max" {
			s = "0"
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("-rate %q: want publishes per second or max", s)
		}
		cfg.rates = append(cfg.rates, v)
	}
	if cfg.ramp {
		if cfg.rateStart <= 0 || cfg.rampFactor <= 1 {
			return nil, fmt.Errorf("-ramp needs -rate-start > 0 and -ramp-factor > 1")
		}
		cfg.rates = []float64{cfg.rateStart}
	}
	if cfg.reader != "epoll" && cfg.reader != "goroutine" {
		return nil, fmt.Errorf("-reader %q: want epoll or goroutine", cfg.reader)
	}
	if cfg.n < 1 || cfg.concurrency < 1 || cfg.presenceRoom < 1 {
		return nil, fmt.Errorf("-n, -concurrency and -presence-room must be at least 1")
	}
	return cfg, nil
}

// parseIPRange parses "127.0.0.2", or "127.0.0.2-127.0.0.9" (last octet).
func parseIPRange(s string) ([]net.IP, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a := net.ParseIP(lo).To4()
	if a == nil {
		return nil, fmt.Errorf("-source-ips %q: not an IPv4 address", lo)
	}
	if !isRange {
		return []net.IP{a}, nil
	}
	b := net.ParseIP(hi).To4()
	if b == nil || !a[:3].Equal(b[:3]) || b[3] < a[3] {
		return nil, fmt.Errorf("-source-ips %q: a range varies the last octet only, upwards", s)
	}
	var out []net.IP
	for o := int(a[3]); o <= int(b[3]); o++ {
		out = append(out, net.IPv4(a[0], a[1], a[2], byte(o)).To4())
	}
	return out, nil
}

func buildTargets(cfg *config) ([]*target, error) {
	var out []*target
	for i, raw := range cfg.targets {
		u, err := parseWSURL(raw)
		if err != nil {
			return nil, err
		}
		t := &target{idx: i, url: u, apiKey: cfg.apiKey}
		if i < len(cfg.apis) {
			t.api = strings.TrimRight(cfg.apis[i], "/")
		} else if cfg.proto == "centrifugo" {
			t.api = "http://" + u.host + "/api"
		} else {
			t.api = "http://" + u.host + "/_realtime"
		}
		pid := 0
		if i < len(cfg.pids) {
			pid = cfg.pids[i]
		} else {
			_, portStr, _ := net.SplitHostPort(u.hostport)
			port, _ := strconv.Atoi(portStr)
			if p, err := pidByPort(port); err == nil {
				pid = p
			} else {
				fmt.Fprintf(os.Stderr, "warning: %s: %v; RSS and CPU of the server are not measured (pass -pid)\n", raw, err)
			}
		}
		admin := ""
		if i < len(cfg.admins) {
			admin = cfg.admins[i]
			if _, err := url.Parse(admin); err != nil {
				return nil, fmt.Errorf("-admin %q: %w", admin, err)
			}
		}
		t.probe = newServerProbe(pid, admin)
		out = append(out, t)
	}
	return out, nil
}

func run(cfg *config) int {
	p, err := protocolByName(cfg.proto)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	targets, err := buildTargets(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// One socket per connection, plus the publishers' and some slack.
	if lim, err := raiseNoFile(uint64(cfg.n) + 1024); err != nil || lim < uint64(cfg.n)+64 {
		fmt.Fprintf(os.Stderr, "warning: RLIMIT_NOFILE is %d (%v); raise ulimit -n above %d\n", lim, err, cfg.n+64)
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	r, err := newRunner(cfg, p, targets)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var rep *report
	switch cfg.scenario {
	case "idle":
		rep = runIdle(r, false)
	case "idle-presence":
		rep = runIdle(r, true)
	case "fanout":
		rep = runFanout(r)
	case "connect":
		rep = runConnect(r)
	case "reconnect":
		rep = runReconnect(r)
	}
	r.progress.close()
	if cfg.out != "" {
		f, err := os.Create(cfg.out)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		err = rep.writeJSON(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if cfg.json {
		if err := rep.writeJSON(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	} else {
		rep.writeTable(os.Stdout)
	}
	if rep.Connect != nil && rep.Connect.Opened == 0 {
		return 1
	}
	return 0
}

// runCompare prints the headline figures of saved reports side by side.
func runCompare(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: realtime-bench compare NAME=report.json NAME=report.json ...")
		return 2
	}
	var names []string
	var reps []*report
	for _, a := range args {
		name, path, ok := strings.Cut(a, "=")
		if !ok {
			name, path = a, a
		}
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		rep := new(report)
		if err := json.Unmarshal(b, rep); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			return 1
		}
		names = append(names, name)
		reps = append(reps, rep)
	}
	compareReports(os.Stdout, names, reps)
	return 0
}
