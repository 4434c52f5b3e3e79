package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// parseSeeds are client frames as the 0.5.1 and 0.3.4 clients send them
// (§2.4, §3.3), the §9 checklist frames, and malformed or hostile ones.
var parseSeeds = []string{
	// §3.3, as serialised by the clients.
	`{"type":"hello","caps":["batch"]}`,
	`{"type":"subscribe","topic":"chat","ref":3}`,
	`{"type":"subscribe","topic":"t"}`,
	`{"type":"subscribe-batch","topics":["a","b"],"ref":4}`,
	`{"type":"unsubscribe","topic":"chat"}`,
	`{"type":"resume","sessionId":"6f1c2d3e-0000-4000-8000-000000000000","lastSeenSeqs":{"chat":7}}`,
	`{"type":"replay","topic":"chat","since":5,"reqId":2}`,
	`{"type":"replay","topic":"chat","since":5}`,
	`{"type":"cursor","topic":"canvas","data":{"x":1,"y":2}}`,
	`{"type":"cursor","topic":"canvas","position":{"x":1,"y":2}}`,
	`{"type":"cursor-snapshot","topic":"canvas"}`,
	`{"type":"reply","ref":12,"data":{"ok":true}}`,
	`{"type":"reply","ref":12,"error":"no"}`,
	// §9 checklist frames.
	`{"type":"subscribe","topic":"x","ref":3}`,
	`{"type":"subscribe","topic":"x","ref":"a1"}`,
	`{"type":"subscribe-batch","topics":["ok","bad\u0001","__x"],"ref":5}`,
	`{"type":"resume","sessionId":7,"lastSeenSeqs":{"chat":5}}`,
	`{"type":"replay","topic":"chat","since":-1,"reqId":2}`,
	`{"type":"replay","topic":"chat","since":1.5,"reqId":2}`,
	`{"type":"subscribe","topic":"__group:x","ref":1}`,
	`{"type":"unsubscribe","topic":"__replay:chat"}`,
	`{"topic":"x"}`,
	// Classification rules.
	`{"TYPE":"subscribe","topic":"x"}`,
	`{"Type":"subscribe","Topic":"x"}`,
	`{"type":"subscribe","TOPIC":"x","topic":"y"}`,
	`{"typ\u0065":"subscribe","topic":"x"}`,
	`{"type":"subscribe","topic":"a","topic":"b"}`,
	`{"type":"subscribe","topic":"a","t\u006fpic":"b","ref":1,"ref":{}}`,
	`{"type":"hello","caps":["batch",1,null,{"a":"b"},["c"],true,"x"]}`,
	`{"type":"hello","caps":"batch"}`,
	`{"type":"subscribe-batch","topics":"a"}`,
	`{"type":"subscribe-batch","topics":["a",1,null,{"t":"x"},["y"],"a"],"ref":"r"}`,
	`{"type":"resume","sessionId":"s","lastSeenSeqs":null}`,
	`{"type":"resume","sessionId":"s","lastSeenSeqs":[]}`,
	`{"type":"reply","data":1}`,
	`{"type":"reply","ref":{"id":1}}`,
	`{"type":"subscribe","topic":42,"ref":1}`,
	`{"type":"cursor","topic":"c","data":null,"position":1}`,
	" \r\n\t{ \"type\" :\t\"subscribe\" ,\n\"topic\" : \"x\" , \"ref\" : 3 \r\n} \t\n",
	`{"x":"}\"{[","type":"subscribe","topic":"t]}"}`,
	`{"x":"\\","type":"subscribe","topic":"t"}`,
	`{"type":"publish","topic":"x"}`,
	`{}`, `[]`, `null`, `"subscribe"`, `42`, ``, ` `,
	// Strings: escapes, non-ASCII, surrogates.
	`{"type":"subscribe","topic":"a\/b\u00e9\"\\\b\f\n\r\t"}`,
	`{"type":"subscribe","topic":"café 聊天 😀"}`,
	`{"type":"subscribe","topic":"\ud83d\ude00"}`,
	`{"type":"subscribe","topic":"\ud800"}`,
	`{"type":"subscribe","topic":"\udc00\ud800x"}`,
	`{"type":"subscribe","topic":"\ud800\u0041"}`,
	`{"type":"subscribe","topic":"\uFFFD"}`,
	"{\"type\":\"subscribe\",\"topic\":\"\u2028\u2029\"}",
	// Numbers.
	`{"type":"subscribe","topic":"x","ref":1e999999}`,
	`{"type":"subscribe","topic":"x","ref":-0.0e-0}`,
	`{"type":"subscribe","topic":"x","ref":123456789012345678901234567890}`,
	`{"type":"resume","sessionId":"s","lastSeenSeqs":{"a":1e400,"b":-0,"c":9007199254740993,"d":5e0,"e":5.0}}`,
	// Truncated and malformed JSON.
	`{"type":"subscribe","topic":"x"`,
	`{"type":"subscribe","topic":"x`,
	`{"type":"subscribe","topic":`,
	`{"type":"subscribe",`,
	`{"type":`,
	`{"type"`,
	`{"`,
	`{`,
	`{"type":"subscribe","topic":"x",}`,
	`{"type":"subscribe","topic":"x"}}`,
	`{"type":"subscribe","topic":"x"}{}`,
	`{'type':'subscribe','topic':'x'}`,
	`{type:"subscribe",topic:"x"}`,
	`{"type":"subscribe","topic":"\x"}`,
	`{"type":"subscribe","topic":"\u12"}`,
	"{\"type\":\"subscribe\",\"topic\":\"a\x00b\"}",
	"{\"type\":\"subscribe\",\"topic\":\"a\nb\"}",
	"\xef\xbb\xbf{\"type\":\"subscribe\",\"topic\":\"x\"}",
	"{\"typ\xff\":\"subscribe\",\"topic\":\"x\"}",
	"{\"type\":\"subscribe\",\"topic\":\"\xff\",\"ref\":1}",
	"{\"type\":\"subscribe\",\"topic\":\"caf\xc3\"}",
	"{\"type\":\"hello\",\"caps\":[\"b\xffatch\",\"batch\"]}",
	"{\"type\":\"resume\",\"sessionId\":\"\x9e\",\"lastSeenSeqs\":{\"\xff\":1}}",
}

// nested returns a frame whose "d" member nests depth arrays.
func nested(prefix string, depth int) string {
	return prefix + `"d":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
}

func FuzzParse(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	// Deep nesting: within encoding/json's limit of 10000, and beyond it in
	// a resume frame, which may be up to 65535 bytes.
	f.Add([]byte(nested(`{"type":"subscribe","topic":"x",`, 4000)))
	f.Add([]byte(nested(`{"type":"resume","sessionId":"s","lastSeenSeqs":{},`, 10001)))
	f.Add([]byte(`{"type":"subscribe","topic":"x","d":` + strings.Repeat(`{"a":`, 1000) + `1` + strings.Repeat(`}`, 1000) + `}`))
	// Size thresholds (§3.2 rule 2).
	pad := func(prefix string, n int) []byte {
		return []byte(prefix + `"pad":"` + strings.Repeat("x", n-len(prefix)-len(`"pad":""}`)) + `"}`)
	}
	f.Add(pad(`{"type":"subscribe","topic":"x",`, MaxControlFrame-1))
	f.Add(pad(`{"type":"subscribe","topic":"x",`, MaxControlFrame))
	f.Add(pad(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":7},`, MaxControlFrame))
	f.Add(pad(`{"type":"resume","sessionId":"s","lastSeenSeqs":{"chat":7},`, MaxResumeFrame-1))
	// A subscribe-batch of 300 topics (§9.8).
	var b strings.Builder
	b.WriteString(`{"type":"subscribe-batch","topics":[`)
	for i := range 300 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"t%d"`, i)
	}
	b.WriteString(`],"ref":4}`)
	f.Add([]byte(b.String()))

	f.Fuzz(func(t *testing.T, msg []byte) {
		orig := bytes.Clone(msg)
		var fr Frame
		ok := Parse(msg, &fr)
		if !bytes.Equal(msg, orig) {
			t.Fatalf("Parse modified its input")
		}
		if ok && !json.Valid(msg) {
			t.Fatalf("Parse accepted invalid JSON %q as %v", msg, fr.Kind)
		}
		if ok && fr.Kind == KindApp {
			t.Fatalf("Parse returned true with KindApp for %q", msg)
		}
		if !ok {
			fr = Frame{}
		}
		if len(fr.Topics) > MaxBatchTopics {
			t.Fatalf("Parse gave %d topics, more than %d", len(fr.Topics), MaxBatchTopics)
		}
		for name, raw := range map[string][]byte{
			"TopicRaw": fr.TopicRaw, "Ref": fr.Ref, "LastSeenSeqs": fr.LastSeenSeqs,
			"Since": fr.Since, "ReqID": fr.ReqID, "Data": fr.Data, "Error": fr.Error,
		} {
			if raw != nil && !json.Valid(raw) {
				t.Fatalf("%s = %q is not a JSON value", name, raw)
			}
		}
		for i, raw := range fr.Topics {
			if !json.Valid(raw) {
				t.Fatalf("Topics[%d] = %q is not a JSON value", i, raw)
			}
		}

		want, wantOK := oracleParse(msg)
		if !ok && wantOK && !utf8.Valid(msg) {
			// A text frame that is not UTF-8 never reaches a browser's
			// JSON.parse (RFC 6455 fails the connection): classifying it
			// as an application message is as acceptable as decoding it
			// with U+FFFD replacement, as the oracle does. Passing the
			// invalid bytes through is neither.
			return
		}
		if ok != wantOK {
			t.Fatalf("Parse(%q) = %v (kind %v), oracle says %v (kind %v)", msg, ok, fr.Kind, wantOK, want.Kind)
		}
		if !ok {
			return
		}
		got := viewOf(&fr)
		switch fr.Kind {
		case KindSubscribe, KindUnsubscribe, KindReplay, KindCursor, KindCursorSnapshot:
			if got.Topic != want.Topic {
				t.Fatalf("Parse(%q): Topic = %q, encoding/json decodes %q", msg, got.Topic, want.Topic)
			}
		}
		if !got.equal(want) {
			t.Fatalf("Parse(%q)\n got    %+v\n oracle %+v", msg, got, want)
		}

		// Parsing again into the used Frame gives the same answer.
		if !Parse(msg, &fr) || !viewOf(&fr).equal(want) {
			t.Fatalf("a second Parse of %q into the same Frame disagrees", msg)
		}
	})
}

// oracleParse classifies msg per §3.2 and §3.3 with encoding/json as the
// decoder. It is the test's reference, not a second implementation of the
// scanner: members come from a map[string]json.RawMessage, whose keys are
// matched exactly (case-sensitively, unlike struct fields) after unescaping,
// and where a duplicate key's last value wins, both as with JSON.parse.
//
// Where encoding/json and JSON.parse differ, the oracle follows
// encoding/json: a lone surrogate escape decodes to U+FFFD (a Go string
// cannot hold it), and so does invalid UTF-8 (as a browser's UTF-8 decoder
// would replace it before JSON.parse saw the text). The nesting limit of
// 10000 is encoding/json's; Parse uses json.Valid and shares it.
func oracleParse(msg []byte) (frameView, bool) {
	var v frameView
	if len(msg) >= MaxControlFrame && !(len(msg) < MaxResumeFrame && bytes.HasPrefix(msg, []byte(`{"type":"resume",`))) {
		return v, false
	}
	if body := bytes.TrimLeft(msg, " \t\r\n"); len(body) == 0 || body[0] != '{' {
		return v, false // json.Unmarshal would accept null into a map
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(msg, &m) != nil {
		return v, false
	}
	str := func(raw json.RawMessage) (string, bool) {
		if len(raw) == 0 || raw[0] != '"' {
			return "", false // json.Unmarshal would accept null into a string
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	numOrStr := func(raw json.RawMessage) string {
		if len(raw) > 0 && (raw[0] == '"' || raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')) {
			return string(raw)
		}
		return ""
	}
	isArray := func(raw json.RawMessage) bool { return len(raw) > 0 && raw[0] == '[' }
	needTopic := func() bool {
		raw, present := m["topic"]
		if !present {
			return false
		}
		s, ok := str(raw)
		v.Topic, v.TopicRaw = s, string(raw)
		return ok
	}

	typ, ok := str(m["type"])
	if !ok {
		return v, false
	}
	v.Ref = numOrStr(m["ref"])
	switch typ {
	case "hello":
		if !isArray(m["caps"]) {
			return v, false
		}
		v.Kind = KindHello
		var caps []json.RawMessage
		if json.Unmarshal(m["caps"], &caps) != nil {
			return v, false
		}
		for _, c := range caps {
			if s, ok := str(c); ok {
				v.Caps = append(v.Caps, s)
			}
		}
	case "subscribe":
		v.Kind = KindSubscribe
		return v, needTopic()
	case "subscribe-batch":
		if !isArray(m["topics"]) {
			return v, false
		}
		v.Kind = KindSubscribeBatch
		var topics []json.RawMessage
		if json.Unmarshal(m["topics"], &topics) != nil {
			return v, false
		}
		for _, t := range topics[:min(len(topics), MaxBatchTopics)] {
			v.Topics = append(v.Topics, string(t))
		}
	case "unsubscribe":
		v.Kind = KindUnsubscribe
		return v, needTopic()
	case "resume":
		s, ok := str(m["sessionId"])
		lss := m["lastSeenSeqs"]
		if !ok || len(lss) == 0 || lss[0] != '{' {
			return v, false
		}
		v.Kind, v.SessionID, v.LastSeenSeqs = KindResume, s, string(lss)
	case "replay":
		v.Kind = KindReplay
		v.Since = string(m["since"])
		v.ReqID = numOrStr(m["reqId"])
		return v, needTopic()
	case "cursor":
		v.Kind = KindCursor
		if d, ok := m["data"]; ok {
			v.Data = string(d)
		} else if p, ok := m["position"]; ok {
			v.Data = string(p)
		}
		return v, needTopic()
	case "cursor-snapshot":
		v.Kind = KindCursorSnapshot
		return v, needTopic()
	case "reply":
		if v.Ref == "" {
			return v, false
		}
		v.Kind = KindReply
		v.Data = string(m["data"])
		v.Error = string(m["error"])
	default:
		return v, false
	}
	return v, true
}

func FuzzValidTopic(f *testing.F) {
	for _, s := range []string{
		"chat", "chat:room/1", "__presence:room", strings.Repeat("x", 256), strings.Repeat("x", 257),
		"café", "聊天", "😀", strings.Repeat("😀", 128), strings.Repeat("😀", 129),
		`a"b`, `a\b`, "a\x00b", "a\x1fb", "a\x7fb", "a\u0085b", "a\u00a0b", "a\xffb", "a\xed\xa0\x80b",
		"<script>&", "\u2028\u2029", "\uFFFD", "\uFEFF", "", " ",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, topic string, allowNonASCII bool) {
		if !ValidTopic(topic, allowNonASCII) {
			return
		}
		// A valid topic is spliced into frames verbatim: it must need no
		// JSON escaping, so quoting it yields a JSON string that decodes
		// back to it unchanged.
		quoted := `"` + topic + `"`
		var back string
		if err := json.Unmarshal([]byte(quoted), &back); err != nil || back != topic {
			t.Fatalf("ValidTopic(%q, %v) = true, but %s decodes to %q (%v)", topic, allowNonASCII, quoted, back, err)
		}
		// encoding/json's own encoding agrees, except that it escapes
		// U+2028 and U+2029 for JavaScript source (not a JSON requirement:
		// JSON.parse accepts them raw).
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(topic); err != nil {
			t.Fatal(err)
		}
		got := strings.TrimSuffix(buf.String(), "\n")
		got = strings.NewReplacer(`\u2028`, "\u2028", `\u2029`, "\u2029").Replace(got)
		if got != quoted {
			t.Fatalf("ValidTopic(%q, %v) = true, but encoding/json writes %s", topic, allowNonASCII, got)
		}
		if n := utf16Len(topic); n < 1 || n > MaxTopicLen {
			t.Fatalf("ValidTopic(%q, %v) = true with %d UTF-16 units", topic, allowNonASCII, n)
		}
		if !allowNonASCII {
			for i := 0; i < len(topic); i++ {
				if topic[i] < 0x20 || topic[i] > 0x7e {
					t.Fatalf("ValidTopic(%q, false) = true with byte %#x", topic, topic[i])
				}
			}
		}
	})
}

// utf16Len is the String.length of s in a browser.
func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		if r >= 0x10000 {
			n += 2
		} else {
			n++
		}
	}
	return n
}

// FuzzEachLastSeen compares EachLastSeen with encoding/json's token stream
// and JavaScript's Number.isInteger(v) && v >= 0, evaluated on the float64
// the number parses to (strconv.ParseFloat rounds as JavaScript does).
func FuzzEachLastSeen(f *testing.F) {
	for _, s := range []string{
		`{"chat":7}`, `{}`, `{"b":2,"a":1,"c":0}`, `{"a":-1,"b":1.5,"c":"5","d":null,"e":[1],"f":{"g":1}}`,
		`{"a":5.0,"b":5e0,"c":0.5e1,"d":500e-2,"e":-0,"f":-0.0,"g":1e-400}`,
		`{"a":9007199254740991,"b":9007199254740992,"c":9007199254740993,"d":1e16,"e":1e400,"f":18446744073709551616}`,
		`{"ch\u0061t":7,"a\/b":1,"\ud800":2}`, `{ "a" : 1 , "a" : 2 }`,
		"{\"\xff\":1,\"a\xc3\":2,\"\xed\xa0\x80\":3}",
	} {
		f.Add([]byte(s), uint16(1024))
		f.Add([]byte(s), uint16(1))
	}
	f.Fuzz(func(t *testing.T, raw []byte, limit16 uint16) {
		// EachLastSeen takes the raw lastSeenSeqs token Parse returns: a
		// valid JSON object (possibly holding invalid UTF-8, which both
		// sides decode to U+FFFD).
		if len(raw) == 0 || raw[0] != '{' || !json.Valid(raw) {
			return
		}
		limit := int(limit16 % 2048)
		type entry struct {
			topic string
			seq   uint64
		}
		var got []entry
		EachLastSeen(raw, limit, func(topic string, seq uint64) { got = append(got, entry{topic, seq}) })

		dec := json.NewDecoder(bytes.NewReader(raw))
		if _, err := dec.Token(); err != nil { // '{'
			t.Fatal(err)
		}
		var want []entry
		ambiguous := map[int]bool{} // indexes into want of values ≥ 2^53
		for n := 0; dec.More(); n++ {
			tok, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			key := tok.(string)
			var val json.RawMessage
			if err := dec.Decode(&val); err != nil {
				t.Fatal(err)
			}
			if n >= limit || !isNumber(val) {
				continue
			}
			fl, err := strconv.ParseFloat(string(val), 64)
			if err != nil || fl < 0 || fl != math.Trunc(fl) {
				continue
			}
			if fl >= 1<<53 {
				ambiguous[len(want)] = true
			}
			want = append(want, entry{key, uint64(fl)})
		}
		// Beyond 2^53 the float no longer says what was sent: NonNegInt
		// refuses such values, or takes them as exactly 2^53.
		i := 0
		for j, w := range want {
			if i < len(got) && got[i] == w {
				i++
				continue
			}
			if ambiguous[j] {
				continue
			}
			t.Fatalf("EachLastSeen(%q, %d) = %v, want %v", raw, limit, got, want)
		}
		if i != len(got) {
			t.Fatalf("EachLastSeen(%q, %d) = %v, want %v", raw, limit, got, want)
		}
		for _, g := range got {
			if g.seq > 1<<53 {
				t.Fatalf("EachLastSeen(%q) gave seq %d beyond 2^53", raw, g.seq)
			}
		}
	})
}
