package wire

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// frameView is a Frame with its raw tokens as strings, so tests can state
// expectations as literals. An absent (nil) token is "": a present token is
// never empty.
type frameView struct {
	Kind         Kind
	Topic        string
	TopicRaw     string
	Topics       []string
	Ref          string
	Caps         []string
	SessionID    string
	LastSeenSeqs string
	Since        string
	ReqID        string
	Data         string
	Error        string
}

func viewOf(f *Frame) frameView {
	v := frameView{
		Kind:         f.Kind,
		Topic:        f.Topic,
		TopicRaw:     string(f.TopicRaw),
		Ref:          string(f.Ref),
		Caps:         f.Caps,
		SessionID:    f.SessionID,
		LastSeenSeqs: string(f.LastSeenSeqs),
		Since:        string(f.Since),
		ReqID:        string(f.ReqID),
		Data:         string(f.Data),
		Error:        string(f.Error),
	}
	for _, t := range f.Topics {
		v.Topics = append(v.Topics, string(t))
	}
	return v
}

func (v frameView) String() string {
	return fmt.Sprintf("{Kind:%v Topic:%q TopicRaw:%q Topics:%q Ref:%q Caps:%q SessionID:%q LastSeenSeqs:%q Since:%q ReqID:%q Data:%q Error:%q}",
		v.Kind, v.Topic, v.TopicRaw, v.Topics, v.Ref, v.Caps, v.SessionID, v.LastSeenSeqs, v.Since, v.ReqID, v.Data, v.Error)
}

func (v frameView) equal(w frameView) bool {
	return v.Kind == w.Kind && v.Topic == w.Topic && v.TopicRaw == w.TopicRaw &&
		slices.Equal(v.Topics, w.Topics) && v.Ref == w.Ref && slices.Equal(v.Caps, w.Caps) &&
		v.SessionID == w.SessionID && v.LastSeenSeqs == w.LastSeenSeqs && v.Since == w.Since &&
		v.ReqID == w.ReqID && v.Data == w.Data && v.Error == w.Error
}

// mustParse parses msg as a control frame, failing t when it is classified
// as an application message.
func mustParse(t testing.TB, msg string) frameView {
	t.Helper()
	var f Frame
	if !Parse([]byte(msg), &f) {
		t.Fatalf("Parse(%.200q) = false (application message), want a control frame", msg)
	}
	return viewOf(&f)
}

// padded returns the frame prefix+`"pad":"xxx…"}` of exactly n bytes;
// prefix must end just after a member and its comma.
func padded(t testing.TB, prefix string, n int) []byte {
	t.Helper()
	k := n - len(prefix) - len(`"pad":""}`)
	if k < 0 {
		t.Fatalf("cannot pad %q to %d bytes", prefix, n)
	}
	b := []byte(prefix + `"pad":"` + strings.Repeat("x", k) + `"}`)
	if len(b) != n {
		t.Fatalf("padded frame is %d bytes, want %d", len(b), n)
	}
	return b
}

// TestParseClientFrames parses every frame of §3.3 (and §2.4) exactly as
// the 0.5.1 and 0.3.4 clients serialise it.
func TestParseClientFrames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  string
		want frameView
	}{
		{"hello with the batch cap", `{"type":"hello","caps":["batch"]}`,
			frameView{Kind: KindHello, Caps: []string{"batch"}}},
		{"a current subscribe with a numeric ref", `{"type":"subscribe","topic":"chat","ref":3}`,
			frameView{Kind: KindSubscribe, Topic: "chat", TopicRaw: `"chat"`, Ref: "3"}},
		{"a legacy subscribe without ref (§9.5)", `{"type":"subscribe","topic":"t"}`,
			frameView{Kind: KindSubscribe, Topic: "t", TopicRaw: `"t"`}},
		{"a legacy subscribe to a system topic", `{"type":"subscribe","topic":"__presence:room"}`,
			frameView{Kind: KindSubscribe, Topic: "__presence:room", TopicRaw: `"__presence:room"`}},
		{"a subscribe-batch", `{"type":"subscribe-batch","topics":["a","b"],"ref":4}`,
			frameView{Kind: KindSubscribeBatch, Topics: []string{`"a"`, `"b"`}, Ref: "4"}},
		{"the subscribe-batch of §9.8 keeps raw entries", `{"type":"subscribe-batch","topics":["ok","bad\u0001","__x"],"ref":5}`,
			frameView{Kind: KindSubscribeBatch, Topics: []string{`"ok"`, `"bad\u0001"`, `"__x"`}, Ref: "5"}},
		{"an unsubscribe", `{"type":"unsubscribe","topic":"chat"}`,
			frameView{Kind: KindUnsubscribe, Topic: "chat", TopicRaw: `"chat"`}},
		{"a resume", `{"type":"resume","sessionId":"6f1c2d3e-0000-4000-8000-000000000000","lastSeenSeqs":{"chat":7}}`,
			frameView{Kind: KindResume, SessionID: "6f1c2d3e-0000-4000-8000-000000000000", LastSeenSeqs: `{"chat":7}`}},
		{"a resume with an empty lastSeenSeqs", `{"type":"resume","sessionId":"s","lastSeenSeqs":{}}`,
			frameView{Kind: KindResume, SessionID: "s", LastSeenSeqs: `{}`}},
		{"a current replay with reqId", `{"type":"replay","topic":"chat","since":5,"reqId":2}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "5", ReqID: "2"}},
		{"a legacy replay without reqId", `{"type":"replay","topic":"chat","since":5}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "5"}},
		{"a replay keeps since as sent, even when not an integer (§9.23)", `{"type":"replay","topic":"chat","since":1.5,"reqId":"r"}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "1.5", ReqID: `"r"`}},
		{"a replay drops a reqId that is neither number nor string", `{"type":"replay","topic":"chat","since":-1,"reqId":{"a":1}}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "-1"}},
		{"a cursor with data", `{"type":"cursor","topic":"canvas","data":{"x":1,"y":2}}`,
			frameView{Kind: KindCursor, Topic: "canvas", TopicRaw: `"canvas"`, Data: `{"x":1,"y":2}`}},
		{"a cursor-snapshot", `{"type":"cursor-snapshot","topic":"canvas"}`,
			frameView{Kind: KindCursorSnapshot, Topic: "canvas", TopicRaw: `"canvas"`}},
		{"a reply with data", `{"type":"reply","ref":12,"data":{"ok":true}}`,
			frameView{Kind: KindReply, Ref: "12", Data: `{"ok":true}`}},
		{"a reply with an error", `{"type":"reply","ref":12,"error":"no"}`,
			frameView{Kind: KindReply, Ref: "12", Error: `"no"`}},
		{"a reply with null data keeps the null token", `{"type":"reply","ref":12,"data":null}`,
			frameView{Kind: KindReply, Ref: "12", Data: "null"}},
		{"a reply with neither data nor error", `{"type":"reply","ref":"q"}`,
			frameView{Kind: KindReply, Ref: `"q"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := mustParse(t, tt.msg); !got.equal(tt.want) {
				t.Errorf("Parse(%s)\n got  %+v\n want %+v", tt.msg, got, tt.want)
			}
		})
	}
}

// TestParseApplicationMessages lists frames that §3.2 rule 3 makes
// application messages: Parse must return false.
func TestParseApplicationMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  string
	}{
		{"the empty frame", ``},
		{"whitespace only", " \n\t "},
		{"invalid JSON", `{"type":"subscribe","topic":"x"`},
		{"a trailing comma", `{"type":"subscribe","topic":"x",}`},
		{"two objects in one frame", `{"type":"subscribe","topic":"x"}{}`},
		{"an object followed by garbage", `{"type":"subscribe","topic":"x"} x`},
		{"plain text", `hello`},
		{"a JSON string", `"subscribe"`},
		{"a JSON number", `42`},
		{"JSON null", `null`},
		{"an array", `[{"type":"subscribe","topic":"x"}]`},
		{"an envelope-like object without type (§9.32)", `{"topic":"x"}`},
		{"an empty object", `{}`},
		{"an unknown type", `{"type":"publish","topic":"x","event":"e","data":1}`},
		{"a server-only type", `{"type":"subscribed","topic":"x","ref":1}`},
		{"a type differing only in case", `{"type":"Subscribe","topic":"x"}`},
		{"a type with trailing space", `{"type":"subscribe ","topic":"x"}`},
		{"a numeric type", `{"type":1,"topic":"x"}`},
		{"a null type", `{"type":null,"topic":"x"}`},
		{"keys are case-sensitive", `{"TYPE":"subscribe","topic":"x"}`},
		{"a capitalised topic key does not count", `{"type":"subscribe","Topic":"x"}`},
		{"a subscribe without topic", `{"type":"subscribe","ref":1}`},
		{"a subscribe whose topic is a number", `{"type":"subscribe","topic":42,"ref":1}`},
		{"a subscribe whose topic is null", `{"type":"subscribe","topic":null}`},
		{"a subscribe whose topic is an array", `{"type":"subscribe","topic":["x"]}`},
		{"a subscribe whose topic is an object", `{"type":"subscribe","topic":{"x":1}}`},
		{"a subscribe whose topic is a boolean", `{"type":"subscribe","topic":true}`},
		{"an unsubscribe whose topic is a number", `{"type":"unsubscribe","topic":1}`},
		{"a replay without topic", `{"type":"replay","since":5,"reqId":2}`},
		{"a cursor whose topic is a number", `{"type":"cursor","topic":1,"data":{}}`},
		{"a cursor-snapshot without topic", `{"type":"cursor-snapshot"}`},
		{"a hello without caps", `{"type":"hello"}`},
		{"a hello whose caps is not an array", `{"type":"hello","caps":"batch"}`},
		{"a hello whose caps is null", `{"type":"hello","caps":null}`},
		{"a hello whose caps is an object", `{"type":"hello","caps":{"batch":true}}`},
		{"a subscribe-batch without topics", `{"type":"subscribe-batch","ref":4}`},
		{"a subscribe-batch whose topics is not an array", `{"type":"subscribe-batch","topics":"a","ref":4}`},
		{"a subscribe-batch whose topics is an object", `{"type":"subscribe-batch","topics":{"0":"a"},"ref":4}`},
		{"a subscribe-batch whose topics is null", `{"type":"subscribe-batch","topics":null,"ref":4}`},
		{"a resume without sessionId", `{"type":"resume","lastSeenSeqs":{"chat":7}}`},
		{"a resume whose sessionId is not a string (§9.20)", `{"type":"resume","sessionId":7,"lastSeenSeqs":{"chat":7}}`},
		{"a resume whose sessionId is null", `{"type":"resume","sessionId":null,"lastSeenSeqs":{"chat":7}}`},
		{"a resume without lastSeenSeqs", `{"type":"resume","sessionId":"s"}`},
		{"a resume whose lastSeenSeqs is null", `{"type":"resume","sessionId":"s","lastSeenSeqs":null}`},
		{"a resume whose lastSeenSeqs is an array", `{"type":"resume","sessionId":"s","lastSeenSeqs":[["chat",7]]}`},
		{"a resume whose lastSeenSeqs is a number", `{"type":"resume","sessionId":"s","lastSeenSeqs":7}`},
		{"a reply without ref", `{"type":"reply","data":1}`},
		{"a reply whose ref is an object", `{"type":"reply","ref":{"id":12},"data":1}`},
		{"a reply whose ref is an array", `{"type":"reply","ref":[12],"data":1}`},
		{"a reply whose ref is null", `{"type":"reply","ref":null,"data":1}`},
		{"a reply whose ref is a boolean", `{"type":"reply","ref":true,"data":1}`},
		{"a type whose escape decodes to another name", `{"type":"subscrib\u0045","topic":"x"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var f Frame
			if Parse([]byte(tt.msg), &f) {
				t.Errorf("Parse(%s) = true (kind %v), want an application message", tt.msg, f.Kind)
			}
		})
	}
}

// TestParseSizeThresholds checks §3.2 rule 2 at every boundary.
func TestParseSizeThresholds(t *testing.T) {
	t.Parallel()
	const sub = `{"type":"subscribe","topic":"x",`
	const res = `{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":7},`
	tests := []struct {
		name string
		msg  []byte
		want bool
	}{
		{"a subscribe of 8191 bytes is a control frame", padded(t, sub, MaxControlFrame-1), true},
		{"a subscribe of 8192 bytes is an application message", padded(t, sub, MaxControlFrame), false},
		{"a subscribe of 60000 bytes is an application message", padded(t, sub, 60000), false},
		{"a resume of 8191 bytes is a control frame", padded(t, res, MaxControlFrame-1), true},
		{"a resume of 8192 bytes is a control frame", padded(t, res, MaxControlFrame), true},
		{"a resume of 65535 bytes is a control frame", padded(t, res, MaxResumeFrame-1), true},
		{"a resume of 65536 bytes is an application message", padded(t, res, MaxResumeFrame), false},
		{"a large resume must begin exactly with the prefix: leading space", append([]byte(" "), padded(t, res, MaxControlFrame)...), false},
		{"a large resume must begin exactly with the prefix: space after the colon",
			padded(t, `{"type": "resume","sessionId":"s","lastSeenSeqs":{"chat":7},`, MaxControlFrame), false},
		{"a large resume must begin exactly with the prefix: type not first",
			padded(t, `{"sessionId":"s","type":"resume","lastSeenSeqs":{"chat":7},`, MaxControlFrame), false},
		{"a large hello is an application message", padded(t, `{"type":"hello","caps":["batch"],`, MaxControlFrame), false},
		{"a large malformed resume is an application message", padded(t, `{"type":"resume","sessionId":1,"lastSeenSeqs":{},`, MaxControlFrame), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var f Frame
			if got := Parse(tt.msg, &f); got != tt.want {
				t.Errorf("Parse(%d-byte frame %.60q…) = %v, want %v", len(tt.msg), tt.msg, got, tt.want)
			}
		})
	}
	t.Run("the thresholds are those of §3.2 and §8", func(t *testing.T) {
		t.Parallel()
		if MaxControlFrame != 8192 || MaxResumeFrame != 65536 {
			t.Errorf("MaxControlFrame = %d, MaxResumeFrame = %d", MaxControlFrame, MaxResumeFrame)
		}
	})
}

// TestParseDecodingRules covers how members are found and decoded: the
// answers are those JSON.parse gives the browser code the protocol was
// written for.
func TestParseDecodingRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  string
		want frameView
	}{
		{"an escaped key decodes", `{"typ\u0065":"subscribe","topic":"x"}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`}},
		{"every key may be escaped", `{"\u0074\u0079\u0070\u0065":"subscribe","\u0074opic":"x","re\u0066":1}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`, Ref: "1"}},
		{"an escaped type value decodes", `{"type":"un\u0073ubscribe","topic":"x"}`,
			frameView{Kind: KindUnsubscribe, Topic: "x", TopicRaw: `"x"`}},
		{"an escaped topic decodes and its raw token is kept for the ack", `{"type":"subscribe","topic":"a\/b\u00e9","ref":1}`,
			frameView{Kind: KindSubscribe, Topic: "a/bé", TopicRaw: `"a\/b\u00e9"`, Ref: "1"}},
		{"an escaped control character decodes", `{"type":"subscribe","topic":"bad\u0001"}`,
			frameView{Kind: KindSubscribe, Topic: "bad\x01", TopicRaw: `"bad\u0001"`}},
		{"an escaped quote decodes", `{"type":"subscribe","topic":"a\"b"}`,
			frameView{Kind: KindSubscribe, Topic: `a"b`, TopicRaw: `"a\"b"`}},
		{"an escaped surrogate pair decodes to one character", `{"type":"subscribe","topic":"\ud83d\ude00"}`,
			frameView{Kind: KindSubscribe, Topic: "😀", TopicRaw: `"\ud83d\ude00"`}},
		{"raw UTF-8 in a topic is kept", `{"type":"subscribe","topic":"café"}`,
			frameView{Kind: KindSubscribe, Topic: "café", TopicRaw: `"café"`}},
		{"a duplicate type: the last wins", `{"type":"hello","type":"subscribe","topic":"x"}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`}},
		{"a duplicate topic: the last wins", `{"type":"subscribe","topic":"a","topic":"b"}`,
			frameView{Kind: KindSubscribe, Topic: "b", TopicRaw: `"b"`}},
		{"a duplicate ref: the last wins", `{"type":"subscribe","topic":"a","ref":1,"ref":"two"}`,
			frameView{Kind: KindSubscribe, Topic: "a", TopicRaw: `"a"`, Ref: `"two"`}},
		{"a duplicate ref whose last value is unusable means no ref", `{"type":"subscribe","topic":"a","ref":1,"ref":null}`,
			frameView{Kind: KindSubscribe, Topic: "a", TopicRaw: `"a"`}},
		{"a plain key and its escaped spelling are duplicates", `{"type":"subscribe","topic":"a","t\u006fpic":"b"}`,
			frameView{Kind: KindSubscribe, Topic: "b", TopicRaw: `"b"`}},
		{"a string ref is kept with its quotes (§9.7)", `{"type":"subscribe","topic":"x","ref":"a1"}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`, Ref: `"a1"`}},
		{"a numeric ref is kept as sent", `{"type":"subscribe","topic":"x","ref":3}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`, Ref: `3`}},
		{"a negative fractional ref is kept as sent", `{"type":"subscribe","topic":"x","ref":-1.5e3}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`, Ref: `-1.5e3`}},
		{"an escaped string ref is kept verbatim", `{"type":"subscribe","topic":"x","ref":"a\u0031"}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`, Ref: `"a\u0031"`}},
		{"a null ref means no ack", `{"type":"subscribe","topic":"x","ref":null}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`}},
		{"a boolean ref means no ack", `{"type":"subscribe","topic":"x","ref":true}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`}},
		{"an object ref means no ack", `{"type":"subscribe","topic":"x","ref":{"n":1}}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`}},
		{"an array ref means no ack", `{"type":"subscribe-batch","topics":[],"ref":[1]}`,
			frameView{Kind: KindSubscribeBatch}},
		{"whitespace around every token is tolerated",
			" \r\n\t{ \"type\" :\t\"subscribe\" ,\n\"topic\" : \"x\" , \"ref\" : 3 \r\n} \t\n",
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`, Ref: "3"}},
		{"whitespace inside arrays is tolerated", "{\"type\":\"subscribe-batch\",\"topics\":[ \"a\" ,\n\"b\" ] ,\"ref\":4}",
			frameView{Kind: KindSubscribeBatch, Topics: []string{`"a"`, `"b"`}, Ref: "4"}},
		{"unknown members are ignored", `{"type":"subscribe","x":{"type":"hello","topic":[1]},"topic":"t","y":[{"ref":1}]}`,
			frameView{Kind: KindSubscribe, Topic: "t", TopicRaw: `"t"`}},
		{"members may come in any order", `{"ref":9,"topic":"t","type":"subscribe"}`,
			frameView{Kind: KindSubscribe, Topic: "t", TopicRaw: `"t"`, Ref: "9"}},
		{"braces and quotes inside strings do not confuse the scanner", `{"x":"}\"{[","type":"subscribe","topic":"t]}"}`,
			frameView{Kind: KindSubscribe, Topic: "t]}", TopicRaw: `"t]}"`}},
		{"an escaped backslash before a closing quote is handled", `{"x":"\\","type":"subscribe","topic":"t"}`,
			frameView{Kind: KindSubscribe, Topic: "t", TopicRaw: `"t"`}},
		{"an empty topic string is still a subscribe (denied later)", `{"type":"subscribe","topic":""}`,
			frameView{Kind: KindSubscribe, Topic: "", TopicRaw: `""`}},
		{"hello caps keep only string entries", `{"type":"hello","caps":["batch",1,null,{"a":"b"},["c"],true,"x"]}`,
			frameView{Kind: KindHello, Caps: []string{"batch", "x"}}},
		{"hello caps decode escapes", `{"type":"hello","caps":["b\u0061tch"]}`,
			frameView{Kind: KindHello, Caps: []string{"batch"}}},
		{"hello with empty caps is a hello", `{"type":"hello","caps":[]}`,
			frameView{Kind: KindHello}},
		{"hello keeps duplicate caps", `{"type":"hello","caps":["batch","batch"]}`,
			frameView{Kind: KindHello, Caps: []string{"batch", "batch"}}},
		{"subscribe-batch keeps every kind of entry raw", `{"type":"subscribe-batch","topics":["a",1,null,{"t":"x"},["y"],"a"],"ref":"r"}`,
			frameView{Kind: KindSubscribeBatch, Topics: []string{`"a"`, `1`, `null`, `{"t":"x"}`, `["y"]`, `"a"`}, Ref: `"r"`}},
		{"subscribe-batch with empty topics is a subscribe-batch", `{"type":"subscribe-batch","topics":[]}`,
			frameView{Kind: KindSubscribeBatch}},
		{"cursor payload is data", `{"type":"cursor","topic":"c","data":{"x":1},"position":{"x":2}}`,
			frameView{Kind: KindCursor, Topic: "c", TopicRaw: `"c"`, Data: `{"x":1}`}},
		{"cursor data wins even when it comes after position", `{"type":"cursor","topic":"c","position":{"x":2},"data":[1]}`,
			frameView{Kind: KindCursor, Topic: "c", TopicRaw: `"c"`, Data: `[1]`}},
		{"cursor payload is position without data", `{"type":"cursor","topic":"c","position":{"x":2}}`,
			frameView{Kind: KindCursor, Topic: "c", TopicRaw: `"c"`, Data: `{"x":2}`}},
		{"cursor payload is nil without data or position", `{"type":"cursor","topic":"c"}`,
			frameView{Kind: KindCursor, Topic: "c", TopicRaw: `"c"`}},
		{"an explicit null cursor data is kept", `{"type":"cursor","topic":"c","data":null,"position":1}`,
			frameView{Kind: KindCursor, Topic: "c", TopicRaw: `"c"`, Data: `null`}},
		{"a scalar cursor payload is kept", `{"type":"cursor","topic":"c","data":12.5}`,
			frameView{Kind: KindCursor, Topic: "c", TopicRaw: `"c"`, Data: `12.5`}},
		{"a reply keeps both data and error", `{"type":"reply","ref":1,"data":2,"error":{"m":"x"}}`,
			frameView{Kind: KindReply, Ref: "1", Data: "2", Error: `{"m":"x"}`}},
		{"a reply takes data as given, ignoring position", `{"type":"reply","ref":1,"position":2}`,
			frameView{Kind: KindReply, Ref: "1"}},
		{"a resume sessionId is decoded", `{"type":"resume","sessionId":"a\u002db","lastSeenSeqs":{"chat":7}}`,
			frameView{Kind: KindResume, SessionID: "a-b", LastSeenSeqs: `{"chat":7}`}},
		{"a resume with an empty sessionId is a resume", `{"type":"resume","sessionId":"","lastSeenSeqs":{"chat":7}}`,
			frameView{Kind: KindResume, LastSeenSeqs: `{"chat":7}`}},
		{"a resume keeps lastSeenSeqs raw, whitespace included", `{"type":"resume","sessionId":"s","lastSeenSeqs":{ "chat" : 7 }}`,
			frameView{Kind: KindResume, SessionID: "s", LastSeenSeqs: `{ "chat" : 7 }`}},
		{"a replay keeps a string since raw", `{"type":"replay","topic":"chat","since":"5"}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: `"5"`}},
		{"a replay with a null reqId has none", `{"type":"replay","topic":"chat","since":5,"reqId":null}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "5"}},
		{"a replay keeps a string reqId with its quotes", `{"type":"replay","topic":"chat","since":5,"reqId":"q1"}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "5", ReqID: `"q1"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := mustParse(t, tt.msg); !got.equal(tt.want) {
				t.Errorf("Parse(%s)\n got  %+v\n want %+v", tt.msg, got, tt.want)
			}
		})
	}
}

// TestParseSubscribeBatchLimit checks §3.5 and §9.8: only the first 256
// entries of a subscribe-batch are processed.
func TestParseSubscribeBatchLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		topics int
		want   int
	}{
		{"one topic gives one entry", 1, 1},
		{"200 topics, the client's maximum, give 200 entries", 200, 200},
		{"255 topics give 255 entries", 255, 255},
		{"256 topics give 256 entries", 256, 256},
		{"257 topics give 256 entries", 257, 256},
		{"300 topics give exactly 256 entries (§9.8)", 300, 256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			b.WriteString(`{"type":"subscribe-batch","topics":[`)
			for i := range tt.topics {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"t%d"`, i)
			}
			b.WriteString(`],"ref":4}`)
			got := mustParse(t, b.String())
			if got.Kind != KindSubscribeBatch || got.Ref != "4" {
				t.Fatalf("Parse gave kind %v ref %q, want subscribe-batch with ref 4", got.Kind, got.Ref)
			}
			if len(got.Topics) != tt.want {
				t.Fatalf("Parse gave %d topics, want %d", len(got.Topics), tt.want)
			}
			for i, raw := range got.Topics {
				if want := fmt.Sprintf(`"t%d"`, i); raw != want {
					t.Fatalf("topic %d = %s, want %s (input order)", i, raw, want)
				}
			}
		})
	}
	if MaxBatchTopics != 256 {
		t.Errorf("MaxBatchTopics = %d, want 256", MaxBatchTopics)
	}
}

// TestParseReusesFrame checks that a Frame reused across calls carries
// nothing over from the previous frame.
func TestParseReusesFrame(t *testing.T) {
	t.Parallel()
	var f Frame
	steps := []struct {
		msg  string
		want frameView
	}{
		{`{"type":"subscribe-batch","topics":["a","b","c"],"ref":1}`,
			frameView{Kind: KindSubscribeBatch, Topics: []string{`"a"`, `"b"`, `"c"`}, Ref: "1"}},
		{`{"type":"hello","caps":["batch","x"]}`,
			frameView{Kind: KindHello, Caps: []string{"batch", "x"}}},
		{`{"type":"subscribe-batch","topics":["d"]}`,
			frameView{Kind: KindSubscribeBatch, Topics: []string{`"d"`}}},
		{`{"type":"hello","caps":[]}`,
			frameView{Kind: KindHello}},
		{`{"type":"replay","topic":"chat","since":5,"reqId":2}`,
			frameView{Kind: KindReplay, Topic: "chat", TopicRaw: `"chat"`, Since: "5", ReqID: "2"}},
		{`{"type":"subscribe","topic":"x"}`,
			frameView{Kind: KindSubscribe, Topic: "x", TopicRaw: `"x"`}},
	}
	for i, s := range steps {
		if !Parse([]byte(s.msg), &f) {
			t.Fatalf("step %d: Parse(%s) = false", i, s.msg)
		}
		if got := viewOf(&f); !got.equal(s.want) {
			t.Errorf("step %d: Parse(%s)\n got  %+v\n want %+v", i, s.msg, got, s.want)
		}
	}
}

func TestParseDoesNotModifyInput(t *testing.T) {
	t.Parallel()
	msg := []byte(` {"typ\u0065":"subscribe","topic":"a\/b","ref":"r"} `)
	orig := bytes.Clone(msg)
	var f Frame
	Parse(msg, &f)
	if !bytes.Equal(msg, orig) {
		t.Errorf("Parse modified its input: %q, was %q", msg, orig)
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		kind Kind
		want string
	}{
		{"an application message", KindApp, "app"},
		{"hello", KindHello, "hello"},
		{"subscribe", KindSubscribe, "subscribe"},
		{"subscribe-batch", KindSubscribeBatch, "subscribe-batch"},
		{"unsubscribe", KindUnsubscribe, "unsubscribe"},
		{"resume", KindResume, "resume"},
		{"replay", KindReplay, "replay"},
		{"cursor", KindCursor, "cursor"},
		{"cursor-snapshot", KindCursorSnapshot, "cursor-snapshot"},
		{"reply", KindReply, "reply"},
		{"an out-of-range kind", Kind(200), "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.kind.String(); got != tt.want {
				t.Errorf("Kind(%d).String() = %q, want %q", tt.kind, got, tt.want)
			}
		})
	}
}

func TestEachLastSeen(t *testing.T) {
	t.Parallel()
	type entry struct {
		topic string
		seq   uint64
	}
	tests := []struct {
		name  string
		raw   string
		limit int
		want  []entry
	}{
		{"one entry", `{"chat":7}`, 1024, []entry{{"chat", 7}}},
		{"entries come in input order", `{"b":2,"a":1,"c":0}`, 1024, []entry{{"b", 2}, {"a", 1}, {"c", 0}}},
		{"an empty object gives nothing", `{}`, 1024, nil},
		{"zero is an integer ≥ 0", `{"a":0}`, 1024, []entry{{"a", 0}}},
		{"negative values are skipped", `{"a":-1,"b":2}`, 1024, []entry{{"b", 2}}},
		{"fractions are skipped", `{"a":1.5,"b":2}`, 1024, []entry{{"b", 2}}},
		{"5.0 is an integer, as Number.isInteger says", `{"a":5.0}`, 1024, []entry{{"a", 5}}},
		{"5e0 is an integer, as Number.isInteger says", `{"a":5e0}`, 1024, []entry{{"a", 5}}},
		{"0.5e1 is an integer", `{"a":0.5e1}`, 1024, []entry{{"a", 5}}},
		{"strings are skipped, even numeric ones", `{"a":"5","b":2}`, 1024, []entry{{"b", 2}}},
		{"null, booleans, arrays and objects are skipped", `{"a":null,"b":true,"c":[1],"d":{"x":1},"e":3}`, 1024, []entry{{"e", 3}}},
		{"whitespace is tolerated", `{ "a" : 1 , "b":2 }`, 1024, []entry{{"a", 1}, {"b", 2}}},
		{"escaped keys are decoded", `{"ch\u0061t":7,"a\/b":1}`, 1024, []entry{{"chat", 7}, {"a/b", 1}}},
		{"keys are passed as sent, validity is the caller's", `{"__x":1,"":2,"é":3}`, 1024, []entry{{"__x", 1}, {"", 2}, {"é", 3}}},
		{"the limit caps the entries taken", `{"a":1,"b":2,"c":3}`, 2, []entry{{"a", 1}, {"b", 2}}},
		{"skipped entries count toward the limit (§5.3: take, then keep)", `{"a":-1,"b":2,"c":3}`, 2, []entry{{"b", 2}}},
		{"a zero limit takes nothing", `{"a":1}`, 0, nil},
		{"values beyond 2^53 are skipped", `{"a":9007199254740993,"b":1}`, 1024, []entry{{"b", 1}}},
		{"2^53 itself is kept", `{"a":9007199254740992}`, 1024, []entry{{"a", 1 << 53}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []entry
			EachLastSeen([]byte(tt.raw), tt.limit, func(topic string, seq uint64) {
				got = append(got, entry{topic, seq})
			})
			if !slices.Equal(got, tt.want) {
				t.Errorf("EachLastSeen(%s, %d) = %v, want %v", tt.raw, tt.limit, got, tt.want)
			}
		})
	}
}

// TestEachLastSeenLimitOfResume feeds a 2000-entry lastSeenSeqs, as parsed
// from a large resume frame, and checks the §5.3 cap of 1024.
func TestEachLastSeenLimitOfResume(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString(`{"type":"resume","sessionId":"s","lastSeenSeqs":{`)
	for i := range 2000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"t%d":%d`, i, i)
	}
	b.WriteString(`}}`)
	if b.Len() < MaxControlFrame || b.Len() >= MaxResumeFrame {
		t.Fatalf("frame is %d bytes, want between the two thresholds", b.Len())
	}
	f := mustParse(t, b.String())
	n := 0
	EachLastSeen([]byte(f.LastSeenSeqs), 1024, func(topic string, seq uint64) {
		if want := fmt.Sprintf("t%d", n); topic != want || seq != uint64(n) {
			t.Errorf("entry %d = (%q, %d), want (%q, %d)", n, topic, seq, want, n)
		}
		n++
	})
	if n != 1024 {
		t.Errorf("EachLastSeen gave %d entries, want 1024", n)
	}
}

func TestNonNegInt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
		want uint64
		ok   bool
	}{
		{"zero", `0`, 0, true},
		{"a small integer", `5`, 5, true},
		{"a decimal integer form", `5.0`, 5, true},
		{"an exponent integer form", `5e0`, 5, true},
		{"a capital exponent", `5E0`, 5, true},
		{"a positive exponent sign", `5e+0`, 5, true},
		{"a fraction that scales to an integer", `0.5e1`, 5, true},
		{"a negative exponent that leaves an integer", `500e-2`, 5, true},
		{"trailing zeros after the point", `7.000`, 7, true},
		{"negative zero is an integer ≥ 0, as in JavaScript", `-0`, 0, true},
		{"negative zero as a float", `-0.0`, 0, true},
		{"an exponent form of a large integer", `1e15`, 1e15, true},
		{"2^53 is accepted", `9007199254740992`, 1 << 53, true},
		{"2^53 as a float is accepted", `9007199254740992.0`, 1 << 53, true},
		{"2^53+1 is refused", `9007199254740993`, 0, false},
		{"2^64 is refused", `18446744073709551616`, 0, false},
		{"1e16 is refused", `1e16`, 0, false},
		{"1e400 overflows and is refused", `1e400`, 0, false},
		{"a fraction is refused", `1.5`, 0, false},
		{"a small fraction is refused", `0.1`, 0, false},
		{"a negative integer is refused", `-1`, 0, false},
		{"a negative float is refused", `-1.0`, 0, false},
		{"a numeric string is refused", `"5"`, 0, false},
		{"null is refused", `null`, 0, false},
		{"true is refused", `true`, 0, false},
		{"an array is refused", `[5]`, 0, false},
		{"an object is refused", `{"n":5}`, 0, false},
		{"the empty token is refused", ``, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := NonNegInt([]byte(tt.raw))
			if ok != tt.ok || (ok && got != tt.want) {
				t.Errorf("NonNegInt(%s) = %d, %v; want %d, %v", tt.raw, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestStringToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
		want string
		ok   bool
	}{
		{"a plain string", `"chat"`, "chat", true},
		{"the empty string", `""`, "", true},
		{"escapes are decoded", `"a\/b\n\u00e9\"\\"`, "a/b\né\"\\", true},
		{"a surrogate pair is decoded", `"\ud83d\ude00"`, "😀", true},
		{"raw UTF-8 is kept", `"café"`, "café", true},
		{"invalid UTF-8 decodes to U+FFFD, as a browser's decoder would give JSON.parse", "\"a\xffb\"", "a\ufffdb", true},
		{"invalid UTF-8 decodes the same with or without escapes", "\"\xff\\n\"", "\ufffd\n", true},
		{"a lone surrogate escape decodes to U+FFFD", `"\ud800"`, "\ufffd", true},
		{"a number is not a string", `5`, "", false},
		{"null is not a string", `null`, "", false},
		{"an array is not a string", `["a"]`, "", false},
		{"an object is not a string", `{"a":"b"}`, "", false},
		{"the empty token is not a string", ``, "", false},
		{"a lone quote is not a string", `"`, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := StringToken([]byte(tt.raw))
			if ok != tt.ok || got != tt.want {
				t.Errorf("StringToken(%s) = %q, %v; want %q, %v", tt.raw, got, ok, tt.want, tt.ok)
			}
		})
	}
}
