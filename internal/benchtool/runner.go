package benchtool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is one gateway (or Centrifugo) instance under test.
type target struct {
	idx    int
	url    *wsURL
	api    string // HTTP API base: http://host/_realtime or http://host/api
	apiKey string
	probe  *serverProbe
	head   atomic.Uint64 // last seq its publish API answered
	subs   atomic.Int64  // connections subscribed and reading
}

// client is one WebSocket connection of the load.
type client struct {
	id     int
	t      *target
	ws     *wsConn
	topics []string

	session     string // the last welcome's session id
	resume      bool   // send resume with the previous session on open
	trackSeq    bool   // follow the seq of envelopes (reconnect scenario)
	resumeFrom  uint64 // the seq resume sends as lastSeenSeqs
	lastSeq     atomic.Uint64
	filled      []uint64 // seqs received before the subscribe ack (gap fill)
	resumedAcks int

	closing atomic.Bool   // the bench closes it: a read error is expected
	done    chan struct{} // closed when the read loop ends

	now    int64          // reader: arrival time of the message being scanned
	record func(ts int64) // reader: records one delivery
	shard  *paddedCounter // deliveries of this connection's shard
	ep     epState        // epoll reader state
	loop   *epollLoop     // epoll loop reading it
}

type paddedCounter struct {
	n atomic.Int64
	_ [56]byte
}

const counterShards = 64

// runner holds the connections of one run and what their readers measure.
type runner struct {
	cfg     *config
	proto   protocol
	targets []*target

	hist      atomic.Pointer[histogram]
	delivered [counterShards]paddedCounter

	alive    atomic.Int64 // read loops running
	dropped  atomic.Int64 // read loops that ended without the bench closing them
	readErrs sync.Map     // error text → *atomic.Int64, for the report
	wg       sync.WaitGroup

	progress *progress
	ep       *epollReader // nil: a read goroutine per connection
}

func newRunner(cfg *config, p protocol, targets []*target) (*runner, error) {
	r := &runner{cfg: cfg, proto: p, targets: targets}
	r.hist.Store(new(histogram))
	if cfg.reader == "epoll" {
		ep, err := newEpollReader(r, cfg.n)
		if err != nil {
			return nil, err
		}
		r.ep = ep
	}
	r.progress = newProgress(cfg.quiet)
	return r, nil
}

func (r *runner) deliveredTotal() int64 {
	var n int64
	for i := range r.delivered {
		n += r.delivered[i].n.Load()
	}
	return n
}

func (r *runner) newClient(id int, topics []string) *client {
	t := r.targets[id%len(r.targets)]
	c := &client{id: id, t: t, topics: topics, shard: &r.delivered[id%counterShards]}
	c.record = func(ts int64) {
		r.hist.Load().record(c.id, c.now-ts)
		c.shard.n.Add(1)
	}
	return c
}

// sourceIP returns the local address connection i dials from.
func (r *runner) sourceIP(i int) net.IP {
	if len(r.cfg.sourceIPs) == 0 {
		return nil
	}
	return r.cfg.sourceIPs[i%len(r.cfg.sourceIPs)]
}

// dialOpen connects c and runs the protocol's greeting and subscribes.
func (r *runner) dialOpen(c *client) error {
	deadline := time.Now().Add(r.cfg.timeout)
	ws, err := dialWS(c.t.url, r.sourceIP(c.id), r.cfg.timeout, r.cfg.compress)
	if err != nil {
		return err
	}
	c.ws = ws
	if err := r.proto.open(c, deadline); err != nil {
		ws.nc.Close()
		return err
	}
	return nil
}

// startReading reads c until the connection ends: on an epoll loop, or
// on a goroutine of its own.
func (r *runner) startReading(c *client) {
	c.done = make(chan struct{})
	c.closing.Store(false)
	r.alive.Add(1)
	c.t.subs.Add(1)
	r.wg.Add(1)
	if r.ep == nil {
		go r.readLoop(c)
		return
	}
	if err := r.ep.add(c); err != nil {
		c.ws.wmu.Lock()
		if c.ws.fd >= 0 {
			_ = closeFD(c.ws.fd)
			c.ws.fd = fdClosed
		} else {
			c.ws.nc.Close()
		}
		c.ws.wmu.Unlock()
		r.finishReading(c, err)
	}
}

func (r *runner) readLoop(c *client) {
	var reads uint64
	for {
		msg, err := c.ws.next()
		if err == nil {
			if n := c.ws.src.reads; n != reads {
				reads, c.now = n, time.Now().UnixNano()
			}
			err = r.proto.deliveries(c, msg, c.record)
		}
		if err != nil {
			c.ws.nc.Close()
			r.finishReading(c, err)
			return
		}
	}
}

// finishReading accounts for the end of c's reading.
func (r *runner) finishReading(c *client, err error) {
	if !c.closing.Load() {
		r.dropped.Add(1)
		r.countErr(err)
	}
	c.t.subs.Add(-1)
	r.alive.Add(-1)
	close(c.done)
	r.wg.Done()
}

func (r *runner) countErr(err error) {
	v, _ := r.readErrs.LoadOrStore(errKey(err), new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// errKey groups errors for the report: by kind, not by address.
func errKey(err error) string {
	key := err.Error()
	var ue *upgradeError
	switch {
	case errors.Is(err, errClosed):
		return "closed by server"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.As(err, &ue):
		return ue.status
	case strings.Contains(key, "cannot assign requested address"):
		return "no free local port (use -source-ips)"
	case strings.Contains(key, "too many open files"):
		return "too many open files (raise ulimit -n)"
	case strings.Contains(key, "connection reset"):
		return "connection reset"
	case strings.Contains(key, "i/o timeout"):
		return "timeout"
	case strings.Contains(key, "connection refused"):
		return "connection refused"
	}
	return key
}

func (r *runner) errorSummary() map[string]int64 {
	out := map[string]int64{}
	r.readErrs.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// closeAll closes every client and waits for the read loops.
func (r *runner) closeAll(clients []*client) {
	r.progress.set(func() string { return fmt.Sprintf("closing: %d connections open", r.alive.Load()) })
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range clients {
		if c == nil || c.ws == nil {
			continue
		}
		c.closing.Store(true)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.ws.close()
		}()
	}
	wg.Wait()
	r.wg.Wait()
}

// connectResult is what opening a set of connections measured.
type connectResult struct {
	Opened   int              `json:"opened"`
	Failed   int              `json:"failed"`
	Elapsed  float64          `json:"elapsed_s"`
	PerSec   float64          `json:"per_second"`
	Latency  latencySummary   `json:"handshake"`
	Errors   map[string]int64 `json:"errors,omitempty"`
	Finished []int64          `json:"-"` // per client: nanos after the start when it was open, 0 if failed
}

// connectAll opens clients with at most concurrency handshakes in flight
// and, when rate > 0, no more than rate starts per second. Each opened
// client starts reading unless read is false.
func (r *runner) connectAll(clients []*client, rate float64, concurrency int, read bool, phase string) connectResult {
	hist := new(histogram)
	var next, opened, failed atomic.Int64
	finished := make([]int64, len(clients))
	errs := sync.Map{}
	start := time.Now()
	r.progress.set(func() string {
		return fmt.Sprintf("%s: %d/%d open, %d failed", phase, opened.Load(), len(clients), failed.Load())
	})
	var wg sync.WaitGroup
	for range min(concurrency, len(clients)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(clients) {
					return
				}
				if rate > 0 {
					at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					if d := time.Until(at); d > 0 {
						time.Sleep(d)
					}
				}
				c := clients[i]
				t0 := time.Now()
				err := r.dialOpen(c)
				if err != nil {
					failed.Add(1)
					v, _ := errs.LoadOrStore(errKey(err), new(atomic.Int64))
					v.(*atomic.Int64).Add(1)
					c.ws = nil
					continue
				}
				now := time.Now()
				hist.record(i, int64(now.Sub(t0)))
				finished[i] = int64(now.Sub(start))
				opened.Add(1)
				if read {
					r.startReading(c)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	res := connectResult{
		Opened:   int(opened.Load()),
		Failed:   int(failed.Load()),
		Elapsed:  elapsed.Seconds(),
		PerSec:   float64(opened.Load()) / elapsed.Seconds(),
		Latency:  hist.summary(),
		Finished: finished,
		Errors:   map[string]int64{},
	}
	errs.Range(func(k, v any) bool {
		res.Errors[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	r.progress.log("%s: %d open, %d failed in %.2fs (%.0f/s)", phase, res.Opened, res.Failed, res.Elapsed, res.PerSec)
	for k, v := range res.Errors {
		r.progress.log("  %d × %s", v, k)
	}
	return res
}

// publisher publishes timestamped payloads through every target's HTTP API
// (independent instances: each fans out to its own subscribers), or through
// one API when the instances share a bus (-publish-via).
type publisher struct {
	r     *runner
	hc    *http.Client
	topic string
	size  int
	via   *target // -publish-via: publish through this API only

	sent    atomic.Int64 // publishes that every target accepted
	errs    atomic.Int64
	lastErr atomic.Value
}

func newPublisher(r *runner, topic string, size, conns int) *publisher {
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        conns * len(r.targets),
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	p := &publisher{r: r, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}, topic: topic, size: size}
	if r.cfg.publishVia != "" {
		p.via = &target{api: strings.TrimRight(r.cfg.publishVia, "/"), apiKey: r.cfg.apiKey}
	}
	return p
}

// publish sends one timestamped message to every target and records the
// seq each answered.
func (p *publisher) publish(ctx context.Context) error {
	var buf [256]byte
	var data []byte
	if p.r.cfg.shape == "json" {
		data = jsonPayload(buf[:0], time.Now().UnixNano(), p.size)
	} else {
		data = payload(buf[:0], time.Now().UnixNano(), p.size)
	}
	targets := p.r.targets
	if p.via != nil {
		targets = []*target{p.via}
	}
	for _, t := range targets {
		req, err := p.r.proto.publishRequest(t, p.topic, data)
		if err != nil {
			return err
		}
		resp, err := p.hc.Do(req.WithContext(ctx))
		if err != nil {
			p.fail(err)
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err := fmt.Errorf("publish to %s: %s: %s", t.api, resp.Status, strings.TrimSpace(string(body)))
			p.fail(err)
			return err
		}
		if seq := p.r.proto.parseSeq(body); seq > 0 {
			t.head.Store(seq)
			if p.via != nil { // instances sharing a bus share the topic's seq
				for _, t := range p.r.targets {
					t.head.Store(seq)
				}
			}
		}
	}
	p.sent.Add(1)
	return nil
}

func (p *publisher) fail(err error) {
	p.errs.Add(1)
	p.lastErr.Store(err.Error())
}

func (p *publisher) lastError() string {
	if v, ok := p.lastErr.Load().(string); ok {
		return v
	}
	return ""
}

// progress prints a status line to stderr once a second (on a terminal,
// rewriting it in place; otherwise every 5 s) while a phase runs.
type progress struct {
	quiet bool
	tty   bool
	mu    sync.Mutex
	fn    func() string
	start time.Time
	stop  chan struct{}
	wrote bool
}

func newProgress(quiet bool) *progress {
	p := &progress{quiet: quiet, start: time.Now(), stop: make(chan struct{})}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		p.tty = true
	}
	if !quiet {
		go p.loop()
	}
	return p
}

func (p *progress) set(fn func() string) {
	p.mu.Lock()
	p.fn = fn
	p.mu.Unlock()
}

func (p *progress) loop() {
	every := 5 * time.Second
	if p.tty {
		every = time.Second
	}
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tk.C:
			p.mu.Lock()
			if p.fn != nil {
				line := fmt.Sprintf("[%4.0fs] %s", time.Since(p.start).Seconds(), p.fn())
				if p.tty {
					fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
					p.wrote = true
				} else {
					fmt.Fprintln(os.Stderr, line)
				}
			}
			p.mu.Unlock()
		}
	}
}

// log prints a line that stays (not overwritten by the status line).
func (p *progress) log(format string, args ...any) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wrote {
		fmt.Fprint(os.Stderr, "\r\033[K")
		p.wrote = false
	}
	fmt.Fprintf(os.Stderr, "[%4.0fs] "+format+"\n", append([]any{time.Since(p.start).Seconds()}, args...)...)
}

func (p *progress) close() {
	if p.quiet {
		return
	}
	close(p.stop)
	p.mu.Lock()
	if p.wrote {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	p.mu.Unlock()
}
