package cursor

import (
	"fmt"
	"testing"
	"time"
)

// epoch is the fake clock's origin; the tests count milliseconds from it.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return epoch.Add(time.Duration(ms) * time.Millisecond) }

func TestThrottleEdgesAtControlledTimes(t *testing.T) {
	const none = -1 // no fireAt
	type step struct {
		ms       int
		fire     bool // Fired at ms instead of Offer
		wantSend bool // Offer: sendNow; Fired: its result
		wantFire int  // Offer: fireAt in ms, or none
	}
	offer := func(ms int, send bool, fire int) step { return step{ms: ms, wantSend: send, wantFire: fire} }
	fired := func(ms int, send bool) step { return step{ms: ms, fire: true, wantSend: send, wantFire: none} }

	for _, tc := range []struct {
		name     string
		interval time.Duration
		reset    int // index of the step before which Reset is called; 0 = never
		steps    []step
	}{
		{"the first offer sends at once", 50 * time.Millisecond, 0, []step{
			offer(0, true, none),
		}},
		{"an offer a full interval after the last send is a leading edge", 50 * time.Millisecond, 0, []step{
			offer(0, true, none), offer(50, true, none), offer(175, true, none),
		}},
		{"an offer within the interval arms one trailing send at the last send plus the interval", 50 * time.Millisecond, 0, []step{
			offer(0, true, none), offer(10, false, 50), offer(20, false, none), offer(49, false, none), fired(50, true),
		}},
		{"a late timer counts its actual fire time as the last send", 50 * time.Millisecond, 0, []step{
			offer(0, true, none), offer(10, false, 50), fired(65, true), offer(100, false, 115), fired(115, true),
		}},
		{"an idle interval after a trailing send makes the next offer send at once", 50 * time.Millisecond, 0, []step{
			offer(0, true, none), offer(30, false, 50), fired(50, true), offer(100, true, none),
		}},
		{"an offer right after a trailing send waits a full interval", 50 * time.Millisecond, 0, []step{
			offer(0, true, none), offer(30, false, 50), fired(50, true), offer(51, false, 100), fired(100, true), offer(149, false, 150),
		}},
		{"interval zero sends everything at once", 0, 0, []step{
			offer(0, true, none), offer(0, true, none), offer(1, true, none), offer(1, true, none), fired(2, false),
		}},
		{"a negative interval sends everything at once", -time.Second, 0, []step{
			offer(0, true, none), offer(0, true, none),
		}},
		{"Fired with no pending send reports nothing to send", 50 * time.Millisecond, 0, []step{
			fired(0, false), offer(0, true, none), fired(10, false), offer(20, false, 50), fired(50, true), fired(51, false),
		}},
		{"Reset forgets the last send and the pending one", 50 * time.Millisecond, 2, []step{
			offer(0, true, none), offer(10, false, 50), offer(20, true, none), fired(50, false), offer(60, false, 70),
		}},
		{"a clock stepped back never holds a value more than one interval", 50 * time.Millisecond, 0, []step{
			offer(1000, true, none), offer(100, false, 150), fired(150, true),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := Throttle{Interval: tc.interval}
			for i, s := range tc.steps {
				if tc.reset != 0 && i == tc.reset {
					th.Reset()
					if th.Pending() || th.Interval != tc.interval {
						t.Fatalf("after Reset: Pending %v, Interval %v; want false, %v", th.Pending(), th.Interval, tc.interval)
					}
				}
				if s.fire {
					if got := th.Fired(at(s.ms)); got != s.wantSend {
						t.Fatalf("step %d: Fired(%dms) = %v, want %v", i, s.ms, got, s.wantSend)
					}
				} else {
					send, fireAt := th.Offer(at(s.ms))
					wantFireAt := time.Time{}
					if s.wantFire != none {
						wantFireAt = at(s.wantFire)
					}
					if send != s.wantSend || !fireAt.Equal(wantFireAt) {
						t.Fatalf("step %d: Offer(%dms) = %v, %s; want %v, %s", i, s.ms, send, ms(fireAt), s.wantSend, ms(wantFireAt))
					}
					if s.wantFire != none && !th.Pending() {
						t.Fatalf("step %d: Pending() = false after arming a trailing send", i)
					}
				}
			}
		})
	}
}

func ms(t time.Time) string {
	if t.IsZero() {
		return "no fireAt"
	}
	return fmt.Sprintf("fireAt %dms", t.Sub(epoch).Milliseconds())
}

// TestThrottleEveryOfferPattern drives a Throttle the way the gateway does,
// with a fake timer, through every pattern of offers on a grid of ticks,
// for several intervals, and checks the throttle's promises on each run:
//
//   - sends are at least Interval apart;
//   - an offer at least Interval after the last send, with no send
//     pending, is sent at once (leading edge);
//   - a held offer is sent exactly at the last send plus Interval, by a
//     trailing send that carries the latest value (trailing edge);
//   - at most one timer runs at a time, and no value is sent twice;
//   - the last value offered is always sent.
func TestThrottleEveryOfferPattern(t *testing.T) {
	const ticks = 13
	for _, interval := range []int{0, 1, 2, 3, 5, 20} {
		for pattern := range 1 << ticks {
			if err := runThrottlePattern(interval, ticks, pattern); err != nil {
				t.Fatalf("interval %d ticks, offers %0*b: %v", interval, ticks, pattern, err)
			}
		}
	}
}

// runThrottlePattern offers value i at tick i for every bit i of pattern.
// A due timer fires before an offer at the same tick, as a timer set for
// that instant would.
func runThrottlePattern(interval, ticks, pattern int) error {
	th := Throttle{Interval: time.Duration(interval) * time.Millisecond}
	latest, lastSent, lastSendAt := -1, -1, -1
	timer := -1 // tick the fake timer fires at; -1 = not running
	send := func(now, v int) error {
		if v <= lastSent {
			return fmt.Errorf("tick %d: sent value %d after %d", now, v, lastSent)
		}
		if lastSendAt >= 0 && now-lastSendAt < interval {
			return fmt.Errorf("tick %d: send only %d ticks after the one at %d", now, now-lastSendAt, lastSendAt)
		}
		lastSent, lastSendAt = v, now
		return nil
	}
	fire := func() error {
		now := timer
		timer = -1
		if !th.Fired(at(now)) {
			return fmt.Errorf("tick %d: Fired reported no pending send", now)
		}
		if lastSendAt >= 0 && now != lastSendAt+interval {
			return fmt.Errorf("tick %d: trailing send not at the last send (%d) plus the interval", now, lastSendAt)
		}
		return send(now, latest)
	}
	for now := range ticks {
		if timer == now {
			if err := fire(); err != nil {
				return err
			}
		}
		if pattern&(1<<now) == 0 {
			continue
		}
		latest = now
		idle := lastSendAt < 0 || now-lastSendAt >= interval
		sendNow, fireAt := th.Offer(at(now))
		switch {
		case sendNow:
			if timer >= 0 {
				return fmt.Errorf("tick %d: sent at once while a trailing send was pending", now)
			}
			if err := send(now, now); err != nil {
				return err
			}
		case idle:
			return fmt.Errorf("tick %d: held an offer %d ticks after the last send", now, now-lastSendAt)
		case !fireAt.IsZero():
			if timer >= 0 {
				return fmt.Errorf("tick %d: a second timer armed while one runs", now)
			}
			timer = int(fireAt.Sub(epoch).Milliseconds())
			if timer != lastSendAt+interval {
				return fmt.Errorf("tick %d: timer armed for %d, want the last send (%d) plus the interval", now, timer, lastSendAt)
			}
		case timer < 0:
			return fmt.Errorf("tick %d: offer neither sent nor held by a timer", now)
		}
		if th.Pending() != (timer >= 0) {
			return fmt.Errorf("tick %d: Pending() = %v with timer %d", now, th.Pending(), timer)
		}
	}
	if timer >= 0 {
		if err := fire(); err != nil {
			return err
		}
	}
	if lastSent != latest {
		return fmt.Errorf("last value %d never sent (last sent %d)", latest, lastSent)
	}
	return nil
}

// ExampleThrottle shows a cursor stream at 100 Hz throttled to one send per
// 50ms: the leading edge goes at once, then one trailing send per interval
// carries the latest position.
func ExampleThrottle() {
	th := Throttle{Interval: 50 * time.Millisecond}
	var latest string
	var timerAt time.Time
	for i := range 12 {
		now := at(10 * i)
		if !timerAt.IsZero() && !now.Before(timerAt) {
			timerAt = time.Time{}
			if th.Fired(now) {
				fmt.Printf("%3dms trailing %s\n", now.Sub(epoch).Milliseconds(), latest)
			}
		}
		latest = fmt.Sprintf("x=%d", i)
		send, fireAt := th.Offer(now)
		if send {
			fmt.Printf("%3dms leading  %s\n", now.Sub(epoch).Milliseconds(), latest)
		} else if !fireAt.IsZero() {
			timerAt = fireAt
		}
	}
	// Output:
	//   0ms leading  x=0
	//  50ms trailing x=4
	// 100ms trailing x=9
}
