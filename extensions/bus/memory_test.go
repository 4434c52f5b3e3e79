package bus

import (
	"context"
	"errors"
	"testing"
)

func TestMemoryAloneRelaysNothing(t *testing.T) {
	m := NewMemory(MemoryConfig{Handler: func([]Message) { t.Error("Handler called on a bus alone") }})
	// Alone, Publish does not even validate: the hub already did, and
	// nothing crosses a boundary.
	if err := m.Publish(context.Background(), []Message{{Topic: "x"}}); err != nil {
		t.Fatalf("Publish alone: %v", err)
	}
	if !m.Healthy() {
		t.Error("not Healthy before Close")
	}
	mustClose(t, m)
	if err := m.Publish(context.Background(), []Message{msg("x", 0)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close returned %v, want ErrClosed", err)
	}
}

func TestMemoryDeliversToEveryOtherMember(t *testing.T) {
	var net Network
	ha, recvA := recorder(t, 8)
	hb, recvB := recorder(t, 8)
	hc, recvC := recorder(t, 8)
	a := NewMemory(MemoryConfig{Network: &net, Handler: ha})
	b := NewMemory(MemoryConfig{Network: &net, Handler: hb})
	c := NewMemory(MemoryConfig{Network: &net, Handler: hc})
	defer mustClose(t, a, b)

	mustPublish(t, a, msg("all", 1))
	expectUnit(t, recvB, msg("all", 1))
	expectUnit(t, recvC, msg("all", 1))

	mustClose(t, c)
	mustPublish(t, b, msg("all", 2))
	expectUnit(t, recvA, msg("all", 2))
	// c left the network before b published, so nothing was queued for it.
	select {
	case unit := <-recvC:
		t.Fatalf("closed member received %s", unitString(unit))
	default:
	}
}

// blockingHandler returns a Handler that reports each call on started and
// then waits for release, standing in for a Handler that breaks the
// must-not-block contract.
func blockingHandler() (h Handler, started <-chan []Message, release chan<- struct{}) {
	s := make(chan []Message, 16)
	r := make(chan struct{})
	return func(msgs []Message) {
		s <- msgs
		<-r
	}, s, r
}

func TestMemoryDropsUnitsBeyondMaxPending(t *testing.T) {
	var net Network
	h, started, release := blockingHandler()
	a := NewMemory(MemoryConfig{Network: &net})
	b := NewMemory(MemoryConfig{Network: &net, Handler: h, MaxPending: 2})
	defer mustClose(t, a, b)

	// The first unit occupies the Handler and the second waits: both count
	// as pending, so the next two are dropped without slowing the publisher.
	for i := range 4 {
		mustPublish(t, a, msg("slow", i))
	}
	if got := b.Dropped(); got != 2 {
		t.Fatalf("Dropped() = %d, want 2", got)
	}
	expectUnit(t, started, msg("slow", 0))
	release <- struct{}{}
	expectUnit(t, started, msg("slow", 1))
	release <- struct{}{}

	// With room again, units flow.
	mustPublish(t, a, msg("slow", 4))
	expectUnit(t, started, msg("slow", 4))
	release <- struct{}{}
}

func TestMemoryCloseWaitsForTheHandler(t *testing.T) {
	var net Network
	h, started, release := blockingHandler()
	a := NewMemory(MemoryConfig{Network: &net})
	b := NewMemory(MemoryConfig{Network: &net, Handler: h})
	defer mustClose(t, a)

	mustPublish(t, a, msg("close", 0), msg("close", 1))
	mustPublish(t, a, msg("close", 2))
	expectUnit(t, started, msg("close", 0), msg("close", 1))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close during a Handler call returned %v, want its ctx's error", err)
	}
	if err := b.Publish(context.Background(), []Message{msg("close", 3)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close returned %v, want ErrClosed", err)
	}
	close(release)
	mustClose(t, b)
	// The unit queued behind the blocked call was dropped, not delivered.
	select {
	case unit := <-started:
		t.Fatalf("Handler called after Close with %s", unitString(unit))
	default:
	}
}
