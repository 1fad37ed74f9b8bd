package testenv

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// runtimeFDKinds are the targets of descriptors that the Go runtime opens
// lazily, the first time something uses the network poller, and keeps for
// the life of the process: the epoll instance and its wake-up eventfd. A
// test binary whose first pollable fd is opened during m.Run gains them
// without leaking anything, so CheckFDLeaks ignores new fds of these kinds.
// This is the only tolerance: any other new fd is a leak.
var runtimeFDKinds = []string{
	"anon_inode:[eventpoll]",
	"anon_inode:[eventfd]",
}

// fdSettleTime bounds how long CheckFDLeaks waits for descriptors to go away
// after m.Run. Closing a net.Conn that another goroutine is blocked on only
// drops the fd once that goroutine has woken up, so a leak is reported only
// if it survives this long.
const fdSettleTime = 2 * time.Second

// CheckFDLeaks runs the tests and fails the run if more file descriptors are
// open afterwards than before. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(testenv.CheckFDLeaks(m)) }
//
// It returns m.Run's exit code, or 1 if the tests passed but leaked or left
// the main thread in another network namespace, after printing each leaked
// fd and what it points to (socket:[...], net:[...], a path) to stderr. New epoll and eventfd descriptors are not counted: the
// Go runtime opens one of each for its network poller on first use.
func CheckFDLeaks(m *testing.M) int {
	before, err := openFDs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: fd leak check: %v\n", err)
		return 1
	}

	hostNS, nsErr := os.Readlink("/proc/self/ns/net")
	code := m.Run()
	// /proc/self/ns/net is the main thread's namespace. The runtime never
	// lets the main thread exit, so a namespace switch left on it shows.
	if now, err := os.Readlink("/proc/self/ns/net"); nsErr != nil || err != nil || now != hostNS {
		fmt.Fprintf(os.Stderr, "testenv: the main thread's network namespace changed: %s -> %s (%v, %v)\n", hostNS, now, nsErr, err)
		code = 1
	}

	var leaked map[int]string
	var listErr error
	Poll(fdSettleTime, func() (bool, string) {
		after, err := openFDs()
		if err != nil {
			listErr = err
			return true, ""
		}
		leaked = newFDs(before, after)
		return len(leaked) == 0, ""
	})
	if listErr != nil {
		fmt.Fprintf(os.Stderr, "testenv: fd leak check: %v\n", listErr)
		return 1
	}
	if len(leaked) == 0 {
		return code
	}

	fds := make([]int, 0, len(leaked))
	for fd := range leaked {
		fds = append(fds, fd)
	}
	slices.Sort(fds)
	fmt.Fprintf(os.Stderr, "testenv: %d file descriptor(s) leaked by the tests:\n", len(fds))
	for _, fd := range fds {
		fmt.Fprintf(os.Stderr, "\tfd %d -> %s\n", fd, leaked[fd])
	}
	if code == 0 {
		code = 1
	}
	return code
}

// newFDs returns the fds in after that were not in before (or now point
// elsewhere), leaving out the runtime's own kinds.
func newFDs(before, after map[int]string) map[int]string {
	leaked := make(map[int]string)
	for fd, target := range after {
		if old, ok := before[fd]; ok && old == target {
			continue
		}
		if slices.Contains(runtimeFDKinds, target) {
			continue
		}
		leaked[fd] = target
	}
	return leaked
}

// openFDs maps each open fd of this process to its /proc link target.
func openFDs() (map[int]string, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("list open fds: %w", err)
	}
	fds := make(map[int]string, len(entries))
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			// Closed since the listing, e.g. the directory fd that
			// ReadDir itself used.
			continue
		}
		fds[fd] = target
	}
	return fds, nil
}

// CountFDs is the number of descriptors this process has open.
func CountFDs(tb testing.TB) int {
	tb.Helper()
	fds, err := openFDs()
	if err != nil {
		tb.Fatal(err)
	}
	return len(fds)
}
