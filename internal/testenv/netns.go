package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/netns"
)

// ErrClosed is returned by NetNS.Do once the namespace's cleanup has run.
var ErrClosed = errors.New("network namespace closed")

// NetNS is an anonymous network namespace made for one test. It lives as
// long as its file descriptor (and any socket made in it) is open; the
// cleanup registered by NewNetNS closes the descriptor. Its methods are safe
// for concurrent use.
type NetNS struct {
	mu     sync.RWMutex
	h      *netns.NS
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
	var cookie uint64
	h, err := netns.New(func() error {
		if err := netns.LoUp(); err != nil {
			return err
		}
		c, err := netns.ThreadCookie()
		cookie = c
		return err
	})
	if err != nil {
		return nil, err
	}
	return &NetNS{h: h, fd: h.FD(), path: h.Path(), cookie: cookie}, nil
}

func (ns *NetNS) close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fd < 0 {
		return nil
	}
	err := ns.h.Close()
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
// error (netns.Run: the thread is switched back afterwards, or ended if it
// cannot be, so neither the caller nor any other goroutine ever runs in the
// namespace by accident). Concurrent calls are fine; each gets its own
// thread.
//
// fn must not call t.FailNow, t.Fatal or t.Skip (it does not run on the test
// goroutine): return an error instead. A panic in fn is re-raised in the
// caller. Goroutines that fn starts do not run in the namespace. Other
// per-thread state fn changes (fsuid, capabilities, CPU affinity) must be
// put back before it returns.
func (ns *NetNS) Do(fn func() error) error {
	// A handle of Do's own, so that the cleanup can close the
	// namespace's while fn still runs.
	ns.mu.RLock()
	if ns.fd < 0 {
		ns.mu.RUnlock()
		return ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(ns.fd), unix.F_DUPFD_CLOEXEC, 0)
	ns.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("dup namespace fd: %w", err)
	}
	h := vnetns.NsHandle(fd)
	defer h.Close()
	return netns.Run(h, fn)
}

// CheckThreads runs check on n goroutines at once, each locked to an OS
// thread the scheduler hands out, and fails the test with every error it
// returns: after Do (netns.Run), each thread in Go's pool must still be as
// the process made it (its namespace, its credentials).
func CheckThreads(tb testing.TB, n int, check func() error) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := check(); err != nil {
				errs <- err
			}
			runtime.Gosched()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Error(err)
	}
}

// AddLocalRoute makes every address of prefix local to the namespace, like
// `ip route add local PREFIX dev lo` (netns.AddLocalRoute). IPv4 and IPv6.
func (ns *NetNS) AddLocalRoute(tb testing.TB, prefix netip.Prefix) {
	tb.Helper()
	if err := ns.Do(func() error { return netns.AddLocalRoute(prefix) }); err != nil {
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
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   prefix.Addr().AsSlice(),
		Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen()),
	}}
	if prefix.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	return ns.Do(func() error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find interface %q: %w", ifname, err)
		}
		return netlink.AddrAdd(link, addr)
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
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find interface %q: %w", ifname, err)
		}
		return netlink.LinkSetUp(link)
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
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: aName},
			PeerName:      bName,
			PeerNamespace: netlink.NsFd(peerFD),
		})
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
