package benchtool

import "strconv"

// topicSpread lays out the fanout scenario over several topics (-topics):
// connection i subscribes to topic i mod K, and every subscriber of topic j
// connects to target j mod T, so each topic is served by exactly one
// instance and the topics are spread evenly over the instances. Publishes
// take the topics in turn. With instances sharing a bus, what an instance
// receives for topics it does not serve is the bus's routing cost.
type topicSpread struct {
	names  []string // topic j's name: <base>-<j>
	target []int    // topic j's target
	subs   []int64  // topic j's subscribers, once connected
}

func newTopicSpread(base string, topics, targets int) *topicSpread {
	s := &topicSpread{names: make([]string, topics), target: make([]int, topics), subs: make([]int64, topics)}
	for j := range topics {
		s.names[j] = base + "-" + strconv.Itoa(j)
		s.target[j] = j % targets
	}
	return s
}

// topicOf returns the topic of connection i.
func (s *topicSpread) topicOf(i int) int { return i % len(s.names) }

// count records the subscribers that connected: opened[i] tells whether
// connection i did.
func (s *topicSpread) count(opened []bool) {
	clear(s.subs)
	for i, ok := range opened {
		if ok {
			s.subs[s.topicOf(i)]++
		}
	}
}
