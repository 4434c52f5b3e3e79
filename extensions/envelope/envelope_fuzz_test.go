package envelope

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// FuzzDecodeEnvelope feeds the decoder arbitrary bus payloads, which any
// process with Redis access can publish. It must never panic, must refuse
// with one of its sentinels, and whatever it accepts must survive
// re-encoding unchanged, data byte for byte.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, seed := range []string{
		// The reference package's envelopes, as captured from its relay.
		`{"instanceId":"9f86d081884c7d65","topic":"chat","event":"created","data":{"id":1,"text":"hi"}}`,
		`{"instanceId":"9f86d081884c7d65","topic":"todos","event":"updated","data":[{"id":3,"done":true}]}`,
		`{"instanceId":"4e07408562bedb8b","batch":[{"topic":"a","event":"e","data":1},{"topic":"b","event":"f","data":null}]}`,
		// The gateway's own.
		`{"instanceId":"c0ffee","topic":"chat","event":"created","data":{"id":1},"seq":7}`,
		`{"instanceId":"c0ffee","batch":[{"topic":"chat","event":"x","data":"\u00e9","seq":8},{"topic":"__group:lobby","event":"join","data":{"role":"member","count":2}}]}`,
		`{"instanceId":"c0ffee","messages":[{"topic":"dm","event":"new","data":{"m":1},"user":"u\"9"}]}`,
		`{"instanceId":"c0ffee","topic":"__realtime","event":"degraded","data":{"at":1732665600000}}`,
		// Outside publishers and near misses.
		`{"topic":"t","event":"e"}`,
		`{"\u0074opic":"t","event":"e","topic":"u","data":9007199254740993}`,
		`{"topic":"t","event":"e","seq":1e2}`,
		`{"batch":[]}`,
		` {"topic":"café","event":"e","data": { "a" : [ ] } } `,
		"{\"topic\":\"t\",\"event\":\"e\",\"data\":\"\xff\"}",
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, lax bool) {
		opts := Options{MaxBytes: 4096}
		if lax {
			opts = Options{MaxBytes: 4096, AllowNonASCIITopics: true, SystemTopics: wire.Patterns{"__*"}}
		}
		id, msgs, err := Decode(in, opts)
		if err != nil {
			if !errors.Is(err, ErrInvalidMessage) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("refused with an unexpected error: %v", err)
			}
			if msgs != nil || id != "" {
				t.Fatalf("refused, yet returned %q %s", id, unitString(msgs))
			}
			return
		}
		if len(msgs) == 0 {
			t.Fatal("accepted an envelope without messages")
		}
		for i, m := range msgs {
			if len(m.Data) > 0 && !bytes.Contains(in, m.Data) {
				t.Fatalf("message %d: data %q is not a part of the input", i, m.Data)
			}
		}
		if id == "" {
			id = "fuzz"
		}
		opts.MaxBytes = 1 << 20 // re-encoding may escape more than the input did
		out, err := Encode(id, msgs, opts)
		if err != nil {
			t.Fatalf("accepted %s but cannot re-encode it: %v", unitString(msgs), err)
		}
		id2, msgs2, err := Decode(out, opts)
		if err != nil || id2 != id || !sameUnit(msgs2, msgs) {
			t.Fatalf("round trip changed the envelope:\n in  %q %s\n out %s\n got %q %s %v", id, unitString(msgs), out, id2, unitString(msgs2), err)
		}
	})
}
