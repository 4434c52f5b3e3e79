package bus

import (
	"encoding/json"
	"errors"
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
			opts := EnvelopeOptions{SystemTopics: wire.Patterns{"__group:*"}}
			got, err := EncodeEnvelope("i1", tc.msgs, opts)
			if err != nil {
				t.Fatalf("EncodeEnvelope: %v", err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			id, msgs, err := DecodeEnvelope(got, opts)
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
		opts EnvelopeOptions
		want error
	}{
		{"an empty instance id", "", []Message{ok}, EnvelopeOptions{}, ErrInvalidMessage},
		{"an instance id that is not UTF-8", "\xff", []Message{ok}, EnvelopeOptions{}, ErrInvalidMessage},
		{"no messages", "i", nil, EnvelopeOptions{}, ErrInvalidMessage},
		{"an invalid topic", "i", []Message{ok, {Topic: "a\"b", Event: "e"}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"a non-ASCII topic unless allowed", "i", []Message{{Topic: "café", Event: "e"}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"a system topic by default", "i", []Message{{Topic: "__presence:x", Event: "e"}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"a system topic outside the allowed patterns", "i", []Message{{Topic: "__signal:x", Event: "e"}}, EnvelopeOptions{SystemTopics: wire.Patterns{"__group:*"}}, ErrInvalidMessage},
		{"an invalid event", "i", []Message{{Topic: "t", Event: "a\x01"}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"data that is not JSON", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`{`)}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"two JSON values as data", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`1 2`)}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"data with invalid UTF-8", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage("\"\xc3\"")}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"seq on a system topic", "i", []Message{{Topic: "__group:x", Event: "e", Seq: 2}}, EnvelopeOptions{SystemTopics: wire.Patterns{"__*"}}, ErrInvalidMessage},
		{"seq on a direct send", "i", []Message{{Topic: "t", Event: "e", Seq: 2, User: "u"}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"seq beyond 2^53", "i", []Message{{Topic: "t", Event: "e", Seq: 1<<53 + 1}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"a user that is not UTF-8", "i", []Message{{Topic: "t", Event: "e", User: "\xff"}}, EnvelopeOptions{}, ErrInvalidMessage},
		{"an envelope over MaxBytes", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`"` + strings.Repeat("x", 100) + `"`)}}, EnvelopeOptions{MaxBytes: 100}, ErrTooLarge},
		{"an envelope over the default cap", "i", []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`"` + strings.Repeat("x", DefaultMaxEnvelope) + `"`)}}, EnvelopeOptions{}, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeEnvelope(tc.id, tc.msgs, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("EncodeEnvelope returned %.60q, %v; want %v", b, err, tc.want)
			}
		})
	}
}

func TestEncodeEnvelopeFitsExactlyAtMaxBytes(t *testing.T) {
	m := []Message{{Topic: "t", Event: "e", Data: json.RawMessage(`"xxxx"`)}}
	b, err := EncodeEnvelope("i", m, EnvelopeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EncodeEnvelope("i", m, EnvelopeOptions{MaxBytes: len(b)}); err != nil {
		t.Fatalf("an envelope of exactly MaxBytes was refused: %v", err)
	}
	if _, _, err := DecodeEnvelope(b, EnvelopeOptions{MaxBytes: len(b)}); err != nil {
		t.Fatalf("an envelope of exactly MaxBytes was refused: %v", err)
	}
	if _, _, err := DecodeEnvelope(b, EnvelopeOptions{MaxBytes: len(b) - 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("one byte over MaxBytes: %v, want ErrTooLarge", err)
	}
}

func TestDecodeEnvelopeAccepts(t *testing.T) {
	lax := EnvelopeOptions{AllowNonASCIITopics: true, SystemTopics: wire.Patterns{"__realtime", "__group:*"}}
	for _, tc := range []struct {
		name string
		in   string
		opts EnvelopeOptions
		id   string
		want []Message
	}{
		{
			"the reference package's flat envelope",
			`{"instanceId":"9f86d081884c7d65","topic":"chat","event":"created","data":{"id":1,"text":"hi"}}`,
			EnvelopeOptions{}, "9f86d081884c7d65",
			[]Message{{Topic: "chat", Event: "created", Data: json.RawMessage(`{"id":1,"text":"hi"}`)}},
		},
		{
			"the reference package's batch envelope",
			`{"instanceId":"x","batch":[{"topic":"a","event":"e","data":1},{"topic":"b","event":"f","data":[true]}]}`,
			EnvelopeOptions{}, "x",
			[]Message{{Topic: "a", Event: "e", Data: json.RawMessage(`1`)}, {Topic: "b", Event: "f", Data: json.RawMessage(`[true]`)}},
		},
		{
			"an outside publisher without instanceId or data",
			`{"topic":"t","event":"e"}`,
			EnvelopeOptions{}, "",
			[]Message{{Topic: "t", Event: "e"}},
		},
		{
			"data keeps its inner bytes; whitespace around tokens goes",
			"\n{ \"topic\" : \"t\" ,\t\"event\":\"e\", \"data\" : { \"b\" : 1.50 , \"a\" : 9007199254740993 } }\n",
			EnvelopeOptions{}, "",
			[]Message{{Topic: "t", Event: "e", Data: json.RawMessage(`{ "b" : 1.50 , "a" : 9007199254740993 }`)}},
		},
		{
			"escaped keys and values decode as in JSON.parse",
			`{"\u0074opic":"ch\u0061t","event":"e\u00e9","data":"\ud83d\ude00"}`,
			EnvelopeOptions{}, "",
			[]Message{{Topic: "chat", Event: "eé", Data: json.RawMessage(`"\ud83d\ude00"`)}},
		},
		{
			"a repeated member counts once, the last winning",
			`{"topic":"first","event":"e","topic":"last"}`,
			EnvelopeOptions{}, "",
			[]Message{{Topic: "last", Event: "e"}},
		},
		{
			"unknown members are ignored",
			`{"instanceId":"x","topic":"t","event":"e","data":null,"extra":{"topic":"no"},"ts":1}`,
			EnvelopeOptions{}, "x",
			[]Message{{Topic: "t", Event: "e", Data: json.RawMessage(`null`)}},
		},
		{
			"seq as an integer, also written 7.0",
			`{"batch":[{"topic":"t","event":"e","seq":7},{"topic":"t","event":"e","seq":8.0},{"topic":"t","event":"e","seq":9007199254740992}]}`,
			EnvelopeOptions{}, "",
			[]Message{{Topic: "t", Event: "e", Seq: 7}, {Topic: "t", Event: "e", Seq: 8}, {Topic: "t", Event: "e", Seq: 1 << 53}},
		},
		{
			"direct sends in messages, beside topic messages",
			`{"instanceId":"x","messages":[{"topic":"dm","event":"e","user":"u:1"},{"topic":"t","event":"e","seq":3}]}`,
			EnvelopeOptions{}, "x",
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
			id, msgs, err := DecodeEnvelope([]byte(tc.in), tc.opts)
			if err != nil {
				t.Fatalf("DecodeEnvelope: %v", err)
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
		opts EnvelopeOptions
		want error
	}{
		{"an envelope over MaxBytes, before parsing", `{"topic":"t","event":"e","data":"` + strings.Repeat("x", 64) + `"`, EnvelopeOptions{MaxBytes: 64}, ErrTooLarge},
		{"an empty payload", ``, EnvelopeOptions{}, ErrInvalidMessage},
		{"a payload that is not JSON", `{"topic":"t","event":"e"`, EnvelopeOptions{}, ErrInvalidMessage},
		{"trailing garbage", `{"topic":"t","event":"e"} x`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a JSON array", `[{"topic":"t","event":"e"}]`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a JSON string", `"{}"`, EnvelopeOptions{}, ErrInvalidMessage},
		{"invalid UTF-8 in data", "{\"topic\":\"t\",\"event\":\"e\",\"data\":\"\xff\"}", EnvelopeOptions{}, ErrInvalidMessage},
		{"an empty object", `{}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"keys in another case", `{"TOPIC":"t","Event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a numeric instanceId", `{"instanceId":1,"topic":"t","event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a numeric topic", `{"topic":1,"event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"an empty topic", `{"topic":"","event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a topic with an escaped quote", `{"topic":"a\"b","event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a topic with an escaped control character", `{"topic":"a\u0000","event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a topic of 257 characters", `{"topic":"` + strings.Repeat("t", 257) + `","event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a non-ASCII topic by default", `{"topic":"café","event":"e"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a system topic by default", `{"topic":"__presence:room","event":"presence_diff","data":{}}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a system topic outside the allowed patterns", `{"topic":"__signal:x","event":"e"}`, EnvelopeOptions{SystemTopics: wire.Patterns{"__realtime"}}, ErrInvalidMessage},
		{"seq on an allowed system topic", `{"topic":"__realtime","event":"e","seq":1}`, EnvelopeOptions{SystemTopics: wire.Patterns{"__realtime"}}, ErrInvalidMessage},
		{"a missing event", `{"topic":"t","data":1}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"an event with a control character", `{"topic":"t","event":"a\tb"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"an event of 257 bytes", `{"topic":"t","event":"` + strings.Repeat("e", 257) + `"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"seq 0", `{"topic":"t","event":"e","seq":0}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a negative seq", `{"topic":"t","event":"e","seq":-1}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a fractional seq", `{"topic":"t","event":"e","seq":1.5}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a string seq", `{"topic":"t","event":"e","seq":"7"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a null seq", `{"topic":"t","event":"e","seq":null}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a seq beyond 2^53", `{"topic":"t","event":"e","seq":9007199254740993}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a user in the flat shape", `{"topic":"t","event":"e","user":"u"}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a user in a batch", `{"batch":[{"topic":"t","event":"e","user":"u"}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"an empty user", `{"messages":[{"topic":"t","event":"e","user":""}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a numeric user", `{"messages":[{"topic":"t","event":"e","user":9}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"seq on a direct send", `{"messages":[{"topic":"t","event":"e","user":"u","seq":4}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a batch that is not an array", `{"batch":{"topic":"t","event":"e"}}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"an empty batch", `{"batch":[]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"a batch element that is not an object", `{"batch":[{"topic":"t","event":"e"},"x"]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"one invalid element in a batch", `{"batch":[{"topic":"t","event":"e"},{"topic":"t"}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"batch beside a topic", `{"topic":"t","event":"e","batch":[{"topic":"t","event":"e"}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"batch beside data alone", `{"data":1,"batch":[{"topic":"t","event":"e"}]}`, EnvelopeOptions{}, ErrInvalidMessage},
		{"batch and messages together", `{"batch":[{"topic":"t","event":"e"}],"messages":[{"topic":"t","event":"e"}]}`, EnvelopeOptions{}, ErrInvalidMessage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, msgs, err := DecodeEnvelope([]byte(tc.in), tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("DecodeEnvelope returned %q %s %v, want %v", id, unitString(msgs), err, tc.want)
			}
			if msgs != nil {
				t.Errorf("a refused envelope returned messages: %s", unitString(msgs))
			}
		})
	}
}
