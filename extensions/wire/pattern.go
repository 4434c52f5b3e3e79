package wire

// Pattern is a topic pattern from configuration: '*' matches any run of
// characters (including ':' and '/', which topics use freely) and every other
// character matches itself. "chat:*" matches "chat:1" and "chat:a/b"; "*"
// matches every topic; "lobby" matches only "lobby".
type Pattern string

// Match reports whether topic matches p. It runs in O(len(p)·len(topic)) at
// worst and allocates nothing.
func (p Pattern) Match(topic string) bool {
	pat := string(p)
	pi, ti := 0, 0
	star, mark := -1, 0
	for ti < len(topic) {
		switch {
		case pi < len(pat) && pat[pi] == '*':
			star, mark = pi, ti
			pi++
		case pi < len(pat) && pat[pi] == topic[ti]:
			pi++
			ti++
		case star >= 0:
			pi = star + 1
			mark++
			ti = mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == '*' {
		pi++
	}
	return pi == len(pat)
}

// Patterns is an ordered list of patterns; the first match wins.
type Patterns []Pattern

// Match reports the index of the first pattern matching topic, or -1.
func (ps Patterns) Match(topic string) int {
	for i, p := range ps {
		if p.Match(topic) {
			return i
		}
	}
	return -1
}
