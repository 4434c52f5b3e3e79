package wire

import (
	"strings"
	"testing"
)

func TestValidTopic(t *testing.T) {
	t.Parallel()
	printable := make([]byte, 0, 0x7f-0x20)
	for c := byte(0x20); c < 0x7f; c++ {
		if c != '"' && c != '\\' {
			printable = append(printable, c)
		}
	}
	emoji := "😀" // U+1F600: one character, two UTF-16 code units, four bytes
	tests := []struct {
		name     string
		topic    string
		ascii    bool // result with the default configuration
		nonASCII bool // result with allow_non_ascii_topics
	}{
		{"a short topic is valid", "chat", true, true},
		{"a one-character topic is valid", "a", true, true},
		{"the empty topic is invalid", "", false, false},
		{"a topic may contain ':' and '/'", "chat:room/1", true, true},
		{"a topic may contain a space", "a b", true, true},
		{"a system topic is still a valid topic", "__presence:room", true, true},
		{"every printable ASCII character but quote and backslash is valid", string(printable), true, true},
		{"256 printable ASCII characters are accepted (§9.9)", strings.Repeat("x", 256), true, true},
		{"257 printable ASCII characters are rejected (§9.9)", strings.Repeat("x", 257), false, false},
		{"é is rejected by default and accepted with non-ASCII (§9.9)", "café", false, true},
		{"CJK is rejected by default and accepted with non-ASCII", "聊天", false, true},
		{"an astral character is rejected by default and accepted with non-ASCII", emoji, false, true},
		{"a double quote is rejected in both modes", `a"b`, false, false},
		{"a backslash is rejected in both modes", `a\b`, false, false},
		{"NUL is rejected in both modes", "a\x00b", false, false},
		{"a tab is rejected in both modes", "a\tb", false, false},
		{"a newline is rejected in both modes", "a\nb", false, false},
		{"unit separator 0x1F is rejected in both modes", "a\x1fb", false, false},
		{"DEL is rejected in both modes", "a\x7fb", false, false},
		{"C1 control U+0080 is rejected in both modes", "a\u0080b", false, false},
		{"C1 control U+009F is rejected in both modes", "a\u009fb", false, false},
		{"no-break space U+00A0, the first character after C1, is accepted with non-ASCII", "a\u00a0b", false, true},
		{"invalid UTF-8 is rejected in both modes", "a\xffb", false, false},
		{"a truncated UTF-8 sequence is rejected in both modes", "caf\xc3", false, false},
		{"a UTF-8-encoded surrogate is rejected in both modes", "a\xed\xa0\x80b", false, false},
		{"256 two-byte characters count as 256 units", strings.Repeat("é", 256), false, true},
		{"257 two-byte characters count as 257 units", strings.Repeat("é", 257), false, false},
		{"256 three-byte characters count as 256 units", strings.Repeat("聊", 256), false, true},
		{"128 astral characters are 256 UTF-16 units and accepted", strings.Repeat(emoji, 128), false, true},
		{"129 astral characters are 258 UTF-16 units and rejected", strings.Repeat(emoji, 129), false, false},
		{"255 ASCII characters and one astral character are 257 units and rejected", strings.Repeat("x", 255) + emoji, false, false},
		{"254 ASCII characters and one astral character are 256 units and accepted", strings.Repeat("x", 254) + emoji, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := ValidTopic(tt.topic, false); got != tt.ascii {
				t.Errorf("ValidTopic(%q, false) = %v, want %v", tt.topic, got, tt.ascii)
			}
			if got := ValidTopic(tt.topic, true); got != tt.nonASCII {
				t.Errorf("ValidTopic(%q, true) = %v, want %v", tt.topic, got, tt.nonASCII)
			}
		})
	}
}

// TestValidTopicRejectsEveryControlCharacter walks every C0 control, DEL and
// every C1 control: none is ever a valid topic character (§9.9).
func TestValidTopicRejectsEveryControlCharacter(t *testing.T) {
	t.Parallel()
	var controls []rune
	for r := rune(0); r < 0x20; r++ {
		controls = append(controls, r)
	}
	controls = append(controls, 0x7f)
	for r := rune(0x80); r < 0xa0; r++ {
		controls = append(controls, r)
	}
	for _, r := range controls {
		topic := "a" + string(r) + "b"
		if ValidTopic(topic, false) || ValidTopic(topic, true) {
			t.Errorf("ValidTopic(%q) accepted control character U+%04X", topic, r)
		}
	}
}

func TestValidEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		event string
		want  bool
	}{
		{"a plain event name is valid", "created", true},
		{"punctuation is allowed", "user:joined/v2", true},
		{"a space is allowed", "a b", true},
		{"non-ASCII characters are allowed", "créé", true},
		{"an astral character is allowed", "😀", true},
		{"256 bytes are accepted", strings.Repeat("e", 256), true},
		{"257 bytes are rejected", strings.Repeat("e", 257), false},
		{"length counts bytes: 128 two-byte characters are 256 bytes and accepted", strings.Repeat("é", 128), true},
		{"length counts bytes: 129 two-byte characters are 258 bytes and rejected", strings.Repeat("é", 129), false},
		{"the empty event is invalid", "", false},
		{"a double quote is rejected", `a"b`, false},
		{"a backslash is rejected", `a\b`, false},
		{"NUL is rejected", "a\x00b", false},
		{"a newline is rejected", "a\nb", false},
		{"DEL is rejected", "a\x7fb", false},
		{"a C1 control is rejected", "a\u0085b", false},
		{"invalid UTF-8 is rejected", "a\xffb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := ValidEvent(tt.event); got != tt.want {
				t.Errorf("ValidEvent(%q) = %v, want %v", tt.event, got, tt.want)
			}
		})
	}
}

func TestIsSystem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		topic string
		want  bool
	}{
		{"a presence topic is a system topic", "__presence:room", true},
		{"a cursor topic is a system topic", "__cursor:canvas", true},
		{"a group topic is a system topic", "__group:lobby", true},
		{"a replay topic is a system topic", "__replay:chat", true},
		{"the health topic is a system topic", HealthTopic, true},
		{"a bare double underscore is a system topic", "__", true},
		{"any other double-underscore name is reserved", "__x", true},
		{"a plain topic is not a system topic", "chat", false},
		{"a single leading underscore is not a system topic", "_x", false},
		{"a single underscore is not a system topic", "_", false},
		{"underscores later in the name do not count", "a__b", false},
		{"the empty string is not a system topic", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsSystem(tt.topic); got != tt.want {
				t.Errorf("IsSystem(%q) = %v, want %v", tt.topic, got, tt.want)
			}
		})
	}
}

func TestSystemPrefixesAreSystemTopics(t *testing.T) {
	t.Parallel()
	for _, p := range []string{SystemPrefix, PresencePrefix, CursorPrefix, GroupPrefix, ReplayPrefix, HealthTopic} {
		if !IsSystem(p) || !strings.HasPrefix(p, SystemPrefix) {
			t.Errorf("%q is not in the system namespace", p)
		}
		if !ValidTopic(p, false) {
			t.Errorf("system prefix %q is not a valid topic", p)
		}
	}
}
