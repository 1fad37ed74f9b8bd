package policy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// workerOptions runs splice workers as this test binary in the
// splice-worker helper role.
func workerOptions(t testing.TB) *WorkerOptions {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env, err := exec.LookPath("env")
	if err != nil {
		t.Skipf("no env(1) to start splice workers with: %v", err)
	}
	return &WorkerOptions{Command: []string{env, "SY_POLICY_HELPER=splice-worker", exe}, Dir: t.TempDir()}
}

// workerPidfd returns a pidfd of the worker that runs label's splice,
// which the test's cleanup kills if it still runs.
func (e *env) workerPidfd(label string) int {
	e.t.Helper()
	pid, ok := e.m.Splices().WorkerPID(label)
	if !ok {
		e.t.Fatalf("splice %s does not run in a worker", label)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		e.t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	e.t.Cleanup(func() {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	})
	return fd
}

// waitExit fails the test unless the process of pidfd exits within d.
func waitExit(t *testing.T, pidfd int, d time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("%s: the splice worker still runs after %v", what, d)
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll pidfd: %v", err)
		}
		if n > 0 {
			return
		}
	}
}

// expectRefused fails the test unless a connection to spliceAddr is
// refused: the label has no socket.
func (e *env) expectRefused(t *testing.T, what string) {
	t.Helper()
	c, err := e.cli.DialTCP(spliceAddr, 2*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("a new connection was accepted after %s", what)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after %s: %v, want connection refused", what, err)
	}
}

// A splice in a worker process serves connections; StopSplice closes the
// worker's listener at once, so new connections are refused even while
// others keep arriving, lets the open connection run to its end, and the
// worker exits.
func TestSpliceWorkerStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{Workers: workerOptions(t)})
	up := e.server("", false, "read")
	e.splice("127.0.0.1:" + up.port)
	pidfd := e.workerPidfd("px")
	e.transfer(e.cli, false, spliceAddr, 11, 4<<20)

	const n = 48 << 20
	h := e.startEnv(e.cli, false, []string{"SY_CLIENT_PACE=2ms", "SY_CLIENT_SAY_CONNECTED=1"}, "client", spliceAddr, "12", fmt.Sprint(n))
	if got := h.line(t); got != "connected" {
		t.Fatalf("client: %q", got)
	}
	// The worker has taken the connection on (dialled the upstream).
	for deadline := time.Now().Add(5 * time.Second); e.counters("px").Connections < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("counters %+v: the worker did not take the connection on", e.counters("px"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := e.m.StopSplice("px"); err != nil {
		t.Fatal(err)
	}
	e.expectRefused(t, "StopSplice")
	if got, want := h.line(t), fmt.Sprintf("ok %d %s", n, streamHash(12, n)); got != want {
		t.Fatalf("connection open across StopSplice: client says %q, want %q", got, want)
	}
	waitExit(t, pidfd, 10*time.Second, "StopSplice")
}

// A worker killed while it splices a connection resets both ends: the
// client and the upstream learn that the stream broke, not that it ended
// (a FIN would pass a cut response off as whole).
func TestSpliceWorkerKilledResetsConnections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{Workers: workerOptions(t)})
	ln := e.spliceToListener()
	pidfd := e.workerPidfd("px")
	c, u := e.pair(t, ln)
	byteEachWay(t, c, u)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitExit(t, pidfd, 10*time.Second, "SIGKILL")
	expectReset(t, c)
	expectReset(t, u)
}

// A worker outlives its manager and serves on; a manager opened after
// that nothing splices the label any more finishes it (Settle): its
// listener closes at once and it exits.
func TestSpliceWorkerSettle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{Workers: workerOptions(t)})
	up := e.server("", false, "read")
	e.splice("127.0.0.1:" + up.port)
	pidfd := e.workerPidfd("px")
	e.m.Close()
	e.transfer(e.cli, false, spliceAddr, 13, 4<<20)

	e.m = e.open()
	st, err := e.m.Status()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st["px"]; ok {
		t.Errorf("status %q before any StartSplice, want none for px", st["px"])
	}
	e.m.Settle()
	e.expectRefused(t, "Settle")
	waitExit(t, pidfd, 10*time.Second, "Settle")
}
