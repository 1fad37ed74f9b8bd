package sockinfo

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// testNS is a fresh network namespace held by one locked OS thread. Functions
// passed to do run on that thread, so sockets they create belong to the
// namespace; the file descriptors are usable from any goroutine afterwards.
//
// This is a minimal private stand-in for internal/testenv. The thread is never
// unlocked: when the namespace is closed the goroutine returns and the Go
// runtime destroys the thread, so no other goroutine ever runs in the
// namespace and the host namespace is never touched.
type testNS struct {
	reqs   chan func()
	cookie uint64
}

func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("creating a network namespace needs root (CAP_SYS_ADMIN)")
	}
	ns := &testNS{reqs: make(chan func())}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if err := loopbackUp(); err != nil {
			ready <- err
			return
		}
		c, err := CurrentNetNSCookie()
		if err != nil {
			ready <- err
			return
		}
		ns.cookie = c
		ready <- nil
		for f := range ns.reqs {
			f()
		}
	}()
	if err := <-ready; err != nil {
		tb.Fatalf("new network namespace: %v", err)
	}
	tb.Cleanup(func() { close(ns.reqs) })
	return ns
}

// do runs fn on the namespace's thread.
func (ns *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	ns.reqs <- func() { errc <- fn() }
	return <-errc
}

// sysctl reads a sysctl inside the namespace, e.g. "net/mptcp/enabled".
func (ns *testNS) sysctl(name string) (string, error) {
	var v string
	err := ns.do(func() error {
		b, err := os.ReadFile("/proc/sys/" + name)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: SIOCGIFFLAGS: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// openFDs counts the process's open file descriptors.
func openFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	return len(ents), err
}

func TestMain(m *testing.M) {
	// Make the runtime open its network poller's descriptors now, so they
	// are not counted as leaks.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before, err := openFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	after, err := openFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "leaked %d file descriptors\n", after-before)
		code = 1
	}
	os.Exit(code)
}
