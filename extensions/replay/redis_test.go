package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-realtime/realtime/extensions/envelope"
	"github.com/caddy-realtime/realtime/internal/testsvc"
)

// newRedisStore returns a store on the test Redis with a key prefix of its
// own, deleted in t.Cleanup.
func newRedisStore(t testing.TB, cfg RedisConfig) (*Redis, rueidis.Client, string) {
	t.Helper()
	client, prefix := testsvc.Redis(t)
	cfg.KeyPrefix = prefix + cfg.KeyPrefix
	s, err := NewRedis(client, cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	return s, client, prefix
}

func TestRedis(t *testing.T) {
	testStore(t, func(t *testing.T, cfg Config) Store {
		if cfg.Now != nil {
			t.Skip("the Redis store expires entries by the server's clock")
		}
		s, _, _ := newRedisStore(t, RedisConfig{Config: cfg})
		return s
	})
}

func TestNewRedisRefusesBadConfig(t *testing.T) {
	if _, err := NewRedis(nil, RedisConfig{}); err == nil {
		t.Error("NewRedis accepted a nil client")
	}
	client, _ := testsvc.Redis(t)
	for _, p := range []string{"{app}", "a{", "b}"} {
		if _, err := NewRedis(client, RedisConfig{KeyPrefix: p}); err == nil {
			t.Errorf("NewRedis accepted the key prefix %q", p)
		}
	}
}

func TestRedisKeysShareTheTopicsHashTag(t *testing.T) {
	s := &Redis{prefix: "p:"}
	if got, want := s.keys("chat:1"), []string{"p:rt:replay:{chat:1}:seq", "p:rt:replay:{chat:1}:buf"}; !slices.Equal(got, want) {
		t.Fatalf("keys = %q, want %q", got, want)
	}
}

// Instances are separate clients: the seq counter, not any one client,
// orders the appends.
func TestRedisConcurrentInstancesGetContiguousSeqs(t *testing.T) {
	s1, _, prefix := newRedisStore(t, RedisConfig{})
	client2, _ := testsvc.Redis(t)
	s2, err := NewRedis(client2, RedisConfig{KeyPrefix: prefix})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	topic := uniqueTopic("instances")
	const perWorker = 50
	var (
		mu   sync.Mutex
		seqs []uint64
		wg   sync.WaitGroup
	)
	for _, s := range []*Redis{s1, s2} {
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWorker {
					seq, err := s.Append(context.Background(), topic, "e", workerData(w, i))
					if err != nil {
						t.Errorf("Append: %v", err)
						return
					}
					mu.Lock()
					seqs = append(seqs, seq)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	slices.Sort(seqs)
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("sorted seqs[%d] = %d: the 300 seqs are not exactly 1..300", i, seq)
		}
	}
	if len(seqs) != 6*perWorker {
		t.Fatalf("%d seqs, want %d", len(seqs), 6*perWorker)
	}
}

// subscribe subscribes a plain rueidis Receive to channel and returns the
// messages it receives, after the subscription is confirmed.
func subscribe(t testing.TB, client rueidis.Client, channel string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 1<<12)
	confirmed := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		hook := rueidis.WithOnSubscriptionHook(ctx, func(s rueidis.PubSubSubscription) {
			if s.Kind == "subscribe" {
				once.Do(func() { close(confirmed) })
			}
		})
		_ = client.Receive(hook, client.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) {
			select {
			case got <- m.Message:
			default:
				t.Errorf("subscriber overflow")
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-confirmed:
	case <-time.After(5 * time.Second):
		t.Fatal("SUBSCRIBE not confirmed within 5s")
	}
	return got
}

func TestRedisAppendAndPublishDeliversInSeqOrder(t *testing.T) {
	client1, prefix := testsvc.Redis(t)
	client2, _ := testsvc.Redis(t)
	channel := prefix + "bus"
	s1, err1 := NewRedis(client1, RedisConfig{KeyPrefix: prefix, Channel: channel})
	s2, err2 := NewRedis(client2, RedisConfig{KeyPrefix: prefix, Channel: channel})
	if err1 != nil || err2 != nil {
		t.Fatalf("NewRedis: %v, %v", err1, err2)
	}
	received := subscribe(t, client1, channel)

	topic := uniqueTopic("ordered")
	const workers, each = 4, 50
	var wg sync.WaitGroup
	for _, s := range []*Redis{s1, s2} {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if _, err := s.AppendAndPublish(context.Background(), topic, "e", workerData(w, i)); err != nil {
						t.Errorf("AppendAndPublish: %v", err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	rg := mustSince(t, s1, topic, 0)
	for want := uint64(1); want <= 2*workers*each; want++ {
		var env string
		select {
		case env = <-received:
		case <-time.After(5 * time.Second):
			t.Fatalf("envelope for seq %d not received within 5s", want)
		}
		id, msgs, err := envelope.Decode([]byte(env), envelope.Options{})
		if err != nil {
			t.Fatalf("the bus refuses the envelope %s: %v", env, err)
		}
		if id != envelope.StoreInstanceID || len(msgs) != 1 {
			t.Fatalf("envelope %s: instanceId %q, %d messages; want %q, 1", env, id, len(msgs), envelope.StoreInstanceID)
		}
		m := msgs[0]
		if m.Seq != want || m.Topic != topic || m.Event != "e" {
			t.Fatalf("envelope %d is %s, want seq %d of topic %s", want, env, want, topic)
		}
		if e := rg.Entries[want-1]; !bytes.Equal(m.Data, e.Data) {
			t.Fatalf("seq %d published %s but buffered %s", want, m.Data, e.Data)
		}
		// The script splices the envelope itself: it must write what
		// envelope.AppendStore writes, byte for byte.
		if same := envelope.AppendStore(nil, topic, "e", m.Data, want); string(same) != env {
			t.Fatalf("the script published %s, envelope.AppendStore writes %s", env, same)
		}
	}
}

func TestRedisPayloadsSurviveByteForByte(t *testing.T) {
	client, prefix := testsvc.Redis(t)
	s, err := NewRedis(client, RedisConfig{KeyPrefix: prefix, Channel: prefix + "bus"})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	received := subscribe(t, client, prefix+"bus")
	topic := uniqueTopic("payloads")
	payloads := []string{`[]`, `{}`, `9007199254740991`, `{"b":1,"a":2}`, `"a b  c"`, ``}
	for i, p := range payloads {
		seq, err := s.AppendAndPublish(context.Background(), topic, "ev ent:"+fmt.Sprint(i), json.RawMessage(p))
		if err != nil {
			t.Fatalf("AppendAndPublish(%s): %v", p, err)
		}
		want := `{"instanceId":"replay","topic":"` + topic + `","event":"ev ent:` + fmt.Sprint(i) + `","data":` + cmp(p, "null") + `,"seq":` + fmt.Sprint(seq) + `}`
		select {
		case env := <-received:
			if env != want {
				t.Fatalf("published %s, want %s", env, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("envelope for %s not received within 5s", p)
		}
	}
	rg := mustSince(t, s, topic, 0)
	if len(rg.Entries) != len(payloads) {
		t.Fatalf("%d entries, want %d", len(rg.Entries), len(payloads))
	}
	for i, p := range payloads {
		e := rg.Entries[i]
		if string(e.Data) != p || e.Event != "ev ent:"+fmt.Sprint(i) {
			t.Errorf("seq %d came back as (%q, %q), want (%q, %q)", e.Seq, e.Event, e.Data, "ev ent:"+fmt.Sprint(i), p)
		}
	}
	if rg.Entries[len(payloads)-1].Data != nil {
		t.Errorf("empty data came back as %q, want nil", rg.Entries[len(payloads)-1].Data)
	}
}

func cmp(s, ifEmpty string) string {
	if s == "" {
		return ifEmpty
	}
	return s
}

func TestRedisAppendAndPublishRefusesTopicsItCannotSplice(t *testing.T) {
	s, _, _ := newRedisStore(t, RedisConfig{})
	for _, tc := range []struct{ topic, event string }{
		{`a"b`, "e"}, {"", "e"}, {"t", `a\b`}, {"t", ""}, {"a\nb", "e"},
	} {
		if _, err := s.AppendAndPublish(context.Background(), tc.topic, tc.event, nil); err == nil {
			t.Errorf("AppendAndPublish(%q, %q) succeeded", tc.topic, tc.event)
		}
	}
}

func TestRedisLostBufferBehindTheCounterIsTruncated(t *testing.T) {
	s, client, _ := newRedisStore(t, RedisConfig{})
	topic := uniqueTopic("lost")
	appendN(t, s, topic, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// As if the buffer had expired or been evicted by maxmemory.
	if err := client.Do(ctx, client.B().Del().Key(s.keys(topic)[1]).Build()).Error(); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	expectRange(t, mustSince(t, s, topic, 0), 3, true, 1, 0)
	expectRange(t, mustSince(t, s, topic, 3), 3, false, 1, 0)
	if seq := mustAppend(t, s, topic, eventFor(4), dataFor(4)); seq != 4 {
		t.Fatalf("Append after the loss returned %d, want 4", seq)
	}
	expectRange(t, mustSince(t, s, topic, 2), 4, true, 4, 4)
	expectRange(t, mustSince(t, s, topic, 3), 4, false, 4, 4)
}

func TestRedisTTLLeavesTheCounterWithoutExpiry(t *testing.T) {
	s, client, _ := newRedisStore(t, RedisConfig{Config: Config{TTL: time.Hour}})
	topic := uniqueTopic("ttl-keys")
	appendN(t, s, topic, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys := s.keys(topic)
	if ttl, err := client.Do(ctx, client.B().Pttl().Key(keys[0]).Build()).AsInt64(); err != nil || ttl != -1 {
		t.Errorf("counter PTTL = %d, %v; want -1 (no expiry)", ttl, err)
	}
	if ttl, err := client.Do(ctx, client.B().Pttl().Key(keys[1]).Build()).AsInt64(); err != nil || ttl <= 0 || ttl > time.Hour.Milliseconds() {
		t.Errorf("buffer PTTL = %d, %v; want within one hour", ttl, err)
	}
}

func TestRedisClearAllLeavesOtherPrefixesAlone(t *testing.T) {
	s, client, prefix := newRedisStore(t, RedisConfig{KeyPrefix: "a*:"})
	other, err := NewRedis(client, RedisConfig{KeyPrefix: prefix + "ab:"})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	topic := uniqueTopic("prefixes")
	appendN(t, s, topic, 2)
	appendN(t, other, topic, 3)
	if err := s.ClearAll(context.Background()); err != nil {
		t.Fatalf("ClearAll: %v", err)
	}
	if h := mustHead(t, s, topic); h != 2 {
		t.Fatalf("head after ClearAll = %d, want 2 (counters stay)", h)
	}
	expectRange(t, mustSince(t, s, topic, 0), 2, true, 3, 0)
	// "a*:" is a glob pattern unless escaped; it would match "ab:".
	expectRange(t, mustSince(t, other, topic, 0), 3, false, 1, 3)
}

func TestRedisParseMemberRefusesMalformedEntries(t *testing.T) {
	for _, m := range []string{"", "1", "1 ", "x 1 e", "1 x e", "1 -1 e", "1 5 abc", "1 2", "18446744073709551616 1 e"} {
		if e, ok := parseMember(m); ok {
			t.Errorf("parseMember(%q) = %+v, want a refusal", m, e)
		}
	}
	e, ok := parseMember("7 3 a b{} ")
	if !ok || e.Seq != 7 || e.Event != "a b" || string(e.Data) != "{} " {
		t.Fatalf("parseMember = %+v, %v", e, ok)
	}
}

func FuzzRedisParseMember(f *testing.F) {
	for _, s := range []string{"1 1 e{}", "12 5 hello[1,2]", "3 0 ", "1 9 e", " 1 e", "1  e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, m string) {
		if e, ok := parseMember(m); ok && len(e.Event)+len(e.Data) > len(m) {
			t.Fatalf("parseMember(%q) = %+v: more than the member holds", m, e)
		}
	})
}

// BenchmarkRedisAppend measures appends per second through one client,
// from many goroutines whose concurrent calls rueidis pipelines.
// BenchmarkRedisAppend measures appends through Redis from 64 goroutines
// on 64 topics: Append (seq + store + trim, one script) and AppendAndPublish
// (the same script also PUBLISHes the envelope, as the gateway's replay
// publishes do; nobody subscribes here, so Redis's fan-out is not counted).
func BenchmarkRedisAppend(b *testing.B) {
	s, _, _ := newRedisStore(b, RedisConfig{})
	data := json.RawMessage(`{"id":12345,"text":"a message of about one hundred bytes, as a chat line would be","ok":true}`)
	topics := make([]string, 64)
	for i := range topics {
		topics[i] = uniqueTopic("bench")
	}
	for _, bc := range []struct {
		name   string
		append func(ctx context.Context, topic, event string, data json.RawMessage) (uint64, error)
	}{{"append", s.Append}, {"append+publish", s.AppendAndPublish}} {
		b.Run(bc.name, func(b *testing.B) {
			var next sync.Mutex
			n := 0
			b.SetParallelism(64)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				next.Lock()
				topic := topics[n%len(topics)]
				n++
				next.Unlock()
				ctx := context.Background()
				for pb.Next() {
					if _, err := bc.append(ctx, topic, "created", data); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
		})
	}
}

// A Redis that lost its data (restarted without persistence, flushed,
// failed over to a replica that lagged) must not issue a seq a second time:
// an instance that saw seq 5 continues above it, and a reader asking after
// 5 is told it was truncated (docs/protocol.md §5.2).
func TestRedisSeqsSurviveALossOfTheData(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, client rueidis.Client, keys []string)
	}{
		{"the keys are gone", func(t *testing.T, client rueidis.Client, keys []string) {
			if err := client.Do(context.Background(), client.B().Del().Key(keys...).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}},
		{"the counter went back", func(t *testing.T, client rueidis.Client, keys []string) {
			if err := client.Do(context.Background(), client.B().Set().Key(keys[0]).Value("3").Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s1, client, prefix := newRedisStore(t, RedisConfig{})
			// Another instance on its own client, which only received seq 5
			// on the bus.
			s2, err := NewRedis(testsvc.Connect(t, testsvc.RedisAddr()), RedisConfig{KeyPrefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			topic := uniqueTopic("loss")
			appendN(t, s1, topic, 5)
			s2.Observe(topic, 5)
			tc.lose(t, client, s1.keys(topic))

			first := mustAppend(t, s2, topic, "e", dataFor(6))
			if want := uint64(5 + LossMargin + 1); first != want {
				t.Fatalf("first seq after the loss = %d, want %d (5 + LossMargin + 1)", first, want)
			}
			if seq := mustAppend(t, s1, topic, "e", dataFor(7)); seq != first+1 {
				t.Fatalf("next seq = %d, want %d", seq, first+1)
			}
			rg := mustSince(t, s1, topic, 5)
			if !rg.Truncated || rg.Head != first+1 || len(rg.Entries) != 2 || rg.Entries[0].Seq != first {
				t.Fatalf("Since(5) after the loss = %+v, want truncated, head %d, the two new entries", rg, first+1)
			}
			// A store that never saw the topic follows the raised counter.
			s3, err := NewRedis(testsvc.Connect(t, testsvc.RedisAddr()), RedisConfig{KeyPrefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			if seq := mustAppend(t, s3, topic, "e", dataFor(8)); seq != first+2 {
				t.Fatalf("seq from a fresh instance = %d, want %d", seq, first+2)
			}
		})
	}
}

// A head an instance read (a subscriber's baseline, a resume) counts as a
// seq it saw: after a loss, its appends continue above it too.
func TestRedisSeqsSurviveALossSeenOnlyByReading(t *testing.T) {
	s1, client, prefix := newRedisStore(t, RedisConfig{})
	reader, err := NewRedis(testsvc.Connect(t, testsvc.RedisAddr()), RedisConfig{KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	topic := uniqueTopic("loss-read")
	appendN(t, s1, topic, 5)
	if h := mustHead(t, reader, topic); h != 5 {
		t.Fatalf("head %d, want 5", h)
	}
	if err := client.Do(context.Background(), client.B().Del().Key(s1.keys(topic)...).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if seq := mustAppend(t, reader, topic, "e", dataFor(6)); seq != 5+LossMargin+1 {
		t.Fatalf("first seq after the loss from the instance that read head 5: %d, want %d", seq, 5+LossMargin+1)
	}
}

// The reference Node package's replay.clear() deletes replay:* keys: the
// gateway's keys must not match that pattern, prefix or not.
func TestRedisKeysAreOutOfTheReferencePackagesPattern(t *testing.T) {
	for _, prefix := range []string{"", "app:"} {
		s := &Redis{prefix: prefix}
		for _, k := range s.keys("chat") {
			if ok, _ := path.Match("replay:*", k); ok {
				t.Errorf("key %q matches replay:*", k)
			}
		}
	}
}
