package benchtool

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// protocol is one server's client protocol: how a connection greets,
// subscribes and resumes, how its deliveries look, and how the app
// publishes over HTTP.
type protocol interface {
	name() string
	// open runs the greeting and subscribes c to its topics, waiting for
	// every acknowledgement. It reads from c.ws itself: the connection's
	// read loop starts only after it returns.
	open(c *client, deadline time.Time) error
	// deliveries scans a steady-state message for publish timestamps and
	// calls fn with each; it answers the protocol's own keep-alives.
	deliveries(c *client, msg []byte, fn func(ts int64)) error
	// publishRequest builds the HTTP request that publishes data to topic
	// through target t.
	publishRequest(t *target, topic string, data []byte) (*http.Request, error)
	// parseSeq returns the seq the publish answer carries (0 if none).
	parseSeq(body []byte) uint64
}

func protocolByName(s string) (protocol, error) {
	switch s {
	case "realtime", "":
		return realtimeProto{}, nil
	case "centrifugo":
		return centrifugoProto{}, nil
	}
	return nil, fmt.Errorf("unknown protocol %q (want realtime or centrifugo)", s)
}

// The publish timestamp is the "ts" member of the bench's payloads. Their
// padding is a run of 'x', so "ts": cannot appear anywhere else in a
// delivery.
//
// indexTS finds it by its 's': IndexByte on a byte that occurs at most a
// few times per envelope, then a check of the four bytes around it.
// bytes.Index(msg, []byte(`"ts":`)) stops at every '"' instead (about 13
// per envelope before the timestamp); BenchmarkReadDelivery spent 47% of
// its time in it, against 15% for this.
func indexTS(msg []byte) int {
	for off := 0; ; {
		i := bytes.IndexByte(msg[off:], 's')
		if i < 0 {
			return -1
		}
		i += off
		if i >= 2 && i+2 < len(msg) && msg[i-2] == '"' && msg[i-1] == 't' && msg[i+1] == '"' && msg[i+2] == ':' {
			return i + 3
		}
		off = i + 1
	}
}

// scanTimestamps calls fn with every "ts":<digits> value in msg, without
// decoding JSON: a batch frame or a Centrifugo frame of several pushes
// holds one per delivery.
func scanTimestamps(msg []byte, fn func(ts int64)) int {
	n := 0
	for {
		i := indexTS(msg)
		if i < 0 {
			return n
		}
		msg = msg[i:]
		var v int64
		j := 0
		for ; j < len(msg) && msg[j] >= '0' && msg[j] <= '9'; j++ {
			v = v*10 + int64(msg[j]-'0')
		}
		if j > 0 {
			fn(v)
			n++
		}
		msg = msg[j:]
	}
}

// scanUint returns the number after the first occurrence of key and the
// bytes after it; ok is false when there is none.
func scanUint(msg []byte, key []byte) (v uint64, rest []byte, ok bool) {
	i := bytes.Index(msg, key)
	if i < 0 {
		return 0, nil, false
	}
	msg = msg[i+len(key):]
	j := 0
	for ; j < len(msg) && msg[j] >= '0' && msg[j] <= '9'; j++ {
		v = v*10 + uint64(msg[j]-'0')
	}
	return v, msg[j:], j > 0
}

// payload builds the data of one publish: {"ts":<unix nanos>,"pad":"xx…"}
// of exactly size bytes (at least the 35 bytes of an empty pad).
func payload(dst []byte, ts int64, size int) []byte {
	dst = append(dst, `{"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"pad":"`...)
	for pad := size - len(dst) - 2; pad > 0; pad-- {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

// jsonPayload builds a payload of exactly size bytes shaped like what
// lists and dashboards publish: {"ts":<unix nanos>,"items":[{todo}…],"pad":"x…"},
// as many todo objects as fit, each a little different, then a short pad.
// It is what compression is measured on: the pad of payload compresses to
// almost nothing, which no real payload does.
func jsonPayload(dst []byte, ts int64, size int) []byte {
	dst = append(dst, `{"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"items":[`...)
	var item []byte
	for i := 0; ; i++ {
		item = item[:0]
		if i > 0 {
			item = append(item, ',')
		}
		item = append(item, `{"id":"item-`...)
		item = strconv.AppendInt(item, int64(i)*7919%100000, 10)
		item = append(item, `","title":"`...)
		item = append(item, todoTitles[i%len(todoTitles)]...)
		item = append(item, `","done":`...)
		item = strconv.AppendBool(item, i%3 == 0)
		item = append(item, `,"owner":{"id":"u`...)
		item = strconv.AppendInt(item, int64(i%13), 10)
		item = append(item, `"},"updated":`...)
		item = strconv.AppendInt(item, ts/1e9-int64(i)*37, 10)
		item = append(item, '}')
		// Room for the item and the closing `],"pad":""}`.
		if len(dst)+len(item)+len(`],"pad":""}`) > size {
			break
		}
		dst = append(dst, item...)
	}
	dst = append(dst, `],"pad":"`...)
	for pad := size - len(dst) - 2; pad > 0; pad-- {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

var todoTitles = []string{
	"Water the plants", "Call the plumber about the kitchen sink", "Review pull request",
	"Book flights for the conference", "Renew passport", "Write the quarterly report",
	"Buy oat milk", "Fix the flaky integration test", "Plan the team offsite",
}

// realtimeProto speaks docs/protocol.md as the current (0.5) client does:
// hello with the batch cap, resume when it has a session, subscribe-batch.
type realtimeProto struct{}

func (realtimeProto) name() string { return "realtime" }

var (
	welcomePrefix    = []byte(`{"type":"welcome","sessionId":"`)
	subscribedPrefix = []byte(`{"type":"subscribed"`)
	deniedPrefix     = []byte(`{"type":"subscribe-denied"`)
	resumedFrame     = []byte(`{"type":"resumed"}`)
	helloFrame       = []byte(`{"type":"hello","caps":["batch"]}`)
	seqKey           = []byte(`"seq":`)
)

func (realtimeProto) open(c *client, deadline time.Time) error {
	ws := c.ws
	_ = ws.nc.SetDeadline(deadline)
	defer ws.nc.SetDeadline(time.Time{})
	msg, err := ws.next()
	if err != nil {
		return fmt.Errorf("reading welcome: %w", err)
	}
	if !bytes.HasPrefix(msg, welcomePrefix) {
		return fmt.Errorf("first frame is not welcome: %.80s", msg)
	}
	prev := c.session
	c.session = string(bytes.TrimSuffix(msg[len(welcomePrefix):], []byte(`"}`)))
	frames := [][]byte{helloFrame}
	if c.resume && prev != "" {
		frames = append(frames, []byte(`{"type":"resume","sessionId":"`+prev+`","lastSeenSeqs":{"`+
			c.topics[0]+`":`+strconv.FormatUint(c.resumeFrom, 10)+`}}`))
	}
	if len(c.topics) > 0 {
		frames = append(frames, []byte(`{"type":"subscribe-batch","topics":["`+strings.Join(c.topics, `","`)+`"],"ref":1}`))
	}
	if err := ws.writeTexts(frames...); err != nil {
		return fmt.Errorf("writing hello and subscribe-batch: %w", err)
	}
	acks := 0
	for acks < len(c.topics) {
		msg, err := ws.next()
		if err != nil {
			return fmt.Errorf("waiting for subscribe acks (%d of %d): %w", acks, len(c.topics), err)
		}
		switch {
		case bytes.HasPrefix(msg, subscribedPrefix):
			acks++
		case bytes.HasPrefix(msg, deniedPrefix):
			return fmt.Errorf("subscribe denied: %s", msg)
		case bytes.Equal(msg, resumedFrame):
			c.resumedAcks++
		default:
			if c.trackSeq {
				c.gapFill(msg)
			}
		}
	}
	return nil
}

// gapFill records the seqs of envelopes (or a batch of them) received
// before the subscribe ack of a resume.
func (c *client) gapFill(msg []byte) {
	for {
		v, rest, ok := scanUint(msg, seqKey)
		if !ok {
			return
		}
		c.filled = append(c.filled, v)
		msg = rest
	}
}

func (realtimeProto) deliveries(c *client, msg []byte, fn func(ts int64)) error {
	scanTimestamps(msg, fn)
	if c.trackSeq {
		for {
			v, rest, ok := scanUint(msg, seqKey)
			if !ok {
				break
			}
			if v > c.lastSeq.Load() {
				c.lastSeq.Store(v)
			}
			msg = rest
		}
	}
	return nil
}

func (realtimeProto) publishRequest(t *target, topic string, data []byte) (*http.Request, error) {
	body := make([]byte, 0, len(data)+len(topic)+40)
	body = append(body, `{"topic":"`...)
	body = append(body, topic...)
	body = append(body, `","event":"tick","data":`...)
	body = append(body, data...)
	body = append(body, '}')
	req, err := http.NewRequest(http.MethodPost, t.api+"/publish", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if t.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+t.apiKey)
	}
	return req, nil
}

func (realtimeProto) parseSeq(body []byte) uint64 {
	v, _, _ := scanUint(body, seqKey)
	return v
}

// centrifugoProto speaks Centrifugo's JSON client protocol (v2 of its
// protocol, Centrifugo v5/v6): newline-delimited commands and replies,
// {"id":1,"connect":{}} without a token (allow_anonymous_connect_without_token),
// {"id":2,"subscribe":{"channel":"x"}}, pushes {"push":{"channel","pub":{"data"}}},
// and empty {} pings the client must answer with {}.
type centrifugoProto struct{}

func (centrifugoProto) name() string { return "centrifugo" }

var (
	centPing  = []byte("{}")
	errorKey  = []byte(`"error"`)
	replyHead = []byte(`{"id":`)
)

func (p centrifugoProto) open(c *client, deadline time.Time) error {
	ws := c.ws
	_ = ws.nc.SetDeadline(deadline)
	defer ws.nc.SetDeadline(time.Time{})
	if err := ws.writeText([]byte(`{"id":1,"connect":{}}`)); err != nil {
		return fmt.Errorf("writing connect: %w", err)
	}
	if err := p.awaitReplies(c, 1); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if len(c.topics) == 0 {
		return nil
	}
	var b []byte
	for i, t := range c.topics {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, `{"id":`...)
		b = strconv.AppendInt(b, int64(i+2), 10)
		b = append(b, `,"subscribe":{"channel":"`...)
		b = append(b, t...)
		b = append(b, `"}}`...)
	}
	if err := ws.writeText(b); err != nil {
		return fmt.Errorf("writing subscribe: %w", err)
	}
	if err := p.awaitReplies(c, len(c.topics)); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	return nil
}

// awaitReplies reads until n command replies arrived, answering pings.
func (centrifugoProto) awaitReplies(c *client, n int) error {
	got := 0
	for got < n {
		msg, err := c.ws.next()
		if err != nil {
			return err
		}
		for len(msg) > 0 {
			line := msg
			if i := bytes.IndexByte(msg, '\n'); i >= 0 {
				line, msg = msg[:i], msg[i+1:]
			} else {
				msg = nil
			}
			switch {
			case bytes.Equal(line, centPing):
				if err := c.ws.writeText(centPing); err != nil {
					return err
				}
			case bytes.HasPrefix(line, replyHead):
				if bytes.Contains(line, errorKey) {
					return errors.New(string(line))
				}
				got++
			}
		}
	}
	return nil
}

func (centrifugoProto) deliveries(c *client, msg []byte, fn func(ts int64)) error {
	if isCentPing(msg) {
		if err := c.ws.writeText(centPing); err != nil {
			return err
		}
	}
	scanTimestamps(msg, fn)
	return nil
}

// isCentPing reports whether msg is, or holds a line that is, a ping {}.
func isCentPing(msg []byte) bool {
	return bytes.Equal(msg, centPing) || bytes.HasPrefix(msg, []byte("{}\n")) ||
		bytes.HasSuffix(msg, []byte("\n{}")) || bytes.Contains(msg, []byte("\n{}\n"))
}

func (centrifugoProto) publishRequest(t *target, topic string, data []byte) (*http.Request, error) {
	body := make([]byte, 0, len(data)+len(topic)+32)
	body = append(body, `{"channel":"`...)
	body = append(body, topic...)
	body = append(body, `","data":`...)
	body = append(body, data...)
	body = append(body, '}')
	req, err := http.NewRequest(http.MethodPost, t.api+"/publish", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if t.apiKey != "" {
		req.Header.Set("X-API-Key", t.apiKey)
	}
	return req, nil
}

func (centrifugoProto) parseSeq([]byte) uint64 { return 0 }
