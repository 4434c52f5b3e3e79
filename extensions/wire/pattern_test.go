package wire

import (
	"strings"
	"testing"
)

func TestPatternMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		pattern Pattern
		topic   string
		want    bool
	}{
		{"a prefix pattern matches a topic under it", "chat:*", "chat:1", true},
		{"a star matches across '/'", "chat:*", "chat:a/b", true},
		{"a star matches across ':'", "chat:*", "chat:a:b", true},
		{"a star matches the empty run", "chat:*", "chat:", true},
		{"a prefix pattern does not match the bare prefix without its separator", "chat:*", "chat", false},
		{"a prefix pattern is anchored at the start", "chat:*", "xchat:1", false},
		{"a prefix pattern is case-sensitive", "chat:*", "Chat:1", false},
		{"a lone star matches every topic", "*", "anything:at/all", true},
		{"a lone star matches a system topic", "*", "__presence:room", true},
		{"a lone star matches the empty string", "*", "", true},
		{"consecutive stars behave as one", "**", "abc", true},
		{"a suffix pattern matches a topic ending with it", "*:admin", "room:1:admin", true},
		{"a suffix pattern is anchored at the end", "*:admin", "room:admin:1", false},
		{"stars in the middle match runs in order", "a*b*c", "a-b-c", true},
		{"stars in the middle match empty runs", "a*b*c", "abc", true},
		{"stars in the middle backtrack over false starts", "a*b*c", "abbbcbc", true},
		{"stars in the middle need every literal", "a*b*c", "ac", false},
		{"stars in the middle need the literals in order", "a*b*c", "acb", false},
		{"stars in the middle are anchored at the end", "a*b*c", "abcd", false},
		{"a trailing literal after backtracking must end the topic", "a*b", "abab", true},
		{"an exact pattern matches only itself", "lobby", "lobby", true},
		{"an exact pattern does not match a longer topic", "lobby", "lobby2", false},
		{"an exact pattern does not match a shorter topic", "lobby", "lobb", false},
		{"an exact pattern does not match a topic with a prefix", "lobby", "xlobby", false},
		{"the empty pattern matches only the empty string", "", "", true},
		{"the empty pattern does not match a topic", "", "a", false},
		{"a pattern does not match the empty string unless it is all stars", "a*", "", false},
		{"non-ASCII bytes match themselves", "café:*", "café:1", true},
		{"a star covers multibyte characters", "*:1", "聊天:1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.pattern.Match(tt.topic); got != tt.want {
				t.Errorf("Pattern(%q).Match(%q) = %v, want %v", tt.pattern, tt.topic, got, tt.want)
			}
		})
	}
}

// TestPatternMatchWorstCase checks that a pathological pattern, which
// would be exponential for a naive recursive matcher, finishes and answers
// correctly.
func TestPatternMatchWorstCase(t *testing.T) {
	t.Parallel()
	p := Pattern(strings.Repeat("a*", 64) + "b")
	topic := strings.Repeat("a", 256)
	if p.Match(topic) {
		t.Errorf("Pattern(%q).Match(%q) = true, want false", p, topic)
	}
	if !p.Match(topic + "b") {
		t.Errorf("Pattern(%q).Match(%q) = false, want true", p, topic+"b")
	}
}

func TestPatternMatchDoesNotAllocate(t *testing.T) {
	p := Pattern("a*b*c")
	matched := false
	allocs := testing.AllocsPerRun(100, func() {
		matched = p.Match("a-long-topic-b-with-c")
	})
	if !matched {
		t.Fatal(`"a*b*c" must match "a-long-topic-b-with-c"`)
	}
	if allocs != 0 {
		t.Errorf("Pattern.Match allocated %v times per run, want 0", allocs)
	}
}

func TestPatternsMatch(t *testing.T) {
	t.Parallel()
	ps := Patterns{"chat:admin", "chat:*", "*:1", "*"}
	tests := []struct {
		name     string
		patterns Patterns
		topic    string
		want     int
	}{
		{"an exact pattern listed first wins over a broader one", ps, "chat:admin", 0},
		{"the first matching pattern wins", ps, "chat:1", 1},
		{"a later pattern matches when earlier ones do not", ps, "room:1", 2},
		{"the catch-all matches what nothing else does", ps, "lobby", 3},
		{"no match gives -1", Patterns{"chat:*", "room:*"}, "lobby", -1},
		{"an empty list gives -1", Patterns{}, "chat", -1},
		{"a nil list gives -1", nil, "chat", -1},
		{"a broader pattern listed first shadows an exact one", Patterns{"*", "chat"}, "chat", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.patterns.Match(tt.topic); got != tt.want {
				t.Errorf("%q.Match(%q) = %d, want %d", tt.patterns, tt.topic, got, tt.want)
			}
		})
	}
}
