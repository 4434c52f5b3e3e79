package envelope

import (
	"encoding/json"
	"fmt"
	"testing"
)

func benchUnit(n int) []Message {
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Topic: "chat:room-42", Event: "created", Data: json.RawMessage(fmt.Sprintf(`{"id":%d,"text":"hello, world","author":{"id":"u1","name":"Ann"}}`, i)), Seq: uint64(i + 1)}
	}
	return msgs
}

func BenchmarkEncodeEnvelope_1(b *testing.B)  { benchEncode(b, 1) }
func BenchmarkEncodeEnvelope_50(b *testing.B) { benchEncode(b, 50) }
func BenchmarkDecodeEnvelope_1(b *testing.B)  { benchDecode(b, 1) }
func BenchmarkDecodeEnvelope_50(b *testing.B) { benchDecode(b, 50) }

func benchEncode(b *testing.B, n int) {
	msgs := benchUnit(n)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode("9f86d081884c7d65", msgs, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchDecode(b *testing.B, n int) {
	env, err := Encode("9f86d081884c7d65", benchUnit(n), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(env)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Decode(env, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
