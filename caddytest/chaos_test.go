package caddytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// The chaos test checks the delivery promise of replayed topics under the
// faults a deployment meets: a client misses nothing, sees nothing twice
// and nothing out of order, or is told `truncated` where the store lost
// the events. Each fault runs in a cluster of its own (3 Caddy instances,
// a redis-server with an append-only file, a PostgreSQL server), so that a
// fault's damage cannot show up in the next fault's figures: 30 current
// clients subscribe to 3 topics under `store redis` and 3 under `store
// postgres`, an application publishes about 150 events/s through the API
// of every instance in turn, the fault strikes, publishing goes on, and
// once every client has caught up with the last acknowledged seq each
// client's log is checked against the publisher's acknowledgements.

var (
	chaosRedisTopics = []string{"chaos-r0", "chaos-r1", "chaos-r2"}
	chaosPGTopics    = []string{"chaos-p0", "chaos-p1", "chaos-p2"}
	chaosTopics      = append(slices.Clone(chaosRedisTopics), chaosPGTopics...)
)

const (
	chaosClients    = 30
	chaosPublishers = 6                     // concurrent publish loops
	chaosTick       = 40 * time.Millisecond // per loop: 6 × 25/s = 150 attempts/s
	chaosSteady     = 5 * time.Second       // publishing before the fault
	chaosAfter      = 8 * time.Second       // publishing after it
	chaosDown       = 3 * time.Second       // how long a backend or an instance stays down
	chaosCatchUp    = 20 * time.Second      // bound for every client to reach the final seqs

	// maxSafeSeq is the largest integer a JavaScript number holds exactly
	// (docs/protocol.md §5.2).
	maxSafeSeq = 1<<53 - 1
)

const chaosSite = `
	realtime {
		api /_realtime
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
		replay chaos-r* {
			store redis
			size 2000
		}
		replay chaos-p* {
			store postgres
			size 2000
		}
	}`

// chaosFault is one fault: strike runs it (it returns when the fault is
// over) and reports when Redis answered again, for the Redis faults.
type chaosFault struct {
	name   string
	lossy  bool // the Redis store loses its data: loss is allowed there, with truncated
	strike func(t *testing.T, cc *chaosCluster) (redisBack time.Time)
	// redis starts the Redis the cluster uses and returns the `redis`
	// option's URL. Default: a redis-server with an append-only file.
	redis func(t *testing.T, cc *chaosCluster) string
}

var chaosFaults = []chaosFault{
	{name: "instance SIGKILL+restart", strike: func(t *testing.T, cc *chaosCluster) time.Time {
		in := cc.node(0)
		_ = in.cmd.Process.Kill()
		<-in.done
		time.Sleep(chaosDown)
		cc.replace(t, 0)
		return time.Time{}
	}},
	{name: "instance SIGTERM+restart", strike: func(t *testing.T, cc *chaosCluster) time.Time {
		cc.node(0).stop(15 * time.Second)
		time.Sleep(chaosDown)
		cc.replace(t, 0)
		return time.Time{}
	}},
	{name: "redis restart with data", strike: func(t *testing.T, cc *chaosCluster) time.Time {
		cc.redis.Kill()
		time.Sleep(chaosDown)
		cc.redis.Restart()
		return time.Now()
	}},
	{name: "redis restart empty", lossy: true, strike: func(t *testing.T, cc *chaosCluster) time.Time {
		cc.redis.Kill()
		cc.redis.Wipe()
		time.Sleep(chaosDown)
		cc.redis.Restart()
		return time.Now()
	}},
	{name: "postgres restart", strike: func(t *testing.T, cc *chaosCluster) time.Time {
		cc.pg.Kill()
		time.Sleep(chaosDown)
		cc.pg.Restart()
		return time.Time{}
	}},
}

func TestChaosDelivery(t *testing.T) {
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	var rows []chaosRow
	for _, f := range chaosFaults {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
			rows = append(rows, runChaos(t, f))
		})
	}
	table := chaosTable(rows)
	t.Logf("chaos figures:\n%s", table)
	if testing.Verbose() {
		fmt.Print(table)
	}
}

// sentinelFailover SIGKILLs the master of a Sentinel group; the Sentinels
// promote its replica, which replication may have left a few writes
// behind (lossy: the store may have lost acknowledged events, which it
// must announce with truncated).
var sentinelFailover = chaosFault{
	name:  "sentinel master SIGKILL",
	lossy: true,
	redis: func(t *testing.T, cc *chaosCluster) string {
		cc.sentinel = testsvc.StartSentinel(t)
		return cc.sentinel.URL()
	},
	strike: func(t *testing.T, cc *chaosCluster) time.Time {
		took := cc.sentinel.KillMasterAndWaitFailover(30 * time.Second)
		t.Logf("the sentinels promoted the replica %s after the master's SIGKILL", took.Round(time.Millisecond))
		return time.Now()
	},
}

// clusterFailover SIGKILLs the master of the slot of chaos-r0 (its
// replay keys and its shard channel) in a Redis Cluster of 3 masters and
// 3 replicas; the replica takes over. Replication is asynchronous, so it
// is lossy as a Sentinel failover is.
var clusterFailover = chaosFault{
	name:  "cluster master SIGKILL",
	lossy: true,
	redis: func(t *testing.T, cc *chaosCluster) string {
		cc.rcluster = testsvc.StartCluster(t)
		return cc.rcluster.URL()
	},
	strike: func(t *testing.T, cc *chaosCluster) time.Time {
		took := cc.rcluster.KillMasterOf(cc.rcluster.Slot(chaosRedisTopics[0]), 30*time.Second)
		t.Logf("the replica took the slot of %s over %s after its master's SIGKILL", chaosRedisTopics[0], took.Round(time.Millisecond))
		return time.Now()
	},
}

// TestChaosClusterFailover runs the chaos checks through the failover of
// a Redis Cluster master: the bus's shard subscriptions and the stores
// follow the promoted replica without a Caddy restart.
func TestChaosClusterFailover(t *testing.T) {
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	row := runChaos(t, clusterFailover)
	t.Logf("chaos figures:\n%s", chaosTable([]chaosRow{row}))
}

// TestChaosSentinelFailover runs the chaos checks through a Sentinel
// failover: the instances follow the promoted replica without a restart.
func TestChaosSentinelFailover(t *testing.T) {
	if caddyBin == "" {
		t.Skip("integration tests need the Caddy binary; skipped in -short mode")
	}
	row := runChaos(t, sentinelFailover)
	t.Logf("chaos figures:\n%s", chaosTable([]chaosRow{row}))
}

// chaosCluster is a cluster whose instances may be replaced while clients
// and the publisher use it.
type chaosCluster struct {
	*cluster
	sentinel *testsvc.Sentinel // with a Sentinel fault; cluster.redis is nil then
	rcluster *testsvc.Cluster  // with a Redis Cluster fault; likewise
	pg       *testsvc.PostgresServer
	global   string
	mu       sync.Mutex
}

func startChaosCluster(t *testing.T, f chaosFault) *chaosCluster {
	t.Helper()
	cc := &chaosCluster{cluster: &cluster{}, pg: testsvc.StartPostgres(t)}
	url := ""
	if f.redis != nil {
		url = f.redis(t, cc)
	} else {
		cc.redis = testsvc.StartRedisAOF(t)
		url = "redis://" + cc.redis.Addr()
	}
	cc.global = fmt.Sprintf("\trealtime {\n\t\tredis %s {\n\t\t\tkey_prefix t:\n\t\t}\n\t\tpostgres %s\n\t}", url, cc.pg.URL())
	for i := 0; i < 3; i++ {
		cc.nodes = append(cc.nodes, startCaddyWith(t, cc.global, chaosSite))
	}
	return cc
}

func (cc *chaosCluster) node(i int) *instance {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.nodes[i%len(cc.nodes)]
}

// replace starts a new instance in slot i (on another port: clients and
// the publisher find it through node).
func (cc *chaosCluster) replace(t *testing.T, i int) {
	in := startCaddyWith(t, cc.global, chaosSite)
	cc.mu.Lock()
	cc.nodes[i] = in
	cc.mu.Unlock()
}

// chaosEntry is one line of a client's log.
type chaosEntry struct {
	at    time.Time
	conn  int    // the client's connection number, from 1
	kind  string // open, resume, subscribed, event, truncated, system, closed, error
	topic string
	seq   uint64
	id    int64 // the event's data id; -1 when the data is not {"id":n}
	note  string
}

func (e chaosEntry) String() string {
	s := fmt.Sprintf("%s conn %d %-10s", e.at.Format("15:04:05.000"), e.conn, e.kind)
	if e.topic != "" {
		s += " " + e.topic
	}
	if e.kind == "event" {
		s += fmt.Sprintf(" seq %d id %d", e.seq, e.id)
	}
	if e.note != "" {
		s += " " + e.note
	}
	return s
}

// chaosClient is a current-protocol client (hello with the batch cap,
// resume with its highest seq per topic, subscribe-batch) that moves to
// the next instance whenever its connection ends, and logs everything it
// receives on the chaos topics.
type chaosClient struct {
	n  int
	cc *chaosCluster

	mu   sync.Mutex
	log  []chaosEntry
	last map[string]uint64 // highest seq seen per topic
	// contig is, per topic, the highest seq up to which the stream had no
	// skip other than one announced by a truncated notice; a skip without
	// one stops it for good (the stream is broken there).
	contig  map[string]uint64
	broken  map[string]bool
	noticed map[string]bool // a truncated notice since the last event
	acks    int             // subscribed acks on the current connection
	session string
	conns   int
}

func (c *chaosClient) add(e chaosEntry) {
	e.at = time.Now()
	c.mu.Lock()
	e.conn = c.conns
	c.log = append(c.log, e)
	switch e.kind {
	case "event":
		c.last[e.topic] = max(c.last[e.topic], e.seq)
		switch n := c.contig[e.topic]; {
		case c.broken[e.topic] || e.seq <= n:
		case n == 0 || e.seq == n+1 || c.noticed[e.topic]:
			c.contig[e.topic] = e.seq
		default:
			c.broken[e.topic] = true
		}
		c.noticed[e.topic] = false
	case "truncated":
		c.noticed[e.topic] = true
	}
	if e.kind == "subscribed" {
		c.acks++
	}
	c.mu.Unlock()
}

// run connects to instance slot start, then to the next slot after every
// close, until ctx ends.
func (c *chaosClient) run(ctx context.Context, start int) {
	for slot := start; ctx.Err() == nil; slot++ {
		in := c.cc.node(slot)
		conn, _, err := tryDial(in, dialOpts{origin: in.origin()})
		if err != nil {
			c.add(chaosEntry{kind: "error", note: fmt.Sprintf("dial %s: %v", in.addr(), err)})
		} else {
			c.serve(ctx, conn, in)
		}
		select { // a short backoff, so that the test sees many resumes quickly
		case <-time.After(time.Duration(100+rand.IntN(300)) * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// serve runs one connection: the current client's opening frames, then
// every frame received, until the connection ends.
func (c *chaosClient) serve(ctx context.Context, conn *websocket.Conn, in *instance) {
	defer conn.CloseNow()
	conn.SetReadLimit(4 << 20)
	c.mu.Lock()
	c.conns++
	c.acks = 0
	session := c.session
	seqs := make(map[string]uint64, len(c.last))
	for t, s := range c.last {
		seqs[t] = s
	}
	c.mu.Unlock()
	c.add(chaosEntry{kind: "open", note: in.addr()})
	first := []string{`{"type":"hello","caps":["batch"]}`}
	if len(seqs) > 0 {
		b, _ := json.Marshal(map[string]any{"type": "resume", "sessionId": session, "lastSeenSeqs": seqs})
		first = append(first, string(b))
		c.add(chaosEntry{kind: "resume", note: fmt.Sprint(seqs)})
	}
	b, _ := json.Marshal(map[string]any{"type": "subscribe-batch", "topics": chaosTopics, "ref": c.conns})
	first = append(first, string(b))
	for _, f := range first {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := conn.Write(wctx, websocket.MessageText, []byte(f))
		cancel()
		if err != nil {
			c.add(chaosEntry{kind: "closed", note: "write: " + err.Error()})
			return
		}
	}
	for {
		_, raw, err := conn.Read(ctx)
		if err != nil {
			c.add(chaosEntry{kind: "closed", note: err.Error()})
			return
		}
		for _, el := range elements(raw) {
			c.frame([]byte(el))
		}
	}
}

func (c *chaosClient) frame(raw []byte) {
	var f struct {
		Type      string          `json:"type"`
		Topic     string          `json:"topic"`
		Event     string          `json:"event"`
		Data      json.RawMessage `json:"data"`
		Seq       uint64          `json:"seq"`
		SessionID string          `json:"sessionId"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		c.add(chaosEntry{kind: "error", note: fmt.Sprintf("frame %s: %v", raw, err)})
		return
	}
	switch {
	case f.Type == "welcome":
		c.mu.Lock()
		c.session = f.SessionID
		c.mu.Unlock()
	case f.Type == "resumed":
	case f.Type == "subscribed":
		c.add(chaosEntry{kind: "subscribed", topic: f.Topic})
	case f.Type != "":
		if f.Type != "heartbeat" {
			c.add(chaosEntry{kind: "system", note: string(raw)})
		}
	case f.Topic == "__realtime":
		c.add(chaosEntry{kind: "system", note: f.Event})
	case !slices.Contains(chaosTopics, f.Topic):
	case f.Event == "truncated" && f.Seq == 0:
		c.add(chaosEntry{kind: "truncated", topic: f.Topic})
	case f.Seq == 0:
		c.add(chaosEntry{kind: "error", topic: f.Topic, note: "an event without seq: " + string(raw)})
	default:
		var d struct{ ID int64 }
		if json.Unmarshal(f.Data, &d) != nil || d.ID <= 0 {
			d.ID = -1
		}
		c.add(chaosEntry{kind: "event", topic: f.Topic, seq: f.Seq, id: d.ID})
	}
}

// reached reports whether the client has seen, per topic, a seq of at
// least want's; with contiguous, with no unannounced skip before it.
func (c *chaosClient) reached(want map[string]uint64, contiguous bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	seqs := c.last
	if contiguous {
		seqs = c.contig
	}
	for t, s := range want {
		if seqs[t] < s {
			return false
		}
	}
	return true
}

// chaosAck is an acknowledged publish.
type chaosAck struct {
	id int64
	at time.Time
}

// chaosPublisher is the application: publish loops that go round the
// instances and the topics, each event's data carrying a unique id, and
// that record the seq the API answered. A failed publish may or may not
// have been stored; the loop goes on with a new id.
type chaosPublisher struct {
	cc     *chaosCluster
	http   *http.Client
	nextID atomic.Int64

	mu       sync.Mutex
	acked    map[string]map[uint64]chaosAck
	reused   []string // a seq answered for two ids
	attempts int
	failed   int
}

func newChaosPublisher(cc *chaosCluster) *chaosPublisher {
	p := &chaosPublisher{cc: cc, http: &http.Client{Timeout: 5 * time.Second}, acked: map[string]map[uint64]chaosAck{}}
	for _, t := range chaosTopics {
		p.acked[t] = map[uint64]chaosAck{}
	}
	return p
}

// publish sends one event to topic through slot's instance; it returns
// the seq, or false when the publish was not acknowledged.
func (p *chaosPublisher) publish(slot int, topic string) (uint64, bool) {
	id := p.nextID.Add(1)
	in := p.cc.node(slot)
	body := fmt.Sprintf(`{"topic":%q,"event":"e","data":{"id":%d}}`, topic, id)
	p.mu.Lock()
	p.attempts++
	p.mu.Unlock()
	resp, err := p.http.Post(in.url("/_realtime/publish"), "application/json", strings.NewReader(body))
	var r struct{ Seq uint64 }
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &r) != nil || r.Seq == 0 {
			err = fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.failed++
		return 0, false
	}
	if prev, ok := p.acked[topic][r.Seq]; ok && prev.id != id {
		p.reused = append(p.reused, fmt.Sprintf("%s seq %d answered for id %d and id %d", topic, r.Seq, prev.id, id))
	} else {
		p.acked[topic][r.Seq] = chaosAck{id: id, at: time.Now()}
	}
	return r.Seq, true
}

// run is one publish loop: every chaosTick the next topic, on the next
// instance; a failure is retried on the next instance with a new id.
func (p *chaosPublisher) run(ctx context.Context, loop int) {
	tick := time.NewTicker(chaosTick)
	defer tick.Stop()
	for k := loop; ; k += chaosPublishers {
		topic := chaosTopics[k%len(chaosTopics)]
		for slot := k; ; slot++ {
			if _, ok := p.publish(slot, topic); ok || ctx.Err() != nil {
				break
			}
			select {
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// heads returns the highest acknowledged seq per topic, counting only
// acknowledgements before cut (zero: all).
func (p *chaosPublisher) heads(cut time.Time) map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]uint64{}
	for t, m := range p.acked {
		for s, a := range m {
			if (cut.IsZero() || a.at.Before(cut)) && s > out[t] {
				out[t] = s
			}
		}
	}
	return out
}

// ackedSince reports whether every Redis topic has an acknowledgement
// after at: the store takes publishes again.
func (p *chaosPublisher) ackedSince(at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range chaosRedisTopics {
		ok := false
		for _, a := range p.acked[t] {
			if a.at.After(at) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// chaosRow is one fault's figures.
type chaosRow struct {
	fault      string
	wrong      int // client-topics with any violation
	missing    int // acknowledged events in a client's range it never saw (and no allowed loss)
	duplicates int
	backwards  int
	gaps       int // seq skips without a truncated notice before them
	mismatched int // a seq naming another event than elsewhere
	truncated  int // notices received
	badNotices int // notices where the store lost nothing
	acked      int
	failed     int
	rate       float64       // acknowledged publishes per second while the publisher ran
	fill       time.Duration // Redis back until every client caught up; -1: not measured, -2: not reached
}

func runChaos(t *testing.T, f chaosFault) chaosRow {
	row := chaosRow{fault: f.name, fill: -1}
	cc := startChaosCluster(t, f)
	pub := newChaosPublisher(cc)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stopAll := func() { cancel(); wg.Wait() }
	defer stopAll()
	clients := make([]*chaosClient, chaosClients)
	for i := range clients {
		c := &chaosClient{n: i, cc: cc, last: map[string]uint64{}, contig: map[string]uint64{}, broken: map[string]bool{}, noticed: map[string]bool{}}
		clients[i] = c
		wg.Add(1)
		go func() { defer wg.Done(); c.run(ctx, i) }()
	}
	waitFor(t, 20*time.Second, "every client subscribed to every topic", func() bool {
		for _, c := range clients {
			c.mu.Lock()
			n := c.acks
			c.mu.Unlock()
			if n < len(chaosTopics) {
				return false
			}
		}
		return true
	})
	// One event per topic reaches every client: the instances' bus
	// subscriptions and both stores are up.
	first := map[string]uint64{}
	for i, topic := range chaosTopics {
		id := pub.nextID.Add(1)
		seq := publishOnceUp(t, cc.node(i), fmt.Sprintf(`{"topic":%q,"event":"e","data":{"id":%d}}`, topic, id), "a first publish to "+topic)
		pub.mu.Lock()
		pub.acked[topic][seq] = chaosAck{id: id, at: time.Now()}
		pub.mu.Unlock()
		first[topic] = seq
	}
	waitFor(t, 20*time.Second, "every client to see the first event of every topic", func() bool {
		for _, c := range clients {
			if !c.reached(first, false) {
				return false
			}
		}
		return true
	})

	pubCtx, stopPub := context.WithCancel(context.Background())
	var pubWG sync.WaitGroup
	pubStart := time.Now()
	for i := 0; i < chaosPublishers; i++ {
		pubWG.Add(1)
		go func() { defer pubWG.Done(); pub.run(pubCtx, i) }()
	}
	defer func() { stopPub(); pubWG.Wait() }()
	time.Sleep(chaosSteady)
	t.Logf("fault: %s", f.name)
	redisBack := f.strike(t, cc)
	if !redisBack.IsZero() {
		// The live fill: every client's stream reaches, without an
		// unannounced skip, what was acknowledged up to the moment every
		// Redis topic takes publishes again, including the first events
		// published while the instances were getting their bus
		// subscriptions back.
		row.fill = -2
		deadline := redisBack.Add(chaosCatchUp)
		for !pub.ackedSince(redisBack) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		storeBack := time.Since(redisBack)
		want := pub.heads(time.Time{})
		for time.Now().Before(deadline) {
			if allReached(clients, want, true) {
				row.fill = time.Since(redisBack)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		reached := fmt.Sprintf("after %s", row.fill.Round(time.Millisecond))
		if row.fill < 0 {
			reached = fmt.Sprintf("not within %s", chaosCatchUp)
		}
		t.Logf("live fill: every Redis topic took publishes again %s after redis answered; every client's stream reached %v, without a skip, %s",
			storeBack.Round(time.Millisecond), want, reached)
	}
	time.Sleep(chaosAfter)
	stopPub()
	pubWG.Wait()
	pubTime := time.Since(pubStart)
	final := pub.heads(time.Time{})
	caught := rpPoll(chaosCatchUp, func() bool { return allReached(clients, final, false) })
	time.Sleep(200 * time.Millisecond) // anything still on its way shows as a duplicate
	stopAll()
	if !caught {
		t.Errorf("not every client reached the last acknowledged seqs %v within %s", final, chaosCatchUp)
	}

	pub.mu.Lock()
	for _, m := range pub.acked {
		row.acked += len(m)
	}
	row.failed = pub.failed
	reused := pub.reused
	pub.mu.Unlock()
	row.rate = float64(row.acked-len(chaosTopics)) / pubTime.Seconds()
	reconnects := 0
	for _, c := range clients {
		reconnects += c.conns - 1
	}
	problems := checkChaos(f, clients, pub, final, &row)
	row.mismatched += len(reused)
	for _, r := range reused {
		problems = append(problems, "the API answered one seq twice: "+r)
	}
	t.Logf("%s: %d client-topics wrong, %d missing, %d duplicates, %d backwards, %d gaps, %d mismatched, %d truncated (%d where nothing was lost); %d publishes acknowledged (%.0f/s), %d failed; %d reconnects",
		f.name, row.wrong, row.missing, row.duplicates, row.backwards, row.gaps, row.mismatched, row.truncated, row.badNotices, row.acked, row.rate, row.failed, reconnects)
	if len(problems) > 0 {
		if len(problems) > 6 {
			problems = append(problems[:6], fmt.Sprintf("… and %d more", len(problems)-6))
		}
		t.Errorf("delivery invariants broken under %q:\n%s", f.name, strings.Join(problems, "\n\n"))
	}
	return row
}

func allReached(clients []*chaosClient, want map[string]uint64, contiguous bool) bool {
	for _, c := range clients {
		if !c.reached(want, contiguous) {
			return false
		}
	}
	return true
}

// checkChaos checks every client's log per topic and fills row. It
// returns a description with a log excerpt of the first violation of each
// kind.
func checkChaos(f chaosFault, clients []*chaosClient, pub *chaosPublisher, final map[string]uint64, row *chaosRow) []string {
	// canonical holds the event id of each seq: the publisher's answers,
	// then what the first client to see an unacknowledged seq saw.
	canonical := map[string]map[uint64]int64{}
	pub.mu.Lock()
	for t, m := range pub.acked {
		canonical[t] = map[uint64]int64{}
		for s, a := range m {
			canonical[t][s] = a.id
		}
	}
	ackedAt := map[string]map[uint64]chaosAck{}
	ackedSeqs := map[string][]uint64{}
	for t, m := range pub.acked {
		ackedAt[t] = maps.Clone(m)
		for s := range m {
			ackedSeqs[t] = append(ackedSeqs[t], s)
		}
		slices.Sort(ackedSeqs[t])
	}
	pub.mu.Unlock()
	reportedKinds := map[string]bool{}
	var problems []string
	for _, c := range clients {
		c.mu.Lock()
		log := slices.Clone(c.log)
		c.mu.Unlock()
		report := func(kind string, topic string, at int, what string) {
			if reportedKinds[kind] {
				return
			}
			reportedKinds[kind] = true
			problems = append(problems, fmt.Sprintf("%s: client %d, %s: %s\n%s", kind, c.n, topic, what, excerpt(log, topic, at)))
		}
		for _, topic := range chaosTopics {
			lossAllowed := f.lossy && slices.Contains(chaosRedisTopics, topic)
			var (
				last, firstSeq uint64
				noticed        bool // a truncated notice since the last event
				seen           = map[uint64]int64{}
				covered        [][2]uint64 // gaps (lo, hi) exclusive, after a notice
				bad            bool
			)
			for i, e := range log {
				if e.topic != topic {
					continue
				}
				switch e.kind {
				case "error":
					bad = true
					report("error", topic, i, e.note)
				case "truncated":
					row.truncated++
					noticed = true
					if !lossAllowed {
						row.badNotices++
						bad = true
						report("truncated where the store lost nothing", topic, i, "a truncated notice")
					}
				case "event":
					if e.seq > maxSafeSeq {
						bad = true
						report("seq above 2^53-1", topic, i, fmt.Sprint(e.seq))
					}
					want, known := canonical[topic][e.seq]
					switch {
					case !known:
						canonical[topic][e.seq] = e.id
					case want != e.id:
						row.mismatched++
						bad = true
						report("one seq, two events", topic, i, fmt.Sprintf("seq %d carries id %d, elsewhere id %d", e.seq, e.id, want))
					}
					switch {
					case last == 0:
						firstSeq = e.seq
					case seen[e.seq] != 0:
						row.duplicates++
						bad = true
						report("duplicate", topic, i, fmt.Sprintf("seq %d again", e.seq))
						continue
					case e.seq < last:
						row.backwards++
						bad = true
						report("backwards", topic, i, fmt.Sprintf("seq %d after %d", e.seq, last))
						continue
					case e.seq > last+1 && noticed:
						covered = append(covered, [2]uint64{last, e.seq})
					case e.seq > last+1:
						row.gaps++
						bad = true
						report("gap without truncated", topic, i, fmt.Sprintf("seq %d after %d", e.seq, last))
					}
					seen[e.seq] = e.id
					last, noticed = e.seq, false
				}
			}
			if firstSeq == 0 {
				row.wrong++
				report("no events", topic, len(log), "the client saw no event of the topic")
				continue
			}
			for _, s := range ackedSeqs[topic] {
				if s < firstSeq || s > final[topic] || seen[s] != 0 {
					continue
				}
				inCovered := slices.ContainsFunc(covered, func(g [2]uint64) bool { return s > g[0] && s < g[1] })
				if inCovered && lossAllowed {
					continue
				}
				row.missing++
				bad = true
				at := slices.IndexFunc(log, func(e chaosEntry) bool { return e.topic == topic && e.kind == "event" && e.seq > s })
				if at < 0 {
					at = len(log)
				}
				report("missing", topic, at, fmt.Sprintf("acknowledged seq %d (id %d, acknowledged %s) never arrived", s, ackedAt[topic][s].id, ackedAt[topic][s].at.Format("15:04:05.000")))
			}
			if bad {
				row.wrong++
			}
		}
	}
	return problems
}

// excerpt is the part of a client's log around index at: the entries of
// topic and the connection-level ones.
func excerpt(log []chaosEntry, topic string, at int) string {
	var before, after []string
	for i := at - 1; i >= 0 && len(before) < 10; i-- {
		if log[i].topic == topic || log[i].topic == "" {
			before = append(before, "    "+log[i].String())
		}
	}
	slices.Reverse(before)
	for i := at; i < len(log) && len(after) < 4; i++ {
		if log[i].topic == topic || log[i].topic == "" {
			mark := "    "
			if i == at {
				mark = "  > "
			}
			after = append(after, mark+log[i].String())
		}
	}
	return strings.Join(append(before, after...), "\n")
}

func chaosTable(rows []chaosRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-26s %7s %8s %6s %6s %5s %9s %10s %7s %7s %11s\n",
		"fault", "wrong", "missing", "dups", "backw", "gaps", "mismatch", "truncated", "acked", "acked/s", "live fill")
	for _, r := range rows {
		fill := "n/a"
		switch {
		case r.fill == -2:
			fill = fmt.Sprintf(">%s", chaosCatchUp)
		case r.fill >= 0:
			fill = r.fill.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "%-26s %3d/%-3d %8d %6d %6d %5d %9d %10d %7d %7.0f %11s\n",
			r.fault, r.wrong, chaosClients*len(chaosTopics), r.missing, r.duplicates, r.backwards, r.gaps, r.mismatched, r.truncated, r.acked, r.rate, fill)
	}
	return b.String()
}
