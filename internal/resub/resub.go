// Package resub keeps a Redis subscription running: the bus, presence and
// the tally each hold one (or one per shard channel) that rueidis
// resubscribes after a reconnection but that ends for good when the
// server unsubscribes it or its node goes away. Loop starts it again.
package resub

import (
	"context"
	"errors"
	"time"
)

// Restart backoff: from Min, doubling after each run that ended without a
// confirmed subscription, up to Max (rueidis's own Receive retry also
// caps at 1 s).
const (
	Min = 50 * time.Millisecond
	Max = time.Second
)

// ErrUnsubscribed stands for a run that ended without an error: the
// server ended the subscription.
var ErrUnsubscribed = errors.New("unsubscribed by the server")

// Loop calls run until ctx is done, again after each end, waiting the
// backoff in between. run reports whether its subscription was confirmed
// (the backoff then starts over from Min) and why it ended. ended, if
// set, is told of every end but the last (ctx done), with the wait before
// the next run; a nil error comes as ErrUnsubscribed.
func Loop(ctx context.Context, run func() (confirmed bool, err error), ended func(err error, wait time.Duration)) {
	wait := Min
	for {
		confirmed, err := run()
		if ctx.Err() != nil {
			return
		}
		if confirmed {
			wait = Min
		}
		if err == nil {
			err = ErrUnsubscribed
		}
		if ended != nil {
			ended(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, Max)
	}
}
