package sockinfo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// rawFD returns the descriptor behind a net.Listener, net.PacketConn or
// net.Conn. The object keeps owning it.
func rawFD(tb testing.TB, c syscall.Conn) int {
	tb.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var fd int
	if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		tb.Fatal(err)
	}
	return fd
}

func listenConfig(reusePort bool) *net.ListenConfig {
	lc := &net.ListenConfig{}
	lc.SetMultipathTCP(false)
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	return lc
}

// listen creates a TCP listener in ns and returns its descriptor.
func (ns *testNS) listen(tb testing.TB, lc *net.ListenConfig, network, addr string) (int, net.Addr) {
	tb.Helper()
	var ln net.Listener
	err := ns.do(func() (err error) {
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s %s: %v", network, addr, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return rawFD(tb, ln.(syscall.Conn)), ln.Addr()
}

// listenPacket creates a bound UDP socket in ns and returns its descriptor.
func (ns *testNS) listenPacket(tb testing.TB, network, addr string) (int, net.Addr) {
	tb.Helper()
	var pc net.PacketConn
	err := ns.do(func() (err error) {
		pc, err = listenConfig(false).ListenPacket(context.Background(), network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s %s: %v", network, addr, err)
	}
	tb.Cleanup(func() { pc.Close() })
	return rawFD(tb, pc.(syscall.Conn)), pc.LocalAddr()
}

// socket calls socket(2) in ns. It returns the errno for the caller to decide
// whether the kernel lacks the protocol.
func (ns *testNS) socket(tb testing.TB, domain, typ, proto int) (int, error) {
	tb.Helper()
	var fd int
	err := ns.do(func() (err error) {
		fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return -1, err
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd, nil
}

// probeSocket returns a probe that makes (and closes) a socket of the kind
// in the namespace.
func (ns *testNS) probeSocket(domain, typ, proto int) func() error {
	return func() error {
		return ns.do(func() error {
			fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
			if err != nil {
				return fmt.Errorf("socket(%d, %d, %d): %w", domain, typ, proto, err)
			}
			return unix.Close(fd)
		})
	}
}

func mustSocket(tb testing.TB, ns *testNS, domain, typ, proto int) int {
	tb.Helper()
	fd, err := ns.socket(tb, domain, typ, proto)
	if err != nil {
		tb.Fatalf("socket(%d, %d, %d): %v", domain, typ, proto, err)
	}
	return fd
}

func addrPortOf(tb testing.TB, a net.Addr) netip.AddrPort {
	tb.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		tb.Fatal(err)
	}
	return ap
}

func TestAccepted(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t)

	type want struct {
		family    binding.Family
		protocol  binding.Protocol
		listening bool
		v6only    bool
		reusePort bool
	}
	tcp4, tcp4Addr := ns.listen(t, listenConfig(false), "tcp4", "127.0.0.1:0")
	tcp6, tcp6Addr := ns.listen(t, listenConfig(false), "tcp6", "[::1]:0")
	dual, dualAddr := ns.listen(t, listenConfig(false), "tcp", "[::]:0")
	rp1, rp1Addr := ns.listen(t, listenConfig(true), "tcp4", "127.0.0.1:0")
	rp2, rp2Addr := ns.listen(t, listenConfig(true), "tcp4", rp1Addr.String())
	udp4, udp4Addr := ns.listenPacket(t, "udp4", "127.0.0.1:0")
	udp6, udp6Addr := ns.listenPacket(t, "udp6", "[::1]:0")
	udpAny, udpAnyAddr := ns.listenPacket(t, "udp4", "0.0.0.0:0")

	for _, tc := range []struct {
		name string
		fd   int
		addr net.Addr
		want want
	}{
		{"tcp listener ipv4", tcp4, tcp4Addr, want{binding.IPv4, binding.TCP, true, false, false}},
		{"tcp listener ipv6", tcp6, tcp6Addr, want{binding.IPv6, binding.TCP, true, true, false}},
		{"tcp listener dual-stack", dual, dualAddr, want{binding.IPv6, binding.TCP, true, false, false}},
		{"tcp reuseport member 1", rp1, rp1Addr, want{binding.IPv4, binding.TCP, true, false, true}},
		{"tcp reuseport member 2", rp2, rp2Addr, want{binding.IPv4, binding.TCP, true, false, true}},
		{"udp bound ipv4", udp4, udp4Addr, want{binding.IPv4, binding.UDP, false, false, false}},
		{"udp bound ipv6", udp6, udp6Addr, want{binding.IPv6, binding.UDP, false, true, false}},
		{"udp bound wildcard ipv4", udpAny, udpAnyAddr, want{binding.IPv4, binding.UDP, false, false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := Validate(tc.fd, ns.cookie)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := want{info.Family, info.Protocol, info.Listening, info.V6Only, info.ReusePort}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if wantAddr := addrPortOf(t, tc.addr); info.Local != wantAddr {
				t.Errorf("Local = %s, want %s", info.Local, wantAddr)
			}
			if info.Connected {
				t.Error("Connected = true")
			}
			if info.NetNSCookie != ns.cookie {
				t.Errorf("NetNSCookie = %d, want %d", info.NetNSCookie, ns.cookie)
			}
			if info.Cookie == 0 {
				t.Error("Cookie = 0")
			}
			if err := info.Check(); err != nil {
				t.Errorf("Check: %v", err)
			}
			t.Log(info)
		})
	}

	t.Run("dual-stack", func(t *testing.T) {
		info, err := Inspect(dual)
		if err != nil {
			t.Fatal(err)
		}
		if !info.DualStack() {
			t.Error("DualStack() = false for a tcp listener on [::]")
		}
	})
	t.Run("cookies differ", func(t *testing.T) {
		a, _ := Inspect(rp1)
		b, _ := Inspect(rp2)
		if a.Cookie == b.Cookie {
			t.Errorf("two sockets share SO_COOKIE %d", a.Cookie)
		}
	})
}

// refusal checks that err wraps sentinel and says each of the phrases.
func refusal(t *testing.T, err, sentinel error, phrases ...string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error = %v, want %v", err, sentinel)
	}
	if !IsRefusal(err) {
		t.Errorf("IsRefusal(%v) = false", err)
	}
	for _, p := range phrases {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
	t.Log(err)
}

func TestRefused(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t)

	t.Run("unix socket", func(t *testing.T) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		_, err = Validate(fds[0], ns.cookie)
		refusal(t, err, ErrUnsupportedFamily, "AF_UNIX", "IPv4 and IPv6")
	})
	t.Run("netlink socket", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
		_, err := Inspect(fd)
		refusal(t, err, ErrUnsupportedFamily, "AF_NETLINK")
	})
	t.Run("raw socket", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrUnsupportedProtocol, "raw", "TCP (SOCK_STREAM) and UDP (SOCK_DGRAM)")
	})
	t.Run("raw ipv6 socket", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_UDP)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrUnsupportedProtocol, "raw")
	})
	t.Run("sctp socket", func(t *testing.T) {
		testenv.RequireFeature(t, testenv.Feature{
			Name: "SCTP", Since: "2.6.0", Config: "CONFIG_IP_SCTP", Module: "sctp",
			Probe: ns.probeSocket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP),
		})
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrUnsupportedProtocol, "SCTP")
	})
	t.Run("udplite socket", func(t *testing.T) {
		// UDP-Lite is part of every IPv4 stack: no option builds it.
		testenv.RequireFeature(t, testenv.Feature{
			Name: "UDP-Lite", Since: "2.6.20",
			Probe: ns.probeSocket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE),
		})
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrUnsupportedProtocol, "UDP-Lite")
	})
	t.Run("tcp bound not listening", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_STREAM, 0)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		info, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrNotListening, "call listen(2)")
		if info.Protocol != binding.TCP || info.Local.Port() == 0 {
			t.Errorf("partial info = %v", info)
		}
	})
	t.Run("tcp unbound", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrNotListening, "listen(2)")
	})
	t.Run("tcp connection", func(t *testing.T) {
		_, addr := ns.listen(t, listenConfig(false), "tcp4", "127.0.0.1:0")
		var c net.Conn
		err := ns.do(func() (err error) {
			d := net.Dialer{}
			d.SetMultipathTCP(false)
			c, err = d.Dial("tcp4", addr.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		info, err := Validate(rawFD(t, c.(syscall.Conn)), ns.cookie)
		refusal(t, err, ErrNotListening, "is a connection, not a listener", "register the socket the service called listen(2) on")
		if !info.Connected {
			t.Error("Connected = false for a dialled connection")
		}
	})
	t.Run("udp unbound", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_DGRAM, 0)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrUnbound, "bind(2) it")
	})
	t.Run("udp unbound ipv6", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrUnbound)
	})
	t.Run("udp connected", func(t *testing.T) {
		_, addr := ns.listenPacket(t, "udp4", "127.0.0.1:0")
		var c net.Conn
		err := ns.do(func() (err error) {
			c, err = net.Dial("udp4", addr.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = Validate(rawFD(t, c.(syscall.Conn)), ns.cookie)
		refusal(t, err, ErrConnected, "register an unconnected socket")
	})
	t.Run("udp bound then connected", func(t *testing.T) {
		fd, _ := ns.listenPacket(t, "udp6", "[::1]:0")
		if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16(), Port: 53}); err != nil {
			t.Fatal(err)
		}
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrConnected)
	})
	t.Run("pipe", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		_, err = Validate(int(r.Fd()), ns.cookie)
		refusal(t, err, ErrNotSocket, "is a pipe", "pass the service's listening TCP or bound UDP socket")
	})
	t.Run("regular file", func(t *testing.T) {
		f, err := os.Open("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = Inspect(int(f.Fd()))
		refusal(t, err, ErrNotSocket, "regular file")
	})
	t.Run("closed fd", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_DGRAM, 0)
		// Find a descriptor number that is surely closed: dup, then close it.
		dup, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(dup)
		_, err = Inspect(dup)
		if !errors.Is(err, unix.EBADF) {
			t.Fatalf("error = %v, want EBADF", err)
		}
		if IsRefusal(err) {
			t.Errorf("IsRefusal(%v) = true for a failed system call", err)
		}
	})
}

func TestMPTCP(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t)
	// A new namespace starts with net.mptcp.enabled=1 on every kernel
	// that has MPTCP (net/mptcp/ctrl.c), so a socket must work here.
	probe := ns.probeSocket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
	testenv.RequireFeature(t, testenv.Feature{
		Name: "MPTCP", Since: "5.6", Config: "CONFIG_MPTCP",
		Probe: func() error {
			if err := probe(); err != nil {
				v, serr := ns.sysctl("net/mptcp/enabled")
				return fmt.Errorf("%w (net.mptcp.enabled in a new namespace: %q %v)", err, v, serr)
			}
			return nil
		},
	})

	const fix = "Go 1.24+ net.Listen creates MPTCP sockets by default; use net.ListenConfig with SetMultipathTCP(false), or GODEBUG=multipathtcp=0"

	t.Run("raw mptcp listener", func(t *testing.T) {
		fd := mustSocket(t, ns, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			t.Fatal(err)
		}
		info, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrMPTCP, fix, "protocol 262")
		if info.Family != binding.IPv4 {
			t.Errorf("partial info family = %v", info.Family)
		}
	})
	t.Run("go default listener", func(t *testing.T) {
		if strings.Contains(os.Getenv("GODEBUG"), "multipathtcp") {
			t.Skip("GODEBUG sets multipathtcp; Go's default does not apply")
		}
		var lc net.ListenConfig
		fd, _ := ns.listen(t, &lc, "tcp", "127.0.0.1:0")
		_, err := Validate(fd, ns.cookie)
		refusal(t, err, ErrMPTCP, fix)
	})
	t.Run("opted out", func(t *testing.T) {
		fd, _ := ns.listen(t, listenConfig(false), "tcp", "127.0.0.1:0")
		if _, err := Validate(fd, ns.cookie); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWrongNamespace(t *testing.T) {
	t.Parallel()
	a, b := newTestNS(t), newTestNS(t)
	if a.cookie == b.cookie {
		t.Fatalf("two namespaces share cookie %d", a.cookie)
	}
	var inside uint64
	if err := a.do(func() (err error) {
		inside, err = netns.ThreadCookie()
		return err
	}); err != nil || inside != a.cookie {
		t.Fatalf("netns.ThreadCookie inside the namespace = %d, %v; want %d", inside, err, a.cookie)
	}
	host, err := netns.ThreadCookie()
	if err != nil {
		t.Fatal(err)
	}
	if host == a.cookie || host == b.cookie {
		t.Fatalf("test namespace has the host's cookie %d", host)
	}

	fd, _ := a.listen(t, listenConfig(false), "tcp4", "127.0.0.1:0")
	if _, err := Validate(fd, a.cookie); err != nil {
		t.Fatalf("Validate in own namespace: %v", err)
	}
	info, err := Validate(fd, b.cookie)
	refusal(t, err, ErrWrongNamespace, "create the socket inside the namespace switchyardd serves")
	if info.NetNSCookie != a.cookie {
		t.Errorf("NetNSCookie = %d, want %d", info.NetNSCookie, a.cookie)
	}

	// A wrong-namespace socket that is also unsuitable reports the namespace:
	// it is the more fundamental mistake.
	ufd := mustSocket(t, a, unix.AF_INET, unix.SOCK_DGRAM, 0)
	_, err = Validate(ufd, b.cookie)
	refusal(t, err, ErrWrongNamespace)

	if _, err := Validate(fd, 0); err == nil || IsRefusal(err) {
		t.Errorf("Validate with cookie 0: %v, want a usage error", err)
	}
}

func TestCheckZeroInfo(t *testing.T) {
	t.Parallel()
	if err := (Info{}).Check(); !errors.Is(err, ErrUnsupportedProtocol) {
		t.Errorf("Check of zero Info = %v", err)
	}
}
