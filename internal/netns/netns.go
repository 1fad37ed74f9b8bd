package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is an open network namespace.
type NS struct {
	h    vnetns.NsHandle
	path string
}

// Open opens the network namespace at path. An empty path means the
// namespace of the calling thread.
func Open(path string) (*NS, error) {
	p := path
	if p == "" {
		p = "/proc/thread-self/ns/net"
	}
	h, err := vnetns.GetFromPath(p)
	if err != nil {
		return nil, fmt.Errorf("netns open %s: %w", p, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(h), &st); err != nil {
		h.Close()
		return nil, fmt.Errorf("netns statfs %s: %w", p, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		h.Close()
		return nil, fmt.Errorf("netns %s: not a namespace file (expected /run/netns/NAME or /proc/PID/ns/net)", p)
	}
	if typ, err := unix.IoctlRetInt(int(h), unix.NS_GET_NSTYPE); err != nil || typ != unix.CLONE_NEWNET {
		h.Close()
		return nil, fmt.Errorf("netns %s: a namespace, but not a network namespace (expected /run/netns/NAME or /proc/PID/ns/net)", p)
	}
	return &NS{h: h, path: p}, nil
}

// New creates a network namespace and runs setup inside it (nil for none),
// for instance to bring lo up and add routes. The namespace lives as long
// as the returned NS (and any socket made in it) is open. No thread is left
// in it: the one that created it is switched back, as in Run.
func New(setup func() error) (*NS, error) {
	var h vnetns.NsHandle = -1
	err := onLockedThread(func() error {
		// unshare(CLONE_NEWNET) moves this thread into the new namespace.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns create: %w", err)
		}
		var err error
		if h, err = threadNS(); err != nil {
			return fmt.Errorf("netns create: %w", err)
		}
		if setup == nil {
			return nil
		}
		return setup()
	})
	if err != nil {
		if h.IsOpen() {
			h.Close()
		}
		return nil, err
	}
	// The process as /proc names it, which is not getpid's number when
	// /proc belongs to another PID namespace.
	self, err := os.Readlink("/proc/self")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netns create: %w", err)
	}
	return &NS{h: h, path: fmt.Sprintf("/proc/%s/fd/%d", self, int(h))}, nil
}

// Close releases the handle.
func (ns *NS) Close() error { return ns.h.Close() }

// FD is the namespace's file descriptor, valid until Close.
func (ns *NS) FD() int { return int(ns.h) }

// Handle is the namespace's handle for the netns and netlink libraries
// (netlink.NsFd, netlink.NewHandleAt), valid until Close.
func (ns *NS) Handle() vnetns.NsHandle { return ns.h }

// Path is the path the namespace was opened from; for a namespace made by
// New, a /proc/PID/fd path valid until Close that other processes (with
// the privilege to look into this one's fds) can open too.
func (ns *NS) Path() string { return ns.path }

// Inode is the namespace's inode number, as `ls -Li /proc/PID/ns/net` shows.
func (ns *NS) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(ns.FD(), &st); err != nil {
		return 0, fmt.Errorf("netns stat: %w", err)
	}
	return st.Ino, nil
}

// Do runs fn inside the namespace, as Run does.
func (ns *NS) Do(fn func() error) error { return Run(ns.h, fn) }

// Run runs fn on an OS thread switched into the network namespace h and
// returns fn's error. Sockets fn creates belong to the namespace and stay
// usable from any thread afterwards; goroutines fn starts run elsewhere, in
// the process's namespace. Concurrent calls are fine: each has its own
// thread for its duration.
//
// The thread is locked to fn's goroutine, switched into h, and switched
// back to the namespace it came from after fn. Only a thread that is back
// goes back to Go's pool; one that cannot switch back stays locked and
// ends with the goroutine, so no other goroutine ever runs in the wrong
// namespace. The process's main thread is never used: Go parks it rather
// than ending it, and its namespace is the one /proc/self/ns/net names.
//
// A panic in fn is raised again in the caller. fn must not call
// runtime.Goexit (t.Fatal, t.Skip...): Run then returns an error. fn must
// leave any other per-thread state it changes (fsuid, capabilities, CPU
// affinity) as it found it, since the thread goes back to the pool.
func Run(h vnetns.NsHandle, fn func() error) error {
	return onLockedThread(func() error {
		if err := vnetns.Set(h); err != nil {
			return fmt.Errorf("netns enter: %w", err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a new goroutine locked to an OS thread other
// than the main thread, and restores that thread's network namespace
// afterwards (see Run). It waits for fn.
func onLockedThread(fn func() error) error {
	type result struct {
		err      error
		finished bool
		panicked bool
		value    any
		stack    []byte
	}
	var r result
	done := make(chan struct{})
	var run func()
	run = func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread: leave it untouched and let a nested
			// goroutine, which cannot land here while this one
			// holds it, do the work.
			go run()
			<-done
			runtime.UnlockOSThread()
			return
		}
		restored := false
		defer func() {
			if !r.finished {
				if v := recover(); v != nil {
					r.panicked, r.value, r.stack = true, v, debug.Stack()
				}
			}
			if restored {
				runtime.UnlockOSThread()
			}
			// Otherwise the goroutine exits locked and Go ends
			// the thread with it.
			close(done)
		}()
		orig, err := threadNS()
		if err != nil {
			r.err, r.finished, restored = fmt.Errorf("netns save current: %w", err), true, true
			return
		}
		defer func() {
			// Set back even when fn panicked or called Goexit.
			restored = vnetns.Set(orig) == nil
			orig.Close()
		}()
		r.err = fn()
		r.finished = true
	}
	go run()
	<-done
	switch {
	case r.panicked:
		panic(fmt.Sprintf("panic in a function run in a network namespace: %v\n\n%s", r.value, r.stack))
	case !r.finished:
		return errors.New("netns: the function run in the namespace called runtime.Goexit (t.Fatal, t.Skip?); return an error instead")
	}
	return r.err
}

// threadNS opens the calling thread's network namespace. It names the
// thread by /proc/thread-self, not by getpid and gettid (as the netns
// library's Get does): in a PID namespace whose /proc is another
// namespace's (unshare --pid without a /proc of its own), those numbers
// name another process's thread, or none.
func threadNS() (vnetns.NsHandle, error) {
	return vnetns.GetFromPath("/proc/thread-self/ns/net")
}

// Cookie returns the namespace's cookie, a number unique for the life of the
// system that SO_NETNS_COOKIE reports for every socket in the namespace.
func (ns *NS) Cookie() (uint64, error) {
	var cookie uint64
	err := ns.Do(func() error {
		c, err := ThreadCookie()
		cookie = c
		return err
	})
	return cookie, err
}

// ThreadCookie returns the cookie of the calling thread's namespace (call
// it inside Run).
func ThreadCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie socket: %w", err)
	}
	defer unix.Close(fd)
	return SocketCookie(fd)
}

// SocketCookie returns the cookie of the namespace a socket belongs to.
func SocketCookie(fd int) (uint64, error) {
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, fmt.Errorf("netns cookie: kernel lacks SO_NETNS_COOKIE (needs Linux 5.14+): %w", err)
	}
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return v, nil
}

// LoUp sets lo up in the calling thread's namespace (call it inside Run or
// New's setup), like `ip link set lo up`.
func LoUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// AddLocalRoute makes every address of prefix local to the calling
// thread's namespace, like `ip route add local PREFIX dev lo`: a route of
// type local in table local, scope host. Connections and datagrams to any
// address of the prefix are then delivered to the namespace's sockets (and
// its sk_lookup program) without an address being assigned.
func AddLocalRoute(prefix netip.Prefix) error {
	if !prefix.IsValid() {
		return fmt.Errorf("add local route: invalid prefix %v", prefix)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("add local route %s: find lo: %w", prefix, err)
	}
	prefix = prefix.Masked()
	err = netlink.RouteAdd(&netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       &net.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())},
		Table:     unix.RT_TABLE_LOCAL,
		Protocol:  unix.RTPROT_BOOT,
		Scope:     netlink.SCOPE_HOST,
		Type:      unix.RTN_LOCAL,
	})
	if err != nil {
		return fmt.Errorf("add route local %s dev lo: %w", prefix, err)
	}
	return nil
}
