package cursor

import "time"

// Throttle decides when a stream of values is sent so that sends are at
// least Interval apart, with a leading and a trailing edge
// (docs/design.md, lessons: cursor throttle): the first value after an idle interval goes
// at once, and values arriving sooner are held for one send at the end of
// the interval, which carries the latest of them. The gateway keeps one per
// (connection, topic) for moves and one per topic for flushes (docs/protocol.md
// §6.2).
//
// A Throttle only decides. The caller owns the values and the timer, and
// passes the time in, so tests drive it with a fake clock:
//
//	mu.Lock()
//	latest = v // the caller always keeps the latest value
//	send, fireAt := th.Offer(now)
//	mu.Unlock()
//	switch {
//	case send:
//		publish(v)
//	case !fireAt.IsZero():
//		time.AfterFunc(fireAt.Sub(now), func() {
//			mu.Lock()
//			ok, v := th.Fired(time.Now()), latest
//			mu.Unlock()
//			if ok {
//				publish(v)
//			}
//		})
//	}
//
// A Throttle is not safe for concurrent use: the caller guards it with the
// lock that guards its latest value. The zero Throttle has Interval 0 and
// sends every value at once. It holds no timer, so dropping it leaks nothing
// once the caller's own timer is stopped or has fired.
type Throttle struct {
	// Interval is the least time between two sends; zero or less sends
	// every value at once. It must not change while a send is pending.
	Interval time.Duration

	last  time.Time // when the last send happened; valid if sent
	sent  bool      // a send happened since the zero value or Reset
	armed bool      // a trailing send is pending: the caller's timer runs
}

// Offer reports what to do with a value that arrived at now.
//
//   - sendNow: no send happened within Interval before now and none is
//     pending, so the caller sends the value now (the leading edge); Offer
//     records now as the last send.
//   - a non-zero fireAt: the value is held. The caller arms one timer to
//     fire at fireAt, the last send plus Interval (never more than Interval
//     after now, should the clock step back), and calls Fired when it does.
//   - neither: a trailing send is already pending; the caller only keeps
//     the value as its latest, which that send will carry.
//
// Offer reports a fireAt once per pending send, so a caller never runs two
// timers for one Throttle.
func (t *Throttle) Offer(now time.Time) (sendNow bool, fireAt time.Time) {
	if t.armed {
		return false, time.Time{}
	}
	if !t.sent || t.Interval <= 0 || now.Sub(t.last) >= t.Interval {
		t.last, t.sent = now, true
		return true, time.Time{}
	}
	t.armed = true
	fireAt = t.last.Add(t.Interval)
	if limit := now.Add(t.Interval); fireAt.After(limit) {
		fireAt = limit
	}
	return false, fireAt
}

// Fired records that the caller's timer fired at now and reports whether a
// trailing send was pending; if so the caller sends its latest value, and
// now counts as the last send, so the next value within Interval of it is
// held again (the reference package's lastBroadcast = fire time). A timer
// that fires after Reset, too late for its Stop, gets false and sends
// nothing, so no update follows a remove (docs/protocol.md §6.2).
func (t *Throttle) Fired(now time.Time) bool {
	if !t.armed {
		return false
	}
	t.armed = false
	t.last, t.sent = now, true
	return true
}

// Pending reports whether a trailing send is pending, that is whether the
// caller's timer should be running.
func (t *Throttle) Pending() bool { return t.armed }

// Reset forgets the last send and any pending send, keeping Interval: the
// next Offer sends at once. The caller stops its timer first; a timer that
// fires anyway is told by Fired that there is nothing to send, unless
// Offers after Reset armed a new pending send, which that stale timer then
// sends early. A caller that drops the Throttle after Reset (the
// connection left the topic) never sees that.
func (t *Throttle) Reset() {
	*t = Throttle{Interval: t.Interval}
}
