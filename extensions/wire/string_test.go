package wire

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestAppendString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"an empty string", "", `""`},
		{"plain ASCII is copied", "user-42", `"user-42"`},
		{"quote and backslash are escaped", `a"b\c`, `"a\"b\\c"`},
		{"control characters use \\u00XX, newline included", "a\nb\tc\x00\x1f", `"a\u000ab\u0009c\u0000\u001f"`},
		{"DEL is not a control character in JSON", "a\x7fb", "\"a\x7fb\""},
		{"no HTML escaping", "<a href='x'>&</a>", `"<a href='x'>&</a>"`},
		{"valid non-ASCII is copied", "café 聊天 😀", `"café 聊天 😀"`},
		{"U+2028 and U+2029 stay raw, as JSON.stringify writes them", "a\u2028b\u2029", "\"a\u2028b\u2029\""},
		{"U+FFFD itself is copied", "\ufffd", "\"\ufffd\""},
		{"each invalid byte becomes \\ufffd", "a\xffb\xfe", `"a\ufffdb\ufffd"`},
		{"a truncated sequence is replaced byte by byte", "\xe2\x82", `"\ufffd\ufffd"`},
		{"an encoded surrogate is invalid UTF-8", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := AppendString([]byte("x:"), tt.in)
			if string(got) != "x:"+tt.want {
				t.Fatalf("AppendString(%q) = %s, want %s", tt.in, got[2:], tt.want)
			}
		})
	}
}

// AppendString decodes to what encoding/json's encoding decodes to, for any
// input, and its output is valid UTF-8 JSON.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", `"\`, "\x00\n\x1f", "<>&", "\u2028", "\xff", "\xed\xa0\x80", "é😀", "\xe2\x82"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := AppendString(nil, s)
		if !json.Valid(got) || !bytes.Equal(bytes.ToValidUTF8(got, nil), got) {
			t.Fatalf("AppendString(%q) = %q: not valid UTF-8 JSON", s, got)
		}
		var back, want string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		ref, _ := json.Marshal(s)
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if back != want {
			t.Fatalf("AppendString(%q) decodes to %q, encoding/json's encoding to %q", s, back, want)
		}
	})
}

var benchStrings = map[string]string{
	"key":     "user-9f86d081884c7d65",
	"escapes": `say "hi"` + "\n" + `to \them`,
	"unicode": strings.Repeat("café 聊天 😀 ", 4),
}

func BenchmarkAppendString(b *testing.B) {
	for name, s := range benchStrings {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 256)
			for b.Loop() {
				buf = AppendString(buf[:0], s)
			}
		})
	}
}

// BenchmarkAppendStringEncodingJSON is the baseline for AppendString: the
// standard library's way to encode one string without HTML escaping, a
// json.Encoder per call.
func BenchmarkAppendStringEncodingJSON(b *testing.B) {
	for name, s := range benchStrings {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 256)
			for b.Loop() {
				var w bytes.Buffer
				enc := json.NewEncoder(&w)
				enc.SetEscapeHTML(false)
				_ = enc.Encode(s)
				buf = append(buf[:0], bytes.TrimRight(w.Bytes(), "\n")...)
			}
		})
	}
}
