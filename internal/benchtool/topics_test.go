package benchtool

import "testing"

// Every topic is served by one target, the topics spread evenly over the
// targets and the connections evenly over the topics; only the
// connections that opened count as subscribers.
func TestTopicSpread(t *testing.T) {
	const n, topics, targets = 2500, 1000, 7
	s := newTopicSpread("t", topics, targets)
	if s.names[0] != "t-0" || s.names[999] != "t-999" {
		t.Fatalf("names %q … %q", s.names[0], s.names[999])
	}
	perTopic := make([]int, topics)
	targetOf := make(map[int]int)
	topicsPerTarget := make([]int, targets)
	for i := range n {
		j := s.topicOf(i)
		perTopic[j]++
		tg := s.target[j]
		if prev, ok := targetOf[j]; ok && prev != tg {
			t.Fatalf("topic %d on targets %d and %d", j, prev, tg)
		}
		if _, ok := targetOf[j]; !ok {
			topicsPerTarget[tg]++
		}
		targetOf[j] = tg
	}
	for j, c := range perTopic {
		if c < n/topics || c > n/topics+1 {
			t.Fatalf("topic %d has %d connections, want %d or %d", j, c, n/topics, n/topics+1)
		}
	}
	for tg, c := range topicsPerTarget {
		if c < topics/targets || c > topics/targets+1 {
			t.Fatalf("target %d serves %d topics, want %d or %d", tg, c, topics/targets, topics/targets+1)
		}
	}
	opened := make([]bool, n)
	for i := range opened {
		opened[i] = i != 1000 && i != 2 // connections 0 and 1000 share topic 0
	}
	s.count(opened)
	if s.subs[0] != 2 || s.subs[2] != 2 || s.subs[1] != 3 {
		t.Fatalf("subscribers of topics 0, 1, 2: %d %d %d, want 2 3 2", s.subs[0], s.subs[1], s.subs[2])
	}
}
