package replay

import (
	"hash/maphash"
	"sync"
)

// seenShards and seenPerShard bound what a store remembers: 16 × 8192
// topics, about 10 MB at most. A topic forgotten to make room is protected
// again from the next seq the process sees for it.
const (
	seenShards   = 16
	seenPerShard = 8192
)

// seen remembers, per topic, the highest seq this process saw the store
// issue: its own appends and, through Observe, those other instances
// published on the bus. It is the memory that lets a shared store's
// counters survive a loss of the store's data (docs/protocol.md §5.2): an append
// passes the remembered seq, and a counter found below it continues above
// it instead of issuing a seq a second time.
type seen struct {
	seed   maphash.Seed
	shards [seenShards]seenShard
}

type seenShard struct {
	mu   sync.Mutex
	seqs map[string]uint64
}

func newSeen() *seen {
	s := &seen{seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].seqs = make(map[string]uint64)
	}
	return s
}

func (s *seen) shard(topic string) *seenShard {
	return &s.shards[maphash.String(s.seed, topic)%seenShards]
}

// note records that topic reached seq.
func (s *seen) note(topic string, seq uint64) {
	if seq == 0 {
		return
	}
	sh := s.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if cur, ok := sh.seqs[topic]; ok {
		if seq > cur {
			sh.seqs[topic] = seq
		}
		return
	}
	if len(sh.seqs) >= seenPerShard {
		// Forget about half, in the map's random order: cheaper than an
		// LRU and only the protection of idle topics is lost.
		n := 0
		for k := range sh.seqs {
			if n++; n%2 == 0 {
				delete(sh.seqs, k)
			}
		}
	}
	sh.seqs[topic] = seq
}

// get returns the highest seq recorded for topic, 0 if none.
func (s *seen) get(topic string) uint64 {
	sh := s.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.seqs[topic]
}
