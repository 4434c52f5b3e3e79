package bus

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/caddy-realtime/realtime/extensions/wire"
)

// DefaultMaxPending is the default MemoryConfig.MaxPending.
const DefaultMaxPending = 1 << 16

// Network is an in-process broker connecting several Memory buses, as a
// Redis server connects the Redis buses of several gateways: tests, or a Go
// program running several gateways in one process, see cross-instance
// behaviour without a server. The zero Network is empty and ready to use; a
// Network must not be copied after first use.
type Network struct {
	mu sync.Mutex // serializes joins and leaves
	// members is replaced, never modified, so Publish reads it without
	// locking.
	members atomic.Pointer[[]*Memory]
}

func (n *Network) join(m *Memory) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var next []*Memory
	if cur := n.members.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, m)
	n.members.Store(&next)
}

func (n *Network) leave(m *Memory) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := n.members.Load()
	if cur == nil {
		return
	}
	next := make([]*Memory, 0, len(*cur))
	for _, o := range *cur {
		if o != m {
			next = append(next, o)
		}
	}
	n.members.Store(&next)
}

// MemoryConfig configures a Memory bus. The zero value is a bus alone on its
// instance.
type MemoryConfig struct {
	// Network connects this bus to the other members of an in-process
	// network. Default: nil, the bus is alone and Publish does nothing but
	// check ErrClosed (the single-instance gateway, where local delivery is
	// all there is).
	Network *Network

	// Handler receives the units other members publish. It is called from
	// this bus's own goroutine, one call at a time, and must not block. A
	// panic in it is not recovered (this package has no logger to report
	// it); a caller that wants to survive its own bugs recovers inside.
	// Default: nil, such units are discarded.
	Handler Handler

	// MaxPending caps the units waiting for Handler. When a slow Handler
	// lets that many pile up, further units for this member are dropped and
	// counted (Dropped), as Redis drops a subscriber whose output buffer
	// overflows; the publisher is never slowed. Default: DefaultMaxPending.
	MaxPending int
}

// Memory is the in-process Bus. Alone (no Network) it relays nothing. On a
// Network, Publish validates the unit like the Redis backend would (shape
// only: any "__" topic and any size pass), copies it once, queues it for
// every other member and returns; each member's goroutine hands its queue to
// its Handler in order. Per-publisher order holds because a unit is queued
// for every member before Publish returns.
type Memory struct {
	net        *Network
	handler    Handler
	maxPending int64

	closed  atomic.Bool
	pending atomic.Int64 // units queued or being handled
	dropped atomic.Uint64

	mu    sync.Mutex // guards queue; closed is set under it too
	queue [][]Message

	wake      chan struct{} // one slot: work was queued
	done      chan struct{} // closed by Close
	exited    chan struct{} // closed when run returns; nil when alone
	closeOnce sync.Once
}

// memoryRules is what a Memory on a Network checks: the shape of every
// message, as envelope.Encode would. System topics and size are policies
// against outside publishers, which an in-process network does not have.
var memoryRules = EnvelopeOptions{AllowNonASCIITopics: true, SystemTopics: wire.Patterns{"__*"}}

// NewMemory returns a Memory bus. On a Network it joins it and starts one
// goroutine that delivers to cfg.Handler; the caller must Close it to leave
// the network and stop that goroutine.
func NewMemory(cfg MemoryConfig) *Memory {
	m := &Memory{net: cfg.Network, handler: cfg.Handler, maxPending: int64(cfg.MaxPending)}
	if m.maxPending <= 0 {
		m.maxPending = DefaultMaxPending
	}
	if m.handler == nil {
		m.handler = func([]Message) {}
	}
	if m.net == nil {
		return m
	}
	m.wake = make(chan struct{}, 1)
	m.done = make(chan struct{})
	m.exited = make(chan struct{})
	go m.run()
	m.net.join(m)
	return m
}

// Publish implements Bus. Alone, it only checks ctx and ErrClosed.
func (m *Memory) Publish(ctx context.Context, msgs []Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.closed.Load() {
		return ErrClosed
	}
	if m.net == nil || len(msgs) == 0 {
		return nil
	}
	for i := range msgs {
		if err := memoryRules.Check(&msgs[i]); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	members := m.net.members.Load()
	if members == nil || len(*members) < 2 {
		return nil
	}
	unit := cloneUnit(msgs)
	for _, o := range *members {
		if o != m {
			o.enqueue(unit)
		}
	}
	return nil
}

// cloneUnit copies msgs and their data into memory of the bus's own, so the
// publisher may reuse its buffers; every member shares the copy read-only.
func cloneUnit(msgs []Message) []Message {
	n := 0
	for i := range msgs {
		n += len(msgs[i].Data)
	}
	buf := make([]byte, 0, n)
	out := make([]Message, len(msgs))
	for i, msg := range msgs {
		if msg.Data != nil {
			start := len(buf)
			buf = append(buf, msg.Data...)
			msg.Data = buf[start:len(buf):len(buf)]
		}
		out[i] = msg
	}
	return out
}

func (m *Memory) enqueue(unit []Message) {
	if m.pending.Add(1) > m.maxPending {
		m.pending.Add(-1)
		m.dropped.Add(1)
		return
	}
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		m.pending.Add(-1)
		return
	}
	m.queue = append(m.queue, unit)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default: // a wake-up is already pending; run takes the whole queue
	}
}

// run delivers queued units until Close. It takes the whole queue at each
// wake-up and calls the Handler outside the lock, so publishers only ever
// wait for an append.
func (m *Memory) run() {
	defer close(m.exited)
	var work [][]Message
	for {
		select {
		case <-m.done:
			return
		case <-m.wake:
		}
		m.mu.Lock()
		work, m.queue = m.queue, work[:0]
		m.mu.Unlock()
		for i, unit := range work {
			select {
			case <-m.done:
				return
			default:
			}
			m.handler(unit)
			work[i] = nil // let the unit go
			m.pending.Add(-1)
		}
	}
}

// Close implements Closer: it leaves the network, drops the units not yet
// delivered and waits until ctx ends for a Handler call in progress. It
// returns ctx's error if that call outlives ctx.
func (m *Memory) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed.Store(true)
		m.queue = nil
		m.mu.Unlock()
		if m.net != nil {
			m.net.leave(m)
			close(m.done)
		}
	})
	if m.exited == nil {
		return nil
	}
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bus: waiting for the memory bus handler: %w", ctx.Err())
	}
}

// Healthy implements Healther: a Memory reaches its network until Close.
func (m *Memory) Healthy() bool { return !m.closed.Load() }

// Dropped reports how many units this member dropped because MaxPending of
// them were already waiting for its Handler.
func (m *Memory) Dropped() uint64 { return m.dropped.Load() }

// Interface guards
var (
	_ Bus         = (*Memory)(nil)
	_ Closer      = (*Memory)(nil)
	_ Healther    = (*Memory)(nil)
	_ DropCounter = (*Memory)(nil)
)
