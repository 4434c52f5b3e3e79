package envelope

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

func TestEncodeEnvelopeShapes(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []Message
		want string
	}{
		{
			"one topic message is flat, as the reference package sends it",
			[]Message{{Topic: "chat", Event: "created", Data: json.RawMessage(`{"id":1}`)}},
			`{"instanceId":"i1","topic":"chat","event":"created","data":{"id":1}}`,
		},
		{
			"seq follows data and nil data is null",
			[]Message{{Topic: "chat", Event: "ping", Seq: 7}},
			`{"instanceId":"i1","topic":"chat","event":"ping","data":null,"seq":7}`,
		},
		{
			"several topic messages are a batch, in order",
			[]Message{
				{Topic: "a", Event: "x", Data: json.RawMessage(`[1, 2]`), Seq: 1},
				{Topic: "__group:lobby", Event: "join", Data: json.RawMessage(`{"role":"member","count":2}`)},
			},
			`{"instanceId":"i1","batch":[{"topic":"a","event":"x","data":[1, 2],"seq":1},{"topic":"__group:lobby","event":"join","data":{"role":"member","count":2}}]}`,
		},
		{
			"a unit with a direct send uses messages, and the user is escaped",
			[]Message{
				{Topic: "a", Event: "x", Data: json.RawMessage(`1`), Seq: 3},
				{Topic: "dm", Event: "new", Data: json.RawMessage(`"hi"`), User: "u\"<9>\n"},
			},
			`{"instanceId":"i1","messages":[{"topic":"a","event":"x","data":1,"seq":3},{"topic":"dm","event":"new","data":"hi","user":"u\"<9>\u000a"}]}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{SystemTopics: wire.Patterns{"__group:*"}}
			got, err := Encode("i1", tc.msgs, opts)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			id, msgs, err := Decode(got, opts)
			if err != nil || id != "i1" || !sameUnit(msgs, tc.msgs) {
				t.Fatalf("decoding it back: %q %s %v", id, unitString(msgs), err)
			}
		})
	}
}

func TestEncodeEnvelopeRefuses(t *testing.T) {
	ok := Message{Topic: "t", Event: "e"}
	for _, tc := range []struct {
		name string
		id   string
		msgs []Message
		opts Options
		want error
	}{
		{"an empty instance id", "", []Message{ok}, Options{}, ErrInvalidMessage},
		{"an instance id that is not UTF-8", "\xff", []Message{ok}, Options{}, ErrInvalidMessage},
		{"no messages", "i", nil, Options{}, ErrInvalidMessage},
		{"an invalid topic", "i", []Message{ok, {Topic: "a\"b", Event: "e"}}, Options{}, ErrInvalidMessage},
		{"a non-ASCII topic unless allowed", "i", []Message{{Topic: "café", Event: "e"}}, Options{}, ErrInvalidMessage},
		{"a system topic by default", "i", []Message{{Topic: "__presence:x", Event: "e"}}, Options{}, ErrInvalidMessage},
		{"a system topic outside the allowed patterns", "i", []Message{{Topic: "__signal:x", Event: "e"}}, Options{SystemTopics: wire.Patterns{"__group:*"}}, ErrInvalidMessage},
		{"an invalid event", "i", []Message{{Topic: "t", Event: "a\x01"}}, Options{}, ErrInvalidMessage},
		{"data that is not JSON", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`{`)}}, Options{}, ErrInvalidMessage},
		{"two JSON values as data", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`1 2`)}}, Options{}, ErrInvalidMessage},
		{"data with invalid UTF-8", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage("\"\xc3\"")}}, Options{}, ErrInvalidMessage},
		{"seq on a system topic", "i", []Message{{Topic: "__group:x", Event: "e", Seq: 2}}, Options{SystemTopics: wire.Patterns{"__*"}}, ErrInvalidMessage},
		{"seq on a direct send", "i", []Message{{Topic: "t", Event: "e", Seq: 2, User: "u"}}, Options{}, ErrInvalidMessage},
		{"seq beyond 2^53", "i", []Message{{Topic: "t", Event: "e", Seq: 1<<53 + 1}}, Options{}, ErrInvalidMessage},
		{"a user that is not UTF-8", "i", []Message{{Topic: "t", Event: "e", User: "\xff"}}, Options{}, ErrInvalidMessage},
		{"an envelope over MaxBytes", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`"` + strings.Repeat("x", 100) + `"`)}}, Options{MaxBytes: 100}, ErrTooLarge},
		{"an envelope over the default cap", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`"` + strings.Repeat("x", DefaultMaxBytes) + `"`)}}, Options{}, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Encode(tc.id, tc.msgs, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Encode returned %.60q, %v; want %v", b, err, tc.want)
			}
		})
	}
}

func TestEncodeEnvelopeFitsExactlyAtMaxBytes(t *testing.T) {
	m := []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`"xxxx"`)}}
	b, err := Encode("i", m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Encode("i", m, Options{MaxBytes: len(b)}); err != nil {
		t.Fatalf("an envelope of exactly MaxBytes was refused: %v", err)
	}
	if _, _, err := Decode(b, Options{MaxBytes: len(b)}); err != nil {
		t.Fatalf("an envelope of exactly MaxBytes was refused: %v", err)
	}
	if _, _, err := Decode(b, Options{MaxBytes: len(b) - 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("one byte over MaxBytes: %v, want ErrTooLarge", err)
	}
}

func TestDecodeEnvelopeAccepts(t *testing.T) {
	lax := Options{AllowNonASCIITopics: true, SystemTopics: wire.Patterns{"__realtime", "__group:*"}}
	for _, tc := range []struct {
		name string
		in   string
		opts Options
		id   string
		want []Message
	}{
		{
			"the reference package's flat envelope",
			`{"instanceId":"9f86d081884c7d65","topic":"chat","event":"created","data":{"id":1,"text":"hi"}}`,
			Options{}, "9f86d081884c7d65",
			[]Message{{Topic: "chat", Event: "created", Data: json.RawMessage(`{"id":1,"text":"hi"}`)}},
		},
		{
			"the reference package's batch envelope",
			`{"instanceId":"x","batch":[{"topic":"a","event":"e","data":1},{"topic":"b","event":"f","data":[true]}]}`,
			Options{}, "x",
			[]Message{{Topic: "a", Event: "e", Data: json.RawMessage(`1`)}, {Topic: "b", Event: "f", Data: json.RawMessage(`[true]`)}},
		},
		{
			"an outside publisher without instanceId or data",
			`{"topic":"t","event":"e"}`,
			Options{}, "",
			[]Message{{Topic: "t", Event: "e"}},
		},
		{
			"data keeps its inner bytes; whitespace around tokens goes",
			"\n{ \"topic\" : \"t\" ,\t\"event\":\"e\", \"data\" : { \"b\" : 1.50 , \"a\" : 9007199254740993 } }\n",
			Options{}, "",
			[]Message{{Topic: "t", Event: "e", Data: json.RawMessage(`{ "b" : 1.50 , "a" : 9007199254740993 }`)}},
		},
		{
			"escaped keys and values decode as in JSON.parse",
			`{"\u0074opic":"ch\u0061t","event":"e\u00e9","data":"\ud83d\ude00"}`,
			Options{}, "",
			[]Message{{Topic: "chat", Event: "eé", Data: json.RawMessage(`"\ud83d\ude00"`)}},
		},
		{
			"a repeated member counts once, the last winning",
			`{"topic":"first","event":"e","topic":"last"}`,
			Options{}, "",
			[]Message{{Topic: "last", Event: "e"}},
		},
		{
			"unknown members are ignored",
			`{"instanceId":"x","topic":"t","event":"e","data":null,"extra":{"topic":"no"},"ts":1}`,
			Options{}, "x",
			[]Message{{Topic: "t", Event: "e", Data: json.RawMessage(`null`)}},
		},
		{
			"seq as an integer, also written 7.0",
			`{"batch":[{"topic":"t","event":"e","seq":7},{"topic":"t","event":"e","seq":8.0},{"topic":"t","event":"e","seq":9007199254740992}]}`,
			Options{}, "",
			[]Message{{Topic: "t", Event: "e", Seq: 7}, {Topic: "t", Event: "e", Seq: 8}, {Topic: "t", Event: "e", Seq: 1 << 53}},
		},
		{
			"direct sends in messages, beside topic messages",
			`{"instanceId":"x","messages":[{"topic":"dm","event":"e","user":"u:1"},{"topic":"t","event":"e","seq":3}]}`,
			Options{}, "x",
			[]Message{{Topic: "dm", Event: "e", User: "u:1"}, {Topic: "t", Event: "e", Seq: 3}},
		},
		{
			"allowed system topics and non-ASCII topics with the options",
			`{"batch":[{"topic":"__realtime","event":"degraded","data":{"at":1}},{"topic":"__group:lobby","event":"close"},{"topic":"café","event":"e"}]}`,
			lax, "",
			[]Message{{Topic: "__realtime", Event: "degraded", Data: json.RawMessage(`{"at":1}`)}, {Topic: "__group:lobby", Event: "close"}, {Topic: "café", Event: "e"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, msgs, err := Decode([]byte(tc.in), tc.opts)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if id != tc.id {
				t.Errorf("instanceId %q, want %q", id, tc.id)
			}
			if !sameUnit(msgs, tc.want) {
				t.Fatalf("got  %s\nwant %s", unitString(msgs), unitString(tc.want))
			}
			for i := range msgs {
				if (msgs[i].Data == nil) != (tc.want[i].Data == nil) {
					t.Errorf("message %d: data %q, want %q (absent data is nil, explicit null is kept)", i, msgs[i].Data, tc.want[i].Data)
				}
			}
		})
	}
}

func TestDecodeEnvelopeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		opts Options
		want error
	}{
		{"an envelope over MaxBytes, before parsing", `{"topic":"t","event":"e","data":"` + strings.Repeat("x", 64) + `"`, Options{MaxBytes: 64}, ErrTooLarge},
		{"an empty payload", ``, Options{}, ErrInvalidMessage},
		{"a payload that is not JSON", `{"topic":"t","event":"e"`, Options{}, ErrInvalidMessage},
		{"trailing garbage", `{"topic":"t","event":"e"} x`, Options{}, ErrInvalidMessage},
		{"a JSON array", `[{"topic":"t","event":"e"}]`, Options{}, ErrInvalidMessage},
		{"a JSON string", `"{}"`, Options{}, ErrInvalidMessage},
		{"invalid UTF-8 in data", "{\"topic\":\"t\",\"event\":\"e\",\"data\":\"\xff\"}", Options{}, ErrInvalidMessage},
		{"an empty object", `{}`, Options{}, ErrInvalidMessage},
		{"keys in another case", `{"TOPIC":"t","Event":"e"}`, Options{}, ErrInvalidMessage},
		{"a numeric instanceId", `{"instanceId":1,"topic":"t","event":"e"}`, Options{}, ErrInvalidMessage},
		{"a numeric topic", `{"topic":1,"event":"e"}`, Options{}, ErrInvalidMessage},
		{"an empty topic", `{"topic":"","event":"e"}`, Options{}, ErrInvalidMessage},
		{"a topic with an escaped quote", `{"topic":"a\"b","event":"e"}`, Options{}, ErrInvalidMessage},
		{"a topic with an escaped control character", `{"topic":"a\u0000","event":"e"}`, Options{}, ErrInvalidMessage},
		{"a topic of 257 characters", `{"topic":"` + strings.Repeat("t", 257) + `","event":"e"}`, Options{}, ErrInvalidMessage},
		{"a non-ASCII topic by default", `{"topic":"café","event":"e"}`, Options{}, ErrInvalidMessage},
		{"a system topic by default", `{"topic":"__presence:room","event":"presence_diff","data":{}}`, Options{}, ErrInvalidMessage},
		{"a system topic outside the allowed patterns", `{"topic":"__signal:x","event":"e"}`, Options{SystemTopics: wire.Patterns{"__realtime"}}, ErrInvalidMessage},
		{"seq on an allowed system topic", `{"topic":"__realtime","event":"e","seq":1}`, Options{SystemTopics: wire.Patterns{"__realtime"}}, ErrInvalidMessage},
		{"a missing event", `{"topic":"t","data":1}`, Options{}, ErrInvalidMessage},
		{"an event with a control character", `{"topic":"t","event":"a\tb"}`, Options{}, ErrInvalidMessage},
		{"an event of 257 bytes", `{"topic":"t","event":"` + strings.Repeat("e", 257) + `"}`, Options{}, ErrInvalidMessage},
		{"seq 0", `{"topic":"t","event":"e","seq":0}`, Options{}, ErrInvalidMessage},
		{"a negative seq", `{"topic":"t","event":"e","seq":-1}`, Options{}, ErrInvalidMessage},
		{"a fractional seq", `{"topic":"t","event":"e","seq":1.5}`, Options{}, ErrInvalidMessage},
		{"a string seq", `{"topic":"t","event":"e","seq":"7"}`, Options{}, ErrInvalidMessage},
		{"a null seq", `{"topic":"t","event":"e","seq":null}`, Options{}, ErrInvalidMessage},
		{"a seq beyond 2^53", `{"topic":"t","event":"e","seq":9007199254740993}`, Options{}, ErrInvalidMessage},
		{"a user in the flat shape", `{"topic":"t","event":"e","user":"u"}`, Options{}, ErrInvalidMessage},
		{"a user in a batch", `{"batch":[{"topic":"t","event":"e","user":"u"}]}`, Options{}, ErrInvalidMessage},
		{"an empty user", `{"messages":[{"topic":"t","event":"e","user":""}]}`, Options{}, ErrInvalidMessage},
		{"a numeric user", `{"messages":[{"topic":"t","event":"e","user":9}]}`, Options{}, ErrInvalidMessage},
		{"seq on a direct send", `{"messages":[{"topic":"t","event":"e","user":"u","seq":4}]}`, Options{}, ErrInvalidMessage},
		{"a batch that is not an array", `{"batch":{"topic":"t","event":"e"}}`, Options{}, ErrInvalidMessage},
		{"an empty batch", `{"batch":[]}`, Options{}, ErrInvalidMessage},
		{"a batch element that is not an object", `{"batch":[{"topic":"t","event":"e"},"x"]}`, Options{}, ErrInvalidMessage},
		{"one invalid element in a batch", `{"batch":[{"topic":"t","event":"e"},{"topic":"t"}]}`, Options{}, ErrInvalidMessage},
		{"batch beside a topic", `{"topic":"t","event":"e","batch":[{"topic":"t","event":"e"}]}`, Options{}, ErrInvalidMessage},
		{"batch beside data alone", `{"data":1,"batch":[{"topic":"t","event":"e"}]}`, Options{}, ErrInvalidMessage},
		{"batch and messages together", `{"batch":[{"topic":"t","event":"e"}],"messages":[{"topic":"t","event":"e"}]}`, Options{}, ErrInvalidMessage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, msgs, err := Decode([]byte(tc.in), tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode returned %q %s %v, want %v", id, unitString(msgs), err, tc.want)
			}
			if msgs != nil {
				t.Errorf("a refused envelope returned messages: %s", unitString(msgs))
			}
		})
	}
}

// unitString prints a unit for comparisons and failure messages. Absent
// data prints as null: the contract makes nil and null one value.
func unitString(msgs []Message) string {
	var sb strings.Builder
	for _, m := range msgs {
		data := m.Data
		if data == nil {
			data = json.RawMessage("null")
		}
		fmt.Fprintf(&sb, "{%q %q %s seq=%d user=%q}", m.Topic, m.Event, data, m.Seq, m.User)
	}
	return sb.String()
}

func sameUnit(got, want []Message) bool {
	return len(got) == len(want) && unitString(got) == unitString(want)
}

func TestPrefixStartsEveryEnvelope(t *testing.T) {
	for _, id := range []string{"i1", `a"b\c`, "café"} {
		for _, msgs := range [][]Message{
			{{Topic: "t", Event: "e"}},
			{{Topic: "t", Event: "e"}, {Topic: "u", Event: "f"}},
			{{Topic: "t", Event: "e", User: "u"}},
		} {
			b, err := Encode(id, msgs, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), Prefix(id)) {
				t.Fatalf("Encode(%q) = %s, which does not start with Prefix %s", id, b, Prefix(id))
			}
		}
	}
}

// A store envelope is byte for byte the flat envelope Encode writes for
// StoreInstanceID, and decodes to the event with its seq.
func TestAppendStoreEnvelope(t *testing.T) {
	for _, m := range []Message{
		{Topic: "chat", Event: "created", Data: json.RawMessage(`{"id":1}`), Seq: 7},
		{Topic: "café", Event: "e", Seq: 9007199254740992},
	} {
		got := AppendStore([]byte("x"), m.Topic, m.Event, m.Data, m.Seq)[1:]
		opts := Options{AllowNonASCIITopics: true}
		want, err := Encode(StoreInstanceID, []Message{m}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("AppendStore = %s\nEncode      = %s", got, want)
		}
		if !strings.HasPrefix(string(got), StoreHead(m.Topic, m.Event)) {
			t.Fatalf("AppendStore = %s, which does not start with StoreHead %s", got, StoreHead(m.Topic, m.Event))
		}
		id, msgs, err := Decode(got, opts)
		if err != nil || id != StoreInstanceID || !sameUnit(msgs, []Message{m}) {
			t.Fatalf("decoding %s: %q %s %v", got, id, unitString(msgs), err)
		}
	}
}
