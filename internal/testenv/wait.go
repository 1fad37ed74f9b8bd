package testenv

import (
	"testing"
	"time"
)

// Poll calls cond until it reports true or timeout has passed, and returns
// its last answer: whether the awaited state holds, and what cond saw. It
// waits 5 ms between the first calls, doubling up to 50 ms. Use it where a
// test has no readiness signal to wait on (a process closing descriptors,
// the kernel freeing objects in deferred work, a log line from another
// process); use the signal where there is one.
func Poll(timeout time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	pause := 5 * time.Millisecond
	for {
		ok, seen := cond()
		if ok || !time.Now().Before(deadline) {
			return ok, seen
		}
		time.Sleep(min(pause, time.Until(deadline)))
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// WaitFor polls cond as Poll does and fails the test (Fatalf) if it does
// not hold within timeout, with what, the timeout and what cond last saw:
// "WHAT: not within 5s; last seen: SEEN".
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	if ok, seen := Poll(timeout, cond); !ok {
		tb.Fatalf("%s: not within %v; last seen: %s", what, timeout, seen)
	}
}
