package resub

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The wait doubles while runs end unconfirmed, starts over after a
// confirmed one, a nil end is reported as ErrUnsubscribed, and the loop
// ends with its context, without reporting that last end.
func TestLoopBacksOffAndStartsOver(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	boom := errors.New("boom")
	runs := []struct {
		confirmed bool
		err       error
	}{{false, boom}, {false, nil}, {true, boom}, {false, boom}}
	n := 0
	var waits []time.Duration
	var errs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(ctx, func() (bool, error) {
			if n == len(runs) {
				cancel()
				return false, context.Canceled
			}
			r := runs[n]
			n++
			return r.confirmed, r.err
		}, func(err error, wait time.Duration) {
			errs = append(errs, err)
			waits = append(waits, wait)
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Loop did not end with its context")
	}
	want := []time.Duration{Min, 2 * Min, Min, 2 * Min}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
	if !errors.Is(errs[0], boom) || !errors.Is(errs[1], ErrUnsubscribed) {
		t.Fatalf("errors %v: want boom, then ErrUnsubscribed for the nil end", errs)
	}
}

// The wait never passes Max.
func TestLoopCapsTheWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var last time.Duration
	runs := 0
	Loop(ctx, func() (bool, error) {
		runs++
		if runs == 7 {
			cancel()
		}
		return false, errors.New("down")
	}, func(_ error, wait time.Duration) {
		if wait > Max {
			t.Errorf("wait %s over Max %s", wait, Max)
		}
		last = wait
	})
	if last != Max {
		t.Fatalf("after 6 unconfirmed runs the wait is %s, want Max %s", last, Max)
	}
}
