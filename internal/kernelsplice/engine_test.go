package kernelsplice

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// A destination that never takes the redirected bytes keeps waitDrained
// waiting for as long as the connection lives: it looks again less and
// less often, not every millisecond, and still ends when told to.
func TestWaitDrainedBacksOff(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	ln := ns.ListenTCP(t, "127.0.0.1:0")
	c, err := ns.DialTCP(ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var looks atomic.Int64
	// More than was ever written to c: never drained.
	redirected := func() (uint64, error) {
		looks.Add(1)
		return 1 << 40, nil
	}
	done := make(chan struct{})
	const wait = 500 * time.Millisecond
	time.AfterFunc(wait, func() { close(done) })
	err = waitDrained(c.(*net.TCPConn), redirected, done)
	if err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("waitDrained on a destination that never drains, stopped: %v, want the stop", err)
	}
	// 1+2+4+...+64 ms, then every 64 ms: about 14 looks in 500 ms, where
	// a look every millisecond made hundreds.
	if n := looks.Load(); n > 30 {
		t.Errorf("waitDrained looked %d times in %v: want it to back off (at most 30)", n, wait)
	}
}
