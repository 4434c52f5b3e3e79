package benchtool

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// idleTarget is the idle cost of one target.
type idleTarget struct {
	Target      string       `json:"target"`
	PID         int          `json:"pid"`
	Conns       int64        `json:"connections"`
	Before      serverSample `json:"before"`
	After       serverSample `json:"after"`
	RSSPerConn  float64      `json:"rss_bytes_per_conn"`
	HeapPerConn float64      `json:"heap_inuse_bytes_per_conn,omitempty"`
	StackPer    float64      `json:"stack_inuse_bytes_per_conn,omitempty"`
	GoroutPer   float64      `json:"goroutines_per_conn,omitempty"`
	IdleCPU     float64      `json:"idle_cpu_cores"`
}

// runIdle opens N connections at a controlled rate, optionally subscribed
// (idle-presence: three topics, one with presence), lets the servers
// settle, forces a GC and reports what each connection costs.
func runIdle(r *runner, presence bool) *report {
	cfg := r.cfg
	rep := newReport(cfg, r.proto)
	for _, t := range r.targets {
		if err := t.probe.gc(context.Background()); err != nil && t.probe.admin != "" {
			r.progress.log("gc on %s: %v", t.url.raw, err)
		}
	}
	time.Sleep(2 * time.Second)
	before := make([]serverSample, len(r.targets))
	for i, t := range r.targets {
		before[i] = t.probe.sample()
	}
	benchRSS0 := selfRSS()
	clients := make([]*client, cfg.n)
	for i := range clients {
		clients[i] = r.newClient(i, idleTopics(cfg, i, presence))
	}
	cr := r.connectAll(clients, cfg.connectRate, cfg.concurrency, true, "connect")
	rep.Connect = &cr

	r.progress.set(func() string {
		return fmt.Sprintf("settling: %d connections open, %d dropped", r.alive.Load(), r.dropped.Load())
	})
	time.Sleep(cfg.settle)
	for _, t := range r.targets {
		_ = t.probe.gc(context.Background())
	}
	time.Sleep(2 * time.Second)
	// Idle CPU over a quiet window.
	cpu0 := make([]serverSample, len(r.targets))
	for i, t := range r.targets {
		cpu0[i] = t.probe.sample()
	}
	time.Sleep(cfg.idleWindow)
	for i, t := range r.targets {
		after := t.probe.sample()
		n := t.subs.Load()
		it := idleTarget{Target: t.url.raw, PID: t.probe.pid, Conns: n, Before: before[i], After: after}
		if n > 0 {
			it.RSSPerConn = perConn(before[i].RSS, after.RSS, n)
			it.HeapPerConn = perConn(before[i].HeapInuse, after.HeapInuse, n)
			it.StackPer = perConn(before[i].StackInuse, after.StackInuse, n)
			it.GoroutPer = perConn(before[i].Goroutines, after.Goroutines, n)
		}
		if after.CPUTicks >= 0 && cpu0[i].CPUTicks >= 0 {
			it.IdleCPU = float64(after.CPUTicks-cpu0[i].CPUTicks) / clockTicks / after.At.Sub(cpu0[i].At).Seconds()
		}
		rep.Idle = append(rep.Idle, it)
	}
	rep.Bench.RSSPerConn = perConn(benchRSS0, selfRSS(), max(r.alive.Load(), 1))
	rep.Dropped = r.dropped.Load()
	rep.Errors = r.errorSummary()
	if cfg.hold > 0 {
		r.progress.log("holding %d connections for %s", r.alive.Load(), cfg.hold)
		time.Sleep(cfg.hold)
	}
	r.closeAll(clients)

	name := "idle"
	if presence {
		name = "idle_presence"
	}
	for i, it := range rep.Idle {
		sfx := ""
		if i > 0 {
			sfx = "_" + strconv.Itoa(i)
		}
		rep.headline(name+"_rss_per_conn"+sfx, it.RSSPerConn, "B", "lower")
		if it.After.Goroutines >= 0 {
			rep.headline(name+"_goroutines_per_conn"+sfx, it.GoroutPer, "", "lower")
		}
	}
	return rep
}

// serverCores is the CPU the targets used since the samples in srv0, in cores.
func serverCores(targets []*target, srv0 []serverSample) float64 {
	var cores float64
	for i, t := range targets {
		s := t.probe.sample()
		if s.CPUTicks >= 0 && srv0[i].CPUTicks >= 0 {
			cores += float64(s.CPUTicks-srv0[i].CPUTicks) / clockTicks / s.At.Sub(srv0[i].At).Seconds()
		}
	}
	return cores
}

// serverWritten is what the targets wrote since the samples in srv0, in
// bytes; -1 when a target's cannot be read.
func serverWritten(targets []*target, srv0 []serverSample) int64 {
	var n int64
	for i, t := range targets {
		s := t.probe.sample()
		if s.Written < 0 || srv0[i].Written < 0 {
			return -1
		}
		n += s.Written - srv0[i].Written
	}
	return n
}

func perConn(before, after, n int64) float64 {
	if before < 0 || after < 0 || n <= 0 {
		return 0
	}
	return float64(after-before) / float64(n)
}

// idleTopics are connection i's subscriptions: none for idle; for
// idle-presence three topics, bench:a:<i mod 100>, bench:b:<i mod 1000>
// and presence:<i / room>, the last matching the bench config's presence
// pattern, so members share rooms of --presence-room connections.
func idleTopics(cfg *config, i int, presence bool) []string {
	if !presence {
		return nil
	}
	return []string{
		"bench:a:" + strconv.Itoa(i%100),
		"bench:b:" + strconv.Itoa(i%1000),
		cfg.presencePrefix + strconv.Itoa(i/cfg.presenceRoom),
	}
}

// fanoutStep is one publish rate held for a while.
type fanoutStep struct {
	Rate         float64        `json:"rate"` // target publishes/s; 0 = as fast as the window allows
	Published    int64          `json:"published"`
	PubPerSec    float64        `json:"published_per_s"`
	Expected     int64          `json:"expected_deliveries"`
	Delivered    int64          `json:"delivered"`
	DeliveredPct float64        `json:"delivered_pct"`
	PerSec       float64        `json:"deliveries_per_s"`
	Elapsed      float64        `json:"elapsed_s"`
	Latency      latencySummary `json:"latency"`
	ServerCPU    float64        `json:"server_cpu_cores"`
	BenchCPU     float64        `json:"bench_cpu_cores"`
	// WirePerDelivery is what the servers wrote (all syscalls, so
	// sockets and frame headers) per delivery; 0 when unknown.
	WirePerDelivery float64 `json:"server_bytes_written_per_delivery"`
	Subscribers     int64   `json:"subscribers"`
	Dropped         int64   `json:"dropped_connections"`
	PublishErrs     int64   `json:"publish_errors"`
	Pass            bool    `json:"pass"`
}

// runFanout subscribes N connections to one topic and publishes to it at
// each rate (or ramps the rate up), measuring deliveries/s and
// publish→deliver latency.
func runFanout(r *runner) *report {
	cfg := r.cfg
	rep := newReport(cfg, r.proto)
	clients := make([]*client, cfg.n)
	for i := range clients {
		clients[i] = r.newClient(i, []string{cfg.topic})
	}
	cr := r.connectAll(clients, cfg.connectRate, cfg.concurrency, true, "subscribe")
	rep.Connect = &cr
	if cr.Opened == 0 {
		rep.Errors = cr.Errors
		return rep
	}
	pub := newPublisher(r, cfg.topic, cfg.size, cfg.publishers)
	time.Sleep(time.Second)

	if cfg.warmup > 0 && len(cfg.rates) > 0 {
		r.progress.log("warm-up at %s publishes/s for %s", rateName(cfg.rates[0]), cfg.warmup)
		r.fanoutStep(pub, cfg.rates[0], cfg.warmup)
	}
	rates := cfg.rates
	fails := 0
	for k := 0; ; k++ {
		var rate float64
		if cfg.ramp {
			rate = math.Round(cfg.rateStart*math.Pow(cfg.rampFactor, float64(k))*10) / 10
			if rate > cfg.rateMax {
				break
			}
		} else {
			if k >= len(rates) {
				break
			}
			rate = rates[k]
		}
		st := r.fanoutStep(pub, rate, cfg.duration)
		rep.Steps = append(rep.Steps, st)
		r.progress.log("rate %s/s: %d subs, %.0f deliveries/s, %.1f%% delivered, p50 %.2fms p99 %.2fms max %.1fms, server %.2f cores, %.0f B written/delivery, bench %.2f cores%s",
			rateName(rate), st.Subscribers, st.PerSec, st.DeliveredPct, st.Latency.P50, st.Latency.P99, st.Latency.Max, st.ServerCPU, st.WirePerDelivery, st.BenchCPU, passMark(st.Pass))
		if st.Pass {
			fails = 0
		} else {
			fails++
		}
		if cfg.ramp && fails >= 2 {
			break
		}
		if r.alive.Load() == 0 {
			break
		}
	}
	rep.Dropped = r.dropped.Load()
	rep.Errors = r.errorSummary()
	if e := pub.lastError(); e != "" {
		rep.Errors["publish: "+e] = pub.errs.Load()
	}
	r.closeAll(clients)

	best := -1
	for i, st := range rep.Steps {
		if st.Pass && (best < 0 || st.PerSec > rep.Steps[best].PerSec) {
			best = i
		}
	}
	if best >= 0 {
		st := rep.Steps[best]
		rep.Best = &st
		rep.headline("fanout_deliveries_per_s", st.PerSec, "/s", "higher")
		rep.headline("fanout_p99_ms", st.Latency.P99, "ms", "lower")
		rep.headline("fanout_server_cpu_cores", st.ServerCPU, "cores", "lower")
		if st.ServerCPU > 0 {
			rep.headline("fanout_deliveries_per_cpu_s", st.PerSec/st.ServerCPU, "/s", "higher")
		}
	} else {
		rep.headline("fanout_deliveries_per_s", 0, "/s", "higher")
	}
	// The peak, whatever its latency: the highest rate of a step that still
	// delivered everything (a closed-loop step is always such a peak).
	peak := -1
	for i, st := range rep.Steps {
		if st.DeliveredPct >= 99.9 && st.Dropped == 0 && (peak < 0 || st.PerSec > rep.Steps[peak].PerSec) {
			peak = i
		}
	}
	if peak >= 0 {
		st := rep.Steps[peak]
		rep.headline("fanout_peak_deliveries_per_s", st.PerSec, "/s", "higher")
		rep.headline("fanout_peak_p99_ms", st.Latency.P99, "ms", "lower")
		rep.headline("fanout_peak_server_cpu_cores", st.ServerCPU, "cores", "lower")
		rep.headline("fanout_peak_bench_cpu_cores", st.BenchCPU, "cores", "lower")
		if st.WirePerDelivery > 0 {
			rep.headline("fanout_peak_wire_bytes_per_delivery", st.WirePerDelivery, "B", "lower")
		}
		if st.ServerCPU > 0 {
			rep.headline("fanout_peak_deliveries_per_cpu_s", st.PerSec/st.ServerCPU, "/s", "higher")
		}
	}
	return rep
}

func passMark(ok bool) string {
	if ok {
		return ""
	}
	return "  ✗"
}

func rateName(r float64) string {
	if r <= 0 {
		return "max"
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}

// fanoutStep publishes at rate for d, then waits up to cfg.drain for the
// deliveries still in flight. With rate 0 it publishes as fast as a window
// of cfg.window publishes not yet delivered to every subscriber allows.
func (r *runner) fanoutStep(pub *publisher, rate float64, d time.Duration) fanoutStep {
	cfg := r.cfg
	r.hist.Store(new(histogram))
	subs := r.alive.Load()
	dropped0 := r.dropped.Load()
	d0 := r.deliveredTotal()
	sent0, errs0 := pub.sent.Load(), pub.errs.Load()
	srv0 := make([]serverSample, len(r.targets))
	for i, t := range r.targets {
		srv0[i] = t.probe.sample()
	}
	cpu0 := selfCPU()
	start := time.Now()
	stopAt := start.Add(d)
	ctx, cancel := context.WithDeadline(context.Background(), stopAt.Add(cfg.drain))
	defer cancel()
	r.progress.set(func() string {
		got := r.deliveredTotal() - d0
		el := time.Since(start).Seconds()
		return fmt.Sprintf("fanout rate %s: %d published, %d delivered (%.0f/s), %d subscribers",
			rateName(rate), pub.sent.Load()-sent0, got, float64(got)/el, r.alive.Load())
	})

	var tick atomic.Int64
	var wg sync.WaitGroup
	for range max(cfg.publishers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := tick.Add(1) - 1
				if rate > 0 {
					at := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
					if !at.Before(stopAt) {
						return
					}
					if w := time.Until(at); w > 0 {
						time.Sleep(w)
					}
				} else {
					if !time.Now().Before(stopAt) {
						return
					}
					// Closed loop: wait until at most window publishes are
					// not yet delivered everywhere.
					for time.Now().Before(stopAt) {
						inflight := (pub.sent.Load()-sent0)*subs - (r.deliveredTotal() - d0)
						if inflight <= int64(cfg.window)*subs {
							break
						}
						time.Sleep(100 * time.Microsecond)
					}
				}
				_ = pub.publish(ctx)
			}
		}()
	}
	wg.Wait()
	published := pub.sent.Load() - sent0
	pubElapsed := time.Since(start)
	// Drain: wait for every expected delivery, or until nothing arrived
	// for a while, or the drain limit.
	expected := published * subs
	last, lastChange := r.deliveredTotal()-d0, time.Now()
	drainEnd := time.Now().Add(cfg.drain)
	for last < expected && time.Now().Before(drainEnd) && time.Since(lastChange) < time.Second {
		time.Sleep(time.Millisecond)
		if n := r.deliveredTotal() - d0; n != last {
			last, lastChange = n, time.Now()
		}
	}
	delivered := r.deliveredTotal() - d0
	end := lastChange
	if delivered >= expected {
		end = time.Now()
	}
	elapsed := end.Sub(start)
	st := fanoutStep{
		Rate:        rate,
		Published:   published,
		PubPerSec:   float64(published) / pubElapsed.Seconds(),
		Expected:    expected,
		Delivered:   delivered,
		PerSec:      float64(delivered) / elapsed.Seconds(),
		Elapsed:     elapsed.Seconds(),
		Latency:     r.hist.Load().summary(),
		BenchCPU:    (selfCPU() - cpu0).Seconds() / elapsed.Seconds(),
		Subscribers: subs,
		Dropped:     r.dropped.Load() - dropped0,
		PublishErrs: pub.errs.Load() - errs0,
	}
	if expected > 0 {
		st.DeliveredPct = 100 * float64(delivered) / float64(expected)
	}
	st.ServerCPU = serverCores(r.targets, srv0)
	if w := serverWritten(r.targets, srv0); w > 0 && delivered > 0 {
		st.WirePerDelivery = float64(w) / float64(delivered)
	}
	st.Pass = published > 0 && st.DeliveredPct >= 99.9 && st.Dropped == 0 && st.PublishErrs == 0 &&
		st.Latency.P99 <= float64(cfg.p99Limit)/float64(time.Millisecond)
	return st
}

// runConnect measures the connect rate: upgrade, greeting and a subscribe
// acknowledged, as many per second as concurrency handshakes in flight give.
func runConnect(r *runner) *report {
	cfg := r.cfg
	rep := newReport(cfg, r.proto)
	clients := make([]*client, cfg.n)
	for i := range clients {
		clients[i] = r.newClient(i, []string{cfg.topic})
	}
	srv0 := make([]serverSample, len(r.targets))
	for i, t := range r.targets {
		srv0[i] = t.probe.sample()
	}
	cpu0 := selfCPU()
	cr := r.connectAll(clients, 0, cfg.concurrency, true, "connect")
	rep.Connect = &cr
	rep.Bench.CPU = (selfCPU() - cpu0).Seconds() / cr.Elapsed
	rep.ServerCPU = serverCores(r.targets, srv0)
	rep.Dropped = r.dropped.Load()
	rep.Errors = r.errorSummary()
	r.closeAll(clients)
	rep.headline("connect_per_s", cr.PerSec, "/s", "higher")
	rep.headline("connect_p99_ms", cr.Latency.P99, "ms", "lower")
	return rep
}

// reconnectResult is what the reconnect storm measured.
type reconnectResult struct {
	Clients     int            `json:"clients"`
	Missed      int            `json:"missed_events"`
	Resumed     int            `json:"resumed"`
	Failed      int            `json:"failed"`
	AllResumedS float64        `json:"all_resumed_s"`
	PerSec      float64        `json:"resumes_per_s"`
	Handshake   latencySummary `json:"handshake"`
	Complete    latencySummary `json:"completed_at"`
	Gaps        int            `json:"clients_with_gaps"`
	Duplicates  int            `json:"clients_with_duplicates"`
	NoResumed   int            `json:"clients_without_resumed"`
	Filled      int            `json:"gap_fill_events"` // missed events received before the subscribe acks, all clients
}

// runReconnect connects N clients to a replayed topic, has them see some
// events, closes them all, publishes events they miss, and reconnects
// them all with resume: it reports how long until every client has its
// gap filled and its subscribe acknowledged, and checks the fills.
func runReconnect(r *runner) *report {
	cfg := r.cfg
	rep := newReport(cfg, r.proto)
	if r.proto.name() != "realtime" {
		rep.Errors = map[string]int64{"reconnect needs --proto realtime": 1}
		return rep
	}
	clients := make([]*client, cfg.n)
	for i := range clients {
		c := r.newClient(i, []string{cfg.replayTopic})
		c.trackSeq = true
		clients[i] = c
	}
	cr := r.connectAll(clients, cfg.connectRate, cfg.concurrency, true, "connect")
	rep.Connect = &cr
	pub := newPublisher(r, cfg.replayTopic, cfg.size, 1)
	ctx := context.Background()
	for range cfg.events {
		if err := pub.publish(ctx); err != nil {
			rep.Errors = map[string]int64{"publish: " + err.Error(): 1}
			r.closeAll(clients)
			return rep
		}
	}
	// Wait until every open client has seen its target's head.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		behind := 0
		for _, c := range clients {
			if c.ws != nil && c.lastSeq.Load() < c.t.head.Load() {
				behind++
			}
		}
		if behind == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.progress.log("all clients at seq %d; closing them", r.targets[0].head.Load())
	r.closeAll(clients)
	for range cfg.missed {
		if err := pub.publish(ctx); err != nil {
			rep.Errors = map[string]int64{"publish: " + err.Error(): 1}
			return rep
		}
	}
	var open []*client
	for _, c := range clients {
		if c.ws != nil {
			c.resume = true
			c.resumeFrom = c.lastSeq.Load()
			c.filled = c.filled[:0]
			c.resumedAcks = 0
			open = append(open, c)
		}
	}
	srv0 := make([]serverSample, len(r.targets))
	for i, t := range r.targets {
		srv0[i] = t.probe.sample()
	}
	cpu0 := selfCPU()
	rc := r.connectAll(open, 0, cfg.concurrency, true, "reconnect with resume")
	rep.Bench.CPU = (selfCPU() - cpu0).Seconds() / max(rc.Elapsed, 1e-9)
	rep.ServerCPU = serverCores(r.targets, srv0)
	res := reconnectResult{Clients: len(open), Missed: cfg.missed, Resumed: rc.Opened, Failed: rc.Failed, Handshake: rc.Latency}
	done := new(histogram)
	var lastDone int64
	for i, c := range open {
		if rc.Finished[i] == 0 {
			continue
		}
		done.record(i, rc.Finished[i])
		lastDone = max(lastDone, rc.Finished[i])
		gap, dup := checkFill(c.filled, c.resumeFrom, c.t.head.Load())
		if gap {
			res.Gaps++
		}
		if dup {
			res.Duplicates++
		}
		res.Filled += len(c.filled)
		if c.resumedAcks != 1 {
			res.NoResumed++
		}
	}
	res.Complete = done.summary()
	res.AllResumedS = float64(lastDone) / 1e9
	if res.AllResumedS > 0 {
		res.PerSec = float64(res.Resumed) / res.AllResumedS
	}
	rep.Reconnect = &res
	rep.Dropped = r.dropped.Load()
	rep.Errors = r.errorSummary()
	for k, v := range rc.Errors {
		rep.Errors[k] += v
	}
	r.closeAll(open)
	rep.headline("reconnect_all_resumed_s", res.AllResumedS, "s", "lower")
	rep.headline("reconnect_per_s", res.PerSec, "/s", "higher")
	return rep
}

// checkFill reports whether the gap fill seqs miss one of from+1..head, or
// hold one twice.
func checkFill(filled []uint64, from, head uint64) (gap, dup bool) {
	seen := make(map[uint64]bool, len(filled))
	for _, s := range filled {
		if seen[s] {
			dup = true
		}
		seen[s] = true
	}
	for s := from + 1; s <= head; s++ {
		if !seen[s] {
			gap = true
		}
	}
	return gap, dup
}
