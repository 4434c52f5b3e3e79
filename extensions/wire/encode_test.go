package wire

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestAppendEnvelope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		dst   string
		topic string
		event string
		data  string
		seq   uint64
		want  string
	}{
		{"an envelope with seq ends with the seq member (§3.4)", "", "chat", "created", `{"id":1}`, 7,
			`{"topic":"chat","event":"created","data":{"id":1},"seq":7}`},
		{"an envelope without seq has only topic, event and data (§3.4)", "", "dm:9", "new", `{"m":1}`, 0,
			`{"topic":"dm:9","event":"new","data":{"m":1}}`},
		{"nil data encodes as null (§9.14)", "", "chat", "created", "", 0,
			`{"topic":"chat","event":"created","data":null}`},
		{"nil data with seq encodes as null before seq", "", "chat", "created", "", 1,
			`{"topic":"chat","event":"created","data":null,"seq":1}`},
		{"the truncation notice has null data and no seq (§5.3)", "", "chat", "truncated", "", 0,
			`{"topic":"chat","event":"truncated","data":null}`},
		{"data passes through byte for byte, numbers untouched (§3.1)", "", "t", "e", `[1.50,1e2,"\u00e9"]`, 2,
			`{"topic":"t","event":"e","data":[1.50,1e2,"\u00e9"],"seq":2}`},
		{"a scalar string is passed through", "", "t", "e", `"hi"`, 0,
			`{"topic":"t","event":"e","data":"hi"}`},
		{"the largest seq is written in full", "", "t", "e", `0`, math.MaxUint64, `{"topic":"t","event":"e","data":0,"seq":18446744073709551615}`},
		{"non-ASCII topics are spliced verbatim", "", "café", "créé", `1`, 3,
			`{"topic":"café","event":"créé","data":1,"seq":3}`},
		{"the envelope is appended after existing bytes", "[", "t", "e", `1`, 0,
			`[{"topic":"t","event":"e","data":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var data []byte
			if tt.data != "" {
				data = []byte(tt.data)
			}
			got := AppendEnvelope([]byte(tt.dst), tt.topic, tt.event, data, tt.seq)
			if string(got) != tt.want {
				t.Errorf("AppendEnvelope = %s\nwant             %s", got, tt.want)
			}
			if env := got[len(tt.dst):]; !json.Valid(env) {
				t.Errorf("AppendEnvelope produced invalid JSON: %s", env)
			}
		})
	}
}

func TestAppendEnvelopeEmptyDataIsNull(t *testing.T) {
	t.Parallel()
	withNil := AppendEnvelope(nil, "t", "e", nil, 0)
	withEmpty := AppendEnvelope(nil, "t", "e", []byte{}, 0)
	want := `{"topic":"t","event":"e","data":null}`
	if string(withNil) != want || string(withEmpty) != want {
		t.Errorf("nil data gives %s, empty data gives %s; want %s for both", withNil, withEmpty, want)
	}
}

func TestEnvelopeSize(t *testing.T) {
	t.Parallel()
	big := `{"blob":"` + strings.Repeat("x", 100_000) + `"}`
	tests := []struct {
		name  string
		topic string
		event string
		data  []byte
		seq   uint64
	}{
		{"a small envelope without seq", "chat", "created", []byte(`{"id":1}`), 0},
		{"nil data counts as null", "chat", "created", nil, 0},
		{"empty data counts as null", "chat", "created", []byte{}, 0},
		{"nil data with seq", "chat", "created", nil, 9},
		{"seq 1 is one digit", "t", "e", []byte(`1`), 1},
		{"seq 9 is one digit", "t", "e", []byte(`1`), 9},
		{"seq 10 is two digits", "t", "e", []byte(`1`), 10},
		{"seq 99 is two digits", "t", "e", []byte(`1`), 99},
		{"seq 100 is three digits", "t", "e", []byte(`1`), 100},
		{"seq 10^19 is twenty digits", "t", "e", []byte(`1`), 1e19},
		{"the largest seq", "t", "e", []byte(`1`), math.MaxUint64},
		{"the largest seq below a power of ten", "t", "e", []byte(`1`), 999_999_999_999},
		{"multibyte topic and event count bytes", "聊天", "créé", []byte(`"é"`), 42},
		{"256-character names", strings.Repeat("t", 256), strings.Repeat("e", 256), []byte(`null`), 1 << 40},
		{"a 100 kB payload", "t", "e", []byte(big), 123456},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := EnvelopeSize(tt.topic, tt.event, tt.data, tt.seq)
			want := len(AppendEnvelope(nil, tt.topic, tt.event, tt.data, tt.seq))
			if got != want {
				t.Errorf("EnvelopeSize = %d, len(AppendEnvelope) = %d", got, want)
			}
		})
	}
}

// TestEnvelopeSizeEverySeqLength compares EnvelopeSize with the encoding at
// every digit-count boundary of seq.
func TestEnvelopeSizeEverySeqLength(t *testing.T) {
	t.Parallel()
	for p := uint64(1); ; p *= 10 {
		for _, seq := range []uint64{p - 1, p, p + 1} {
			if got, want := EnvelopeSize("t", "e", nil, seq), len(AppendEnvelope(nil, "t", "e", nil, seq)); got != want {
				t.Errorf("seq %d: EnvelopeSize = %d, len(AppendEnvelope) = %d", seq, got, want)
			}
		}
		if p > math.MaxUint64/10 {
			break
		}
	}
}

// TestAppendEnvelopeDoesNotAllocate guards the hub's hot path: encoding into
// a buffer sized with EnvelopeSize must not allocate. Not parallel, since
// AllocsPerRun counts allocations of the whole process.
func TestAppendEnvelopeDoesNotAllocate(t *testing.T) {
	data := []byte(`{"id":1,"text":"hello"}`)
	buf := make([]byte, 0, EnvelopeSize("chat:room/1", "created", data, math.MaxUint64))
	var out []byte
	allocs := testing.AllocsPerRun(1000, func() {
		out = AppendEnvelope(buf[:0], "chat:room/1", "created", data, math.MaxUint64)
	})
	if allocs != 0 {
		t.Errorf("AppendEnvelope allocated %v times per run into a pre-sized buffer, want 0", allocs)
	}
	if want := `{"topic":"chat:room/1","event":"created","data":{"id":1,"text":"hello"},"seq":18446744073709551615}`; string(out) != want {
		t.Errorf("AppendEnvelope = %s, want %s", out, want)
	}
}

func BenchmarkAppendEnvelope_100B(b *testing.B) {
	data := []byte(`{"id":12345,"text":"` + strings.Repeat("x", 100-len(`{"id":12345,"text":""}`)) + `"}`)
	if len(data) != 100 {
		b.Fatalf("payload is %d bytes, want 100", len(data))
	}
	buf := make([]byte, 0, EnvelopeSize("chat:room/1", "created", data, 1<<32))
	b.ReportAllocs()
	b.SetBytes(int64(cap(buf)))
	for b.Loop() {
		buf = AppendEnvelope(buf[:0], "chat:room/1", "created", data, 1<<32)
	}
}

func TestControlFrames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"welcome carries the session id (§3.4)", Welcome("6f1c"),
			`{"type":"welcome","sessionId":"6f1c"}`},
		{"welcome with a uuid session id (§9.1)", Welcome("0b7e2c4a-3f1d-4e5a-9c8b-7a6d5e4f3c2b"),
			`{"type":"welcome","sessionId":"0b7e2c4a-3f1d-4e5a-9c8b-7a6d5e4f3c2b"}`},
		{"subscribed echoes topic and numeric ref (§3.4, §9.7)", Subscribed([]byte(`"chat"`), []byte(`3`)),
			`{"type":"subscribed","topic":"chat","ref":3}`},
		{"subscribed echoes a string ref as a string (§9.7)", Subscribed([]byte(`"x"`), []byte(`"a1"`)),
			`{"type":"subscribed","topic":"x","ref":"a1"}`},
		{"subscribed echoes the topic token verbatim, escapes included", Subscribed([]byte(`"a\/b"`), []byte(`1.0`)),
			`{"type":"subscribed","topic":"a\/b","ref":1.0}`},
		{"subscribe-denied carries the reason (§3.4)", SubscribeDenied([]byte(`"chat"`), []byte(`3`), "FORBIDDEN"),
			`{"type":"subscribe-denied","topic":"chat","ref":3,"reason":"FORBIDDEN"}`},
		{"subscribe-denied echoes a non-string topic (§3.4)", SubscribeDenied([]byte(`42`), []byte(`5`), "INVALID_TOPIC"),
			`{"type":"subscribe-denied","topic":42,"ref":5,"reason":"INVALID_TOPIC"}`},
		{"subscribe-denied echoes an escaped topic verbatim (§9.8)", SubscribeDenied([]byte(`"bad\u0001"`), []byte(`5`), "INVALID_TOPIC"),
			`{"type":"subscribe-denied","topic":"bad\u0001","ref":5,"reason":"INVALID_TOPIC"}`},
		{"subscribe-denied with an application reason", SubscribeDenied([]byte(`"chat"`), []byte(`"r"`), "PLAN_LOCKED"),
			`{"type":"subscribe-denied","topic":"chat","ref":"r","reason":"PLAN_LOCKED"}`},
		{"request carries ref, event and data (§3.4)", Request(12, "confirm", []byte(`{"op":"x"}`)),
			`{"type":"request","ref":12,"event":"confirm","data":{"op":"x"}}`},
		{"request without data sends null", Request(1, "ping", nil),
			`{"type":"request","ref":1,"event":"ping","data":null}`},
		{"request with the largest ref", Request(math.MaxUint64, "e", []byte(`[]`)),
			`{"type":"request","ref":18446744073709551615,"event":"e","data":[]}`},
		{"the heartbeat frame is exact (§2.5)", HeartbeatFrame, `{"type":"heartbeat"}`},
		{"the resumed frame is exact (§5.3)", ResumedFrame, `{"type":"resumed"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if string(tt.got) != tt.want {
				t.Errorf("got  %s\nwant %s", tt.got, tt.want)
			}
			if !json.Valid(tt.got) {
				t.Errorf("invalid JSON: %s", tt.got)
			}
		})
	}
}

func TestAppendBatch(t *testing.T) {
	t.Parallel()
	e1 := AppendEnvelope(nil, "a", "created", []byte(`{"id":1}`), 7)
	e2 := AppendEnvelope(nil, "a", "created", []byte(`{"id":2}`), 8)
	tests := []struct {
		name string
		dst  string
		envs [][]byte
		want string
	}{
		{"two envelopes keep their order and seq (§7.2, §9.18)", "", [][]byte{e1, e2},
			`{"type":"batch","events":[{"topic":"a","event":"created","data":{"id":1},"seq":7},{"topic":"a","event":"created","data":{"id":2},"seq":8}]}`},
		{"envelopes are not reordered", "", [][]byte{e2, e1},
			`{"type":"batch","events":[{"topic":"a","event":"created","data":{"id":2},"seq":8},{"topic":"a","event":"created","data":{"id":1},"seq":7}]}`},
		{"one envelope has no separator", "", [][]byte{e1},
			`{"type":"batch","events":[{"topic":"a","event":"created","data":{"id":1},"seq":7}]}`},
		{"no envelopes give an empty array", "", nil,
			`{"type":"batch","events":[]}`},
		{"the batch is appended after existing bytes", "xy", [][]byte{[]byte(`{}`), []byte(`{}`), []byte(`{}`)},
			`xy{"type":"batch","events":[{},{},{}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := AppendBatch([]byte(tt.dst), tt.envs)
			if string(got) != tt.want {
				t.Errorf("AppendBatch = %s\nwant          %s", got, tt.want)
			}
			if !json.Valid(got[len(tt.dst):]) {
				t.Errorf("AppendBatch produced invalid JSON: %s", got)
			}
		})
	}
}

func TestAppendBatchFrameConstants(t *testing.T) {
	t.Parallel()
	if got := BatchOpen + BatchClose; got != `{"type":"batch","events":[]}` {
		t.Errorf("BatchOpen+BatchClose = %s", got)
	}
	if MaxFrame != 1048576 || MaxBatchFrame != 262144 {
		t.Errorf("MaxFrame = %d, MaxBatchFrame = %d; want 1048576 and 262144 (§3.1, §7.2)", MaxFrame, MaxBatchFrame)
	}
	// The batch frame must decode as the client sees it: an object whose
	// "events" elements are the envelopes in order.
	frame := AppendBatch(nil, [][]byte{
		AppendEnvelope(nil, "a", "x", nil, 1),
		AppendEnvelope(nil, "b", "y", []byte(`2`), 0),
	})
	var decoded struct {
		Type   string            `json:"type"`
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(frame, &decoded); err != nil {
		t.Fatalf("batch frame does not decode: %v", err)
	}
	if decoded.Type != "batch" || len(decoded.Events) != 2 ||
		!bytes.Equal(decoded.Events[0], AppendEnvelope(nil, "a", "x", nil, 1)) {
		t.Errorf("batch frame decodes to %+v", decoded)
	}
}

func TestValidReason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		reason string
		want   bool
	}{
		{"a canonical reason is valid", "FORBIDDEN", true},
		{"an application reason is valid (§9.10)", "PLAN_LOCKED", true},
		{"one character is valid", "x", true},
		{"spaces and punctuation are valid", "Not now, try later!", true},
		{"64 characters are valid", strings.Repeat("R", 64), true},
		{"65 characters are invalid", strings.Repeat("R", 65), false},
		{"the empty reason is invalid", "", false},
		{"a double quote is invalid", `a"b`, false},
		{"a backslash is invalid", `a\b`, false},
		{"a control character is invalid", "a\nb", false},
		{"DEL is invalid", "a\x7f", false},
		{"non-ASCII is invalid", "refusé", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := ValidReason(tt.reason); got != tt.want {
				t.Errorf("ValidReason(%q) = %v, want %v", tt.reason, got, tt.want)
			}
		})
	}
}

// TestControlFramesAllocateOnce checks that the ack and request encoders
// size their buffer up front: one allocation, the frame itself. Not
// parallel, since AllocsPerRun counts allocations of the whole process.
func TestControlFramesAllocateOnce(t *testing.T) {
	topic, ref := []byte(`"chat:room/1"`), []byte(`"a1"`)
	data := []byte(`{"op":"x"}`)
	tests := []struct {
		name string
		fn   func()
	}{
		{"subscribed", func() { Subscribed(topic, ref) }},
		{"subscribe-denied", func() { SubscribeDenied(topic, ref, "INTERNAL_ERROR") }},
		{"request with a small ref", func() { Request(12, "confirm", data) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(100, tt.fn); allocs != 1 {
				t.Errorf("%s allocated %v times per run, want 1", tt.name, allocs)
			}
		})
	}
}
