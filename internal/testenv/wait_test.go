package testenv_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestPoll(t *testing.T) {
	n := 0
	ok, seen := testenv.Poll(5*time.Second, func() (bool, string) {
		n++
		return n == 3, fmt.Sprintf("call %d", n)
	})
	if !ok || seen != "call 3" || n != 3 {
		t.Errorf("Poll = %v, %q after %d calls; want true, \"call 3\" after 3", ok, seen, n)
	}

	start := time.Now()
	ok, seen = testenv.Poll(100*time.Millisecond, func() (bool, string) { return false, "never" })
	if el := time.Since(start); ok || seen != "never" || el < 100*time.Millisecond || el > 5*time.Second {
		t.Errorf("Poll on a false condition = %v, %q after %v", ok, seen, el)
	}
}

// fatalRecorder is a testing.TB whose Fatalf records instead of stopping.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestWaitFor(t *testing.T) {
	r := &fatalRecorder{TB: t}
	testenv.WaitFor(r, 50*time.Millisecond, "daemon closes its fds", func() (bool, string) { return false, "7 fds open" })
	if want := "daemon closes its fds: not within 50ms; last seen: 7 fds open"; r.msg != want {
		t.Errorf("WaitFor failed with %q, want %q", r.msg, want)
	}
	r.msg = ""
	testenv.WaitFor(r, time.Second, "x", func() (bool, string) { return true, "" })
	if r.msg != "" {
		t.Errorf("WaitFor on a true condition failed: %q", r.msg)
	}
}
