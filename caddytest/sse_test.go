package caddytest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The SSE endpoint (docs/protocol.md §10) against real Caddy processes:
// a plain HTTP client and curl reading the stream, resume through
// Last-Event-ID on another instance after a stop or a kill, tokens, and
// reloads.

// sseEvent is one event of a stream; a comment has only Comment set.
type sseEvent struct {
	ID, Event, Data string
	Comment         string
}

// readSSE parses r into events sent on the returned channel, closed at the
// end of the stream.
func readSSE(r io.Reader) <-chan sseEvent {
	out := make(chan sseEvent, 1024)
	go func() {
		defer close(out)
		br := bufio.NewReader(r)
		var ev sseEvent
		var data []string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if data != nil {
					ev.Data = strings.Join(data, "\n")
					out <- ev
				}
				ev, data = sseEvent{}, nil
			case strings.HasPrefix(line, ":"):
				out <- sseEvent{Comment: strings.TrimSpace(line[1:])}
			default:
				field, value, _ := strings.Cut(line, ":")
				value = strings.TrimPrefix(value, " ")
				switch field {
				case "id":
					ev.ID = value
				case "event":
					ev.Event = value
				case "data":
					data = append(data, value)
				}
			}
		}
	}()
	return out
}

// sseStream is an open stream read by a plain HTTP client.
type sseStream struct {
	t      *testing.T
	events <-chan sseEvent
	lastID string
	cancel context.CancelFunc
}

// openStream GETs path on in and fails unless it answers 200 with an
// event stream.
func openStream(t *testing.T, in *instance, path string, header http.Header) *sseStream {
	t.Helper()
	resp, cancel := getStream(t, in, path, header)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %q %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return &sseStream{t: t, events: readSSE(resp.Body), cancel: cancel}
}

func getStream(t *testing.T, in *instance, path string, header http.Header) (*http.Response, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, in.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	// A transport of its own: a stream must not take, or leave, an idle
	// keep-alive connection of the API client's.
	tr := &http.Transport{}
	var resp *http.Response
	for attempt := 1; ; attempt++ {
		if resp, err = (&http.Client{Transport: tr}).Do(req); err == nil {
			break
		}
		// A connection the old server of a reload accepted as it went
		// away is dropped without an answer; EventSource retries then too.
		if attempt == 3 {
			cancel()
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	t.Cleanup(func() { cancel(); resp.Body.Close(); tr.CloseIdleConnections() })
	return resp, cancel
}

// next returns the next event, comments skipped, remembering its id as
// an EventSource does.
func (s *sseStream) next() sseEvent {
	s.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				s.t.Fatal("the stream ended")
			}
			if ev.Comment != "" {
				continue
			}
			if ev.ID != "" {
				s.lastID = ev.ID
			}
			return ev
		case <-timeout:
			s.t.Fatal("no event within 10s")
		}
	}
}

// expectData reads the next event and checks its data.
func (s *sseStream) expectData(want string) sseEvent {
	s.t.Helper()
	ev := s.next()
	if ev.Data != want {
		s.t.Fatalf("event %+v, want data %s", ev, want)
	}
	return ev
}

// end waits for the stream's end and returns the events before it.
func (s *sseStream) end() []sseEvent {
	s.t.Helper()
	var out []sseEvent
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return out
			}
			if ev.Comment == "" {
				out = append(out, ev)
			}
		case <-timeout:
			s.t.Fatal("the stream did not end within 15s")
		}
	}
}

const sseClusterSite = `
	realtime {
		api /_realtime
		sse /events
		shutdown_spread 0
		replay chat* {
			store redis
			size 100
		}
	}`

func chatEnvelope(n int) string {
	return fmt.Sprintf(`{"topic":"chat","event":"m","data":%d,"seq":%d}`, n, n)
}

// A stream of one instance resumes on another after the first stops: the
// stop ends the stream with the close event, and Last-Event-ID brings
// exactly the events published meanwhile, then the live ones.
func TestSSEResumeOnAnotherInstanceAfterAStop(t *testing.T) {
	cl := startCluster(t, 2, sseClusterSite)
	s := openStream(t, cl.nodes[0], "/events?topic=chat&topic=news", nil)
	if ev := s.next(); ev.Event != "welcome" || ev.ID == "" {
		t.Fatalf("first event %+v, want welcome with an id", ev)
	}
	for i := 1; i <= 3; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
		s.expectData(chatEnvelope(i))
	}
	publish(t, cl.nodes[1], `{"topic":"news","event":"n","data":"x"}`)
	if ev := s.next(); !strings.HasPrefix(ev.Data, `{"topic":"news","event":"n","data":"x"`) {
		t.Fatalf("news event %+v", ev)
	}

	cl.nodes[0].stop(10 * time.Second)
	evs := s.end()
	if len(evs) == 0 || evs[len(evs)-1].Event != "close" || evs[len(evs)-1].Data != `{"code":1001,"reason":"Server shutting down"}` {
		t.Fatalf("events before the stream ended: %+v, want the close event last", evs)
	}
	for i := 4; i <= 6; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
	}
	r := openStream(t, cl.nodes[1], "/events?topic=news&topic=chat", http.Header{"Last-Event-Id": {s.lastID}})
	if ev := r.next(); ev.Event != "welcome" || ev.ID != s.lastID {
		t.Fatalf("resumed welcome %+v, want id %s", ev, s.lastID)
	}
	for i := 4; i <= 6; i++ {
		r.expectData(chatEnvelope(i))
	}
	publish(t, cl.nodes[1], `{"topic":"chat","event":"m","data":7}`)
	r.expectData(chatEnvelope(7))
}

// curl -N reads the stream as it comes; after a kill (no close event,
// the connection just drops) curl resumes on the other instance with the
// last id it printed.
func TestSSEWithCurlAcrossAKill(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed: apt-get install curl")
	}
	cl := startCluster(t, 2, sseClusterSite)
	runCurl := func(in *instance, lastID string) (<-chan sseEvent, *exec.Cmd) {
		args := []string{"-N", "-s", "--max-time", "60"}
		if lastID != "" {
			args = append(args, "-H", "Last-Event-ID: "+lastID)
		}
		cmd := exec.Command(curl, append(args, in.url("/events?topic=chat"))...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return readSSE(out), cmd
	}
	events, _ := runCurl(cl.nodes[0], "")
	s := &sseStream{t: t, events: events}
	if ev := s.next(); ev.Event != "welcome" {
		t.Fatalf("first event %+v", ev)
	}
	for i := 1; i <= 2; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
		s.expectData(chatEnvelope(i))
	}
	_ = cl.nodes[0].cmd.Process.Signal(syscall.SIGKILL)
	<-cl.nodes[0].done
	if evs := s.end(); len(evs) != 0 {
		t.Fatalf("events after the kill: %+v", evs)
	}
	for i := 3; i <= 5; i++ {
		publish(t, cl.nodes[1], fmt.Sprintf(`{"topic":"chat","event":"m","data":%d}`, i))
	}
	events, _ = runCurl(cl.nodes[1], s.lastID)
	r := &sseStream{t: t, events: events}
	r.next() // welcome
	for i := 3; i <= 5; i++ {
		r.expectData(chatEnvelope(i))
	}
}

// Tokens and authorization work as for a WebSocket: a token in the query
// (EventSource sends no header of its own) makes the identity, its topics
// claim authorizes, and refusals are plain HTTP statuses.
func TestSSETokenAuthorization(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		sse /events
		jwt {
			secret `+jwtSecret+`
			from query access_token
			topics_claim topics
		}
		shutdown_spread 0
	}`)
	tok := hs256(t, "bob", map[string]any{"topics": []string{"room:*"}})
	for _, tt := range []struct {
		name, path string
		status     int
	}{
		{"no token", "/events?topic=room:1", http.StatusUnauthorized},
		{"a bad token", "/events?topic=room:1&access_token=x.y.z", http.StatusUnauthorized},
		{"a topic the claim does not cover", "/events?topic=room:1&topic=admin&access_token=" + tok, http.StatusForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := getStream(t, in, tt.path, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
	s := openStream(t, in, "/events?topic=room:1&access_token="+tok, nil)
	s.next()
	publish(t, in, `{"topic":"room:1","event":"e","data":1}`)
	s.expectData(`{"topic":"room:1","event":"e","data":1,"seq":1}`)
	// A direct send to the user reaches the stream too.
	if status, body := apiCall(t, http.MethodPost, in.url("/_realtime/send"), "", `{"user":"bob","topic":"dm","event":"hi","data":2}`); status != http.StatusOK {
		t.Fatalf("send: %d %s", status, body)
	}
	s.expectData(`{"topic":"dm","event":"hi","data":2}`)
}

// A reload ends the streams of the old configuration's server (which
// would otherwise wait for them for ever) with the close event; the
// client resumes on the new one without a gap. The reload does not wait
// for the streams, and the metrics count them.
func TestSSEReloadEndsStreamsAndClientsResume(t *testing.T) {
	in := startCaddy(t, `
	realtime {
		api /_realtime
		sse /events
		shutdown_spread 0
		replay chat
	}`)
	s := openStream(t, in, "/events?topic=chat", nil)
	s.next()
	publish(t, in, `{"topic":"chat","event":"m","data":1}`)
	s.expectData(chatEnvelope(1))
	waitFor(t, 5*time.Second, "the sse metrics", func() bool {
		resp, err := adminClient(in).Get("http://admin/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return strings.Contains(b.String(), `caddy_realtime_sse_connections{gateway="/ws"} 1`) &&
			strings.Contains(b.String(), `caddy_realtime_sse_requests_total{code="200",gateway="/ws"} 1`) &&
			strings.Contains(b.String(), `caddy_realtime_connections{gateway="/ws"} 1`)
	})

	start := time.Now()
	reload(t, in, strings.Replace(currentCaddyfile(t, in), "grace_period 3s", "grace_period 4s", 1))
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the reload took %s", d)
	}
	evs := s.end()
	if len(evs) == 0 || evs[len(evs)-1].Event != "close" {
		t.Fatalf("events before the end: %+v, want the close event", evs)
	}
	publishAfterReload(t, in, `{"topic":"chat","event":"m","data":2}`)
	r := openStream(t, in, "/events?topic=chat", http.Header{"Last-Event-Id": {s.lastID}})
	r.next()
	r.expectData(chatEnvelope(2))
	publish(t, in, `{"topic":"chat","event":"m","data":3}`)
	r.expectData(chatEnvelope(3))
}

// publishAfterReload publishes once, retrying a request that got no
// answer at all: right after a reload, a connection the old server
// accepted as it went away is closed unread. A request the gateway did
// take shows as a duplicate seq, which the test would catch.
func publishAfterReload(t *testing.T, in *instance, body string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		req, _ := http.NewRequest(http.MethodPost, in.url("/_realtime/publish"), strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("publish %s: %d %s", body, resp.StatusCode, b)
			}
			return
		}
		if attempt == 3 {
			t.Fatalf("publish %s: %v", body, err)
		}
	}
}
