package netns_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// CheckFDLeaks also fails the run if the main thread changed namespace:
// Run must never use it.
func TestMain(m *testing.M) { os.Exit(testenv.CheckFDLeaks(m)) }

// threadNSInode is the inode of the calling thread's namespace, 0 if it
// cannot be read.
func threadNSInode() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0
	}
	return st.Ino
}

func threadNS(t *testing.T) uint64 {
	t.Helper()
	ino := threadNSInode()
	if ino == 0 {
		t.Fatal("cannot read /proc/thread-self/ns/net")
	}
	return ino
}

func newNS(t *testing.T) *netns.NS {
	t.Helper()
	testenv.RequireRoot(t)
	ns, err := netns.New(netns.LoUp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// Run enters the namespace and leaves the caller's thread where it was;
// errors, panics and Goexit come back to the caller.
func TestRun(t *testing.T) {
	ns := newNS(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	host := threadNS(t)
	want, err := ns.Inode()
	if err != nil {
		t.Fatal(err)
	}
	var inside uint64
	if err := ns.Do(func() error { inside = threadNS(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside != want || inside == host {
		t.Errorf("fn ran in namespace %d, want %d (host %d)", inside, want, host)
	}
	if now := threadNS(t); now != host {
		t.Errorf("caller's thread moved to %d, host %d", now, host)
	}

	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Run error = %v, want sentinel", err)
	}
	if err := ns.Do(func() error { runtime.Goexit(); return nil }); err == nil || !strings.Contains(err.Error(), "Goexit") {
		t.Errorf("Run with runtime.Goexit = %v, want an error naming Goexit", err)
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "boom") {
				t.Errorf("recovered %v, want the panic from fn", r)
			}
		}()
		_ = ns.Do(func() error { panic("boom") })
	}()
	var c1, c2 uint64
	if c1, err = ns.Cookie(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { c2, err = netns.ThreadCookie(); return err }); err != nil || c1 != c2 || c1 == 0 {
		t.Errorf("cookies %d and %d (%v)", c1, c2, err)
	}
}

// capSysAdmin reports whether the calling thread has CAP_SYS_ADMIN in its
// effective set; dropCapSysAdmin takes it out (capabilities are per thread).
func capSysAdmin() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, err
	}
	return data[0].Effective&(1<<unix.CAP_SYS_ADMIN) != 0, nil
}

func dropCapSysAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Effective &^= 1 << unix.CAP_SYS_ADMIN
	return unix.Capset(&hdr, &data[0])
}

// A thread that cannot switch back (here: fn dropped the capability setns
// needs) never runs another goroutine: every thread the scheduler hands out
// afterwards is in the host namespace with its capabilities.
func TestRunDropsThreadThatCannotSwitchBack(t *testing.T) {
	ns := newNS(t)
	host := threadNS(t)
	for range 20 {
		err := ns.Do(func() error {
			if err := dropCapSysAdmin(); err != nil {
				return err
			}
			if ok, err := capSysAdmin(); err != nil || ok {
				return fmt.Errorf("CAP_SYS_ADMIN still effective (%v)", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	testenv.CheckThreads(t, 400, func() error {
		if ns := threadNSInode(); ns != host {
			return fmt.Errorf("a scheduler thread is in namespace %d, host is %d", ns, host)
		}
		if ok, err := capSysAdmin(); err != nil || !ok {
			return fmt.Errorf("a scheduler thread lacks CAP_SYS_ADMIN (%v): a thread that failed to switch back was reused", err)
		}
		return nil
	})
}

// Concurrent calls each get their own thread in the namespace.
func TestRunConcurrent(t *testing.T) {
	ns := newNS(t)
	want, err := ns.Inode()
	if err != nil {
		t.Fatal(err)
	}
	testenv.CheckThreads(t, 100, func() error {
		return ns.Do(func() error {
			if got := threadNSInode(); got != want {
				return fmt.Errorf("in namespace %d, want %d", got, want)
			}
			return nil
		})
	})
}

func TestOpenRefusesOtherFiles(t *testing.T) {
	if _, err := netns.Open("/proc/self/stat"); err == nil || !strings.Contains(err.Error(), "not a namespace file") {
		t.Errorf("Open(/proc/self/stat) = %v, want 'not a namespace file'", err)
	}
	if _, err := netns.Open("/proc/self/ns/mnt"); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("Open(/proc/self/ns/mnt) = %v, want 'not a network namespace'", err)
	}
	if ns, err := netns.Open("/proc/self/ns/net"); err != nil {
		t.Errorf("Open(/proc/self/ns/net): %v", err)
	} else {
		ns.Close()
	}
	if _, err := netns.Open("/nonexistent/ns"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(/nonexistent/ns) = %v, want ErrNotExist", err)
	}
}

// In a PID namespace that sees the /proc of another (unshare --pid without
// a /proc of its own), getpid and gettid are not the numbers /proc knows
// the process by: New, Run and the path of a new namespace still work.
// The test runs itself again as the first process of a new PID namespace.
func TestNewInForeignProcPIDNamespace(t *testing.T) {
	if os.Getenv("SY_NETNS_PIDNS_CHILD") != "" {
		if os.Getpid() != 1 {
			t.Fatalf("pid %d, want 1 in the new PID namespace", os.Getpid())
		}
		ns, err := netns.New(netns.LoUp)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		want, err := ns.Inode()
		if err != nil {
			t.Fatal(err)
		}
		var inside uint64
		if err := ns.Do(func() error { inside = threadNSInode(); return nil }); err != nil || inside != want {
			t.Fatalf("Run: in namespace %d (%v), want %d", inside, err, want)
		}
		var st unix.Stat_t
		if err := unix.Stat(ns.Path(), &st); err != nil || st.Ino != want {
			t.Fatalf("Path %s: inode %d (%v), want %d", ns.Path(), st.Ino, err, want)
		}
		return
	}
	testenv.RequireRoot(t)
	t.Parallel()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	cmd := exec.Command(unshare, "--pid", "--fork", os.Args[0], "-test.run=^TestNewInForeignProcPIDNamespace$", "-test.v")
	cmd.Env = append(os.Environ(), "SY_NETNS_PIDNS_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestNewInForeignProcPIDNamespace") {
		t.Fatalf("in a new PID namespace: %v\n%s", err, out)
	}
}
