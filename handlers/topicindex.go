package handlers

import "sync"

// topicState is embedded in the per-topic state of presence and cursors:
// the lock that serializes a topic's changes with its frames, and whether
// the index has dropped it.
type topicState struct {
	mu   sync.Mutex
	dead bool // released from its index: holders must look it up again
}

func (s *topicState) state() *topicState { return s }

// topicIndex maps topic names to per-topic state that lives while someone
// receives the topic's frames or changes are pending.
//
// Lock order: a state's mu, then the index's mu (release runs with the
// state locked); the index's mu is never held while taking a state's mu.
type topicIndex[T interface{ state() *topicState }] struct {
	mu sync.Mutex
	m  map[string]T
}

// lock returns name's state locked, creating it with create if needed; it
// never returns a state that release has dropped.
func (x *topicIndex[T]) lock(name string, create func() T) T {
	for {
		v := x.get(name, create)
		st := v.state()
		st.mu.Lock()
		if !st.dead {
			return v
		}
		st.mu.Unlock()
	}
}

func (x *topicIndex[T]) get(name string, create func() T) T {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.m == nil {
		x.m = make(map[string]T)
	}
	v, ok := x.m[name]
	if !ok {
		v = create()
		x.m[name] = v
	}
	return v
}

// peek returns name's state if the index has one (unlocked).
func (x *topicIndex[T]) peek(name string) (T, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v, ok := x.m[name]
	return v, ok
}

// drop removes v, which the caller holds locked, from the index.
func (x *topicIndex[T]) drop(name string, v T) {
	x.mu.Lock()
	if cur, ok := x.m[name]; ok && any(cur) == any(v) {
		delete(x.m, name)
	}
	x.mu.Unlock()
	v.state().dead = true
}

// all returns every state (unlocked), for sweeps that then lock each.
func (x *topicIndex[T]) all() []T {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]T, 0, len(x.m))
	for _, v := range x.m {
		out = append(out, v)
	}
	return out
}
