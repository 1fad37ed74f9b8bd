package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by NetNS.Do once the namespace's cleanup has run.
var ErrClosed = errors.New("network namespace closed")

// NetNS is an anonymous network namespace made for one test. It lives as
// long as its file descriptor (and any socket made in it) is open; the
// cleanup registered by NewNetNS closes the descriptor. Its methods are safe
// for concurrent use.
type NetNS struct {
	mu     sync.RWMutex
	fd     int // -1 once closed
	path   string
	cookie uint64
}

// NewNetNS creates a network namespace with lo up, and registers a cleanup
// that closes it. It skips the test when not run as root (see RequireRoot).
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	RequireRoot(tb)

	ns, err := newNetNS()
	if err != nil {
		tb.Fatalf("new network namespace: %v", err)
	}
	tb.Cleanup(func() {
		if err := ns.close(); err != nil {
			tb.Errorf("network namespace cleanup: %v", err)
		}
	})
	return ns
}

func newNetNS() (*NetNS, error) {
	type result struct {
		fd     int
		cookie uint64
		err    error
	}
	var r result
	runOnThrowawayThread(func() {
		r.fd, r.cookie, r.err = unshareNetNS()
	})
	if r.err != nil {
		return nil, r.err
	}
	return &NetNS{
		fd:     r.fd,
		path:   fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), r.fd),
		cookie: r.cookie,
	}, nil
}

// runOnThrowawayThread runs fn on a new goroutine locked to an OS thread
// that exits when fn returns (or calls runtime.Goexit), so fn may change the
// thread's namespace without it ever running other goroutines. It returns
// when fn is done.
//
// A goroutine that exits locked kills its thread, except on the main thread
// (m0): the runtime cannot let the thread group leader exit, so it parks it
// forever instead. A namespace entered there would stay the namespace of
// /proc/self/ns/net (and be kept alive) for the rest of the process. So when
// the goroutine lands on the main thread, it keeps that thread locked,
// untouched, while a nested goroutine, which must then run elsewhere, does
// the work.
func runOnThrowawayThread(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			runOnThrowawayThread(fn)
			runtime.UnlockOSThread()
			close(done)
			return
		}
		// Never unlocked: the thread exits with this goroutine.
		defer close(done)
		fn()
	}()
	<-done
}

// unshareNetNS moves the calling (locked) thread into a new namespace and
// returns a descriptor for it and its cookie, with lo brought up.
func unshareNetNS() (int, uint64, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return -1, 0, fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("open namespace: %w", err)
	}
	cookie, err := setUpNetNS()
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, cookie, nil
}

// setUpNetNS brings lo up in the calling thread's namespace and returns the
// namespace's cookie.
func setUpNetNS() (uint64, error) {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(sock)

	cookie, err := getsockoptUint64(sock, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read SO_NETNS_COOKIE: %w", err)
	}

	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return 0, fmt.Errorf("bring lo up: %w", err)
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return 0, fmt.Errorf("bring lo up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(sock, unix.SIOCSIFFLAGS, ifr); err != nil {
		return 0, fmt.Errorf("bring lo up: set flags: %w", err)
	}
	return cookie, nil
}

func getsockoptUint64(fd, level, opt int) (uint64, error) {
	var v uint64
	l := uint32(unsafe.Sizeof(v))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return 0, errno
	}
	return v, nil
}

func (ns *NetNS) close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fd < 0 {
		return nil
	}
	err := unix.Close(ns.fd)
	ns.fd = -1
	if err != nil {
		return fmt.Errorf("close namespace fd: %w", err)
	}
	return nil
}

// FD returns the namespace's file descriptor (for setns, IFLA_NET_NS_FD,
// link.AttachNetNs...). It stays owned by the NetNS: do not close it.
func (ns *NetNS) FD() int {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	return ns.fd
}

// Path returns a path that any process (with the privilege to look into this
// one's fds) can open to reach the namespace, such as
// /proc/PID/fd/N. It is valid until the test's cleanup; pass it to
// `switchyardd --netns`, `nsenter --net=` and the like.
func (ns *NetNS) Path() string {
	return ns.path
}

// Cookie returns the namespace's cookie, the value that
// bpf_get_netns_cookie() and SO_NETNS_COOKIE report for it.
func (ns *NetNS) Cookie() uint64 {
	return ns.cookie
}

// Do runs fn on an OS thread that has entered the namespace and returns its
// error. The thread is used for nothing else and exits afterwards, so
// neither the caller nor any other goroutine ever runs in the namespace by
// accident. Concurrent calls are fine; each gets its own thread.
//
// fn must not call t.FailNow, t.Fatal or t.Skip (it does not run on the test
// goroutine): return an error instead. A panic in fn is re-raised in the
// caller. Goroutines that fn starts do not run in the namespace.
func (ns *NetNS) Do(fn func() error) error {
	type result struct {
		err      error
		finished bool
		panicked bool
		value    any
		stack    []byte
	}
	var r result
	runOnThrowawayThread(func() {
		defer func() {
			if !r.finished {
				if v := recover(); v != nil {
					r.panicked, r.value, r.stack = true, v, debug.Stack()
				}
			}
		}()
		if err := ns.enter(); err != nil {
			r.err = err
		} else {
			r.err = fn()
		}
		r.finished = true
	})
	switch {
	case r.panicked:
		panic(fmt.Sprintf("panic in NetNS.Do: %v\n\n%s", r.value, r.stack))
	case !r.finished:
		return errors.New("function passed to NetNS.Do called runtime.Goexit (t.FailNow, t.Fatal, t.Skip?); return an error instead")
	}
	return r.err
}

// enter moves the calling, locked thread into the namespace.
func (ns *NetNS) enter() error {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.fd < 0 {
		return ErrClosed
	}
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	return nil
}

// AddLocalRoute makes every address of prefix local to the namespace, like
// `ip route add local PREFIX dev lo`: a route of type local in table local,
// scope host. Connections and datagrams to any address of the prefix are
// then delivered to this namespace's sockets (and its sk_lookup program),
// without an address being assigned. IPv4 and IPv6.
func (ns *NetNS) AddLocalRoute(tb testing.TB, prefix netip.Prefix) {
	tb.Helper()
	err := ns.Do(func() error {
		lo, err := ifIndex("lo")
		if err != nil {
			return err
		}
		return rtnlExec(addLocalRouteMsg(prefix, lo))
	})
	if err != nil {
		tb.Fatalf("add local route %s: %v", prefix, err)
	}
}

// AddAddr assigns prefix's address, with its prefix length, to the interface
// ifname, like `ip addr add PREFIX dev IFNAME`. IPv6 addresses get
// IFA_F_NODAD so they can be used at once.
func (ns *NetNS) AddAddr(tb testing.TB, ifname string, prefix netip.Prefix) {
	tb.Helper()
	if err := ns.addAddr(ifname, prefix); err != nil {
		tb.Fatalf("add address %s to %s: %v", prefix, ifname, err)
	}
}

func (ns *NetNS) addAddr(ifname string, prefix netip.Prefix) error {
	if !prefix.IsValid() {
		return fmt.Errorf("invalid prefix %v", prefix)
	}
	return ns.Do(func() error {
		idx, err := ifIndex(ifname)
		if err != nil {
			return err
		}
		return rtnlExec(addAddrMsg(prefix, idx))
	})
}

// LinkUp sets the interface ifname up, like `ip link set IFNAME up`.
func (ns *NetNS) LinkUp(tb testing.TB, ifname string) {
	tb.Helper()
	if err := ns.linkUp(ifname); err != nil {
		tb.Fatalf("set %s up: %v", ifname, err)
	}
}

func (ns *NetNS) linkUp(ifname string) error {
	return ns.Do(func() error {
		idx, err := ifIndex(ifname)
		if err != nil {
			return err
		}
		return rtnlExec(linkUpMsg(idx))
	})
}

// NewVethPair connects namespaces a and b with a veth pair: aName in a with
// address aAddr, bName in b with bAddr, both up. An invalid (zero) prefix
// assigns no address; use AddAddr for more. The pair goes away with the
// namespaces.
func NewVethPair(tb testing.TB, a, b *NetNS, aName, bName string, aAddr, bAddr netip.Prefix) {
	tb.Helper()
	for _, name := range []string{aName, bName} {
		if name == "" || len(name) >= unix.IFNAMSIZ {
			tb.Fatalf("veth pair: invalid interface name %q (1 to %d bytes)", name, unix.IFNAMSIZ-1)
		}
	}

	peerFD := b.FD()
	if peerFD < 0 {
		tb.Fatalf("create veth pair %s/%s: peer namespace: %v", aName, bName, ErrClosed)
	}
	err := a.Do(func() error {
		return rtnlExec(newVethMsg(aName, bName, peerFD))
	})
	if err != nil {
		tb.Fatalf("create veth pair %s/%s: %v", aName, bName, err)
	}

	// Up first: carrier comes only when both ends are up, and IPv6
	// addresses are then usable as soon as they are added (no DAD).
	for _, s := range []struct {
		ns   *NetNS
		name string
		addr netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if err := s.ns.linkUp(s.name); err != nil {
			tb.Fatalf("veth pair: set %s up: %v", s.name, err)
		}
		if !s.addr.IsValid() {
			continue
		}
		if err := s.ns.addAddr(s.name, s.addr); err != nil {
			tb.Fatalf("veth pair: add address %s to %s: %v", s.addr, s.name, err)
		}
	}
}

// ListenConfig returns a net.ListenConfig with MPTCP off. Go 1.24+ creates
// MPTCP listeners by default, and sockmap and switchyard refuse those.
// Listening with it outside Do creates the socket in the caller's namespace.
func ListenConfig() net.ListenConfig {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc
}

// network returns base+"4" for an IPv4 literal host in addr, else base.
// Go's "tcp" and "udp" turn 0.0.0.0 into a dual-stack AF_INET6 socket;
// tests that say 0.0.0.0 mean an IPv4 socket.
func network(base, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return base
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		return base + "4"
	}
	return base
}

// ListenTCP listens on addr ("ip:port", IP literal) inside the namespace,
// with MPTCP off. The listener is closed on cleanup. An IPv4 address, also
// 0.0.0.0, gives an AF_INET socket (plain net.Listen("tcp", "0.0.0.0:80")
// would make a dual-stack AF_INET6 one); an IPv6 address gives an AF_INET6
// socket, dual-stack for [::] as with net.Listen.
func (ns *NetNS) ListenTCP(tb testing.TB, addr string) *net.TCPListener {
	tb.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		lc := ListenConfig()
		var err error
		ln, err = lc.Listen(context.Background(), network("tcp", addr), addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen tcp %s in namespace: %v", addr, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// ListenUDP binds a UDP socket to addr ("ip:port", IP literal) inside the
// namespace. It is closed on cleanup. The family follows the address as for
// ListenTCP.
func (ns *NetNS) ListenUDP(tb testing.TB, addr string) *net.UDPConn {
	tb.Helper()
	var pc net.PacketConn
	err := ns.Do(func() error {
		lc := ListenConfig()
		var err error
		pc, err = lc.ListenPacket(context.Background(), network("udp", addr), addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen udp %s in namespace: %v", addr, err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

func dialer(timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	d.SetMultipathTCP(false)
	return d
}

// DialTCP connects to addr ("ip:port", IP literal) from inside the
// namespace, with MPTCP off. The caller closes the connection; it may be
// used from any goroutine.
func (ns *NetNS) DialTCP(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = dialer(timeout).Dial("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s in namespace: %w", addr, err)
	}
	return c, nil
}

// DialUDP returns a UDP socket connected to addr ("ip:port", IP literal),
// created inside the namespace. The caller closes it.
func (ns *NetNS) DialUDP(addr string) (*net.UDPConn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = dialer(0).Dial("udp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial udp %s in namespace: %w", addr, err)
	}
	return c.(*net.UDPConn), nil
}

// Command returns a command that runs name inside the namespace, through
// `nsenter --net=PATH -- name args...`. Unlike `ip netns exec`, nsenter does
// not remount /sys, so the program sees the same mounts (and bpffs
// instances) as the test. The namespace must stay open until the command has
// started.
func (ns *NetNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "--", name}, args...)...)
}
