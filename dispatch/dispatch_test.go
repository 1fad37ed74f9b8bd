package dispatch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// Connections to several addresses of a prefix, ports of a range and any
// port of an every-port binding reach the registered socket, which sees the
// address the client dialled.
func TestTCPReachesRegisteredSocket(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, listen, prefix string
		addrs                []string
	}{
		{"ipv4", "127.0.0.1:0", "10.1.0.0/16", []string{"10.1.0.1", "10.1.200.7", "10.1.255.254"}},
		{"ipv6", "[::1]:0", "2001:db8:1::/48", []string{"2001:db8:1::1", "2001:db8:1:ffff::42"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			ranged := e.tcpServer("ranged", tc.listen)
			anyport := e.tcpServer("anyport", tc.listen)
			e.bind("ranged", "tcp", tc.prefix, "8000-8999")
			e.bind("anyport", "tcp", tc.prefix, "*")
			mustRegister(t, e.d, "ranged", ranged)
			mustRegister(t, e.d, "anyport", anyport)
			for _, a := range tc.addrs {
				for _, port := range []int{8000, 8443, 8999, 1, 80, 7999, 9000, 65535} {
					want := "anyport"
					if port >= 8000 && port <= 8999 {
						want = "ranged"
					}
					dst := net.JoinHostPort(a, fmt.Sprint(port))
					label, local, err := e.dialLabel(dst)
					if err != nil {
						t.Fatalf("dial %s: %v", dst, err)
					}
					if label != want || local != dst {
						t.Errorf("dial %s: answered by %q seeing %s, want %q seeing %s", dst, label, local, want, dst)
					}
				}
			}
		})
	}
}

func TestUDPReachesRegisteredSocket(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, listen, prefix string
		addrs                []string
	}{
		{"ipv4", "127.0.0.1:0", "192.0.2.0/24", []string{"192.0.2.1", "192.0.2.53", "192.0.2.254"}},
		{"ipv6", "[::1]:0", "fd00:53::/64", []string{"fd00:53::1", "fd00:53::ffff:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			got := make(chan datagram, 16)
			dns := e.udpServer("dns", tc.listen, got)
			all := e.udpServer("all", tc.listen, got)
			e.bind("dns", "udp", tc.prefix, "53")
			e.bind("all", "udp", tc.prefix, "*")
			mustRegister(t, e.d, "dns", dns)
			mustRegister(t, e.d, "all", all)
			for i, a := range tc.addrs {
				for _, port := range []int{53, 54, 5353, 40000} {
					want := "all"
					if port == 53 {
						want = "dns"
					}
					dst := netip.AddrPortFrom(netip.MustParseAddr(a), uint16(port))
					payload := fmt.Sprintf("datagram %d %d", i, port)
					e.sendUDP(dst.String(), payload)
					d, ok := recvDatagram(t, got)
					if !ok {
						t.Fatalf("datagram to %s did not arrive", dst)
					}
					if d.label != want || d.payload != payload || d.dst != dst {
						t.Errorf("datagram to %s: got %q at %q for %s, want %q at %q", dst, d.payload, d.label, d.dst, payload, want)
					}
				}
			}
		})
	}
}

// A dual-stack IPv6 socket serves IPv4 bindings; an IPv6-only one does not.
func TestDualStackServesIPv4(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ln := e.tcpServer("dual", "[::]:0")
	e.bind("dual", "tcp", "10.9.0.0/24", "*")
	mustRegister(t, e.d, "dual", ln)
	label, local, err := e.dialLabel("10.9.0.7:4242")
	if err != nil || label != "dual" || !sameAddr(local, "10.9.0.7:4242") {
		t.Fatalf("dual-stack: got %q %q %v", label, local, err)
	}

	v6only := listenWith(t, e.ns, "tcp6", "[::1]:0", func(fd int) {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	})
	e.bind("v6only", "tcp", "10.9.1.0/24", "*")
	mustRegister(t, e.d, "v6only", v6only)
	if _, _, err := e.dialLabel("10.9.1.7:4242"); !isRefused(err) {
		t.Fatalf("IPv4 to a label with only an IPv6-only socket: got %v, want connection refused", err)
	}
}

type precedenceCase struct {
	dst  string
	want string // label, or "" for refused by the kernel (no binding)
}

// precedenceSpecs are bindings that exercise every precedence rule, and
// precedenceCases what traffic to each destination must reach.
var precedenceSpecs = [][4]string{
	// One port beats a range, which beats every port, at one prefix.
	{"single", "tcp", "10.1.0.0/24", "80"},
	{"range", "tcp", "10.1.0.0/24", "1-1000"},
	{"any", "tcp", "10.1.0.0/24", "*"},
	// A longer prefix beats a shorter port-specific one.
	{"short443", "tcp", "10.2.0.0/16", "443"},
	{"long-any", "tcp", "10.2.3.0/24", "*"},
	// Nested ranges: the innermost wins.
	{"outer", "tcp", "10.3.0.0/24", "1000-2000"},
	{"inner", "tcp", "10.3.0.0/24", "1500-1600"},
	{"innermost", "tcp", "10.3.0.0/24", "1550"},
	// A longer prefix without the port falls through to a shorter one.
	{"host80", "tcp", "10.4.0.5", "80"},
	{"net-any", "tcp", "10.4.0.0/16", "*"},
	// IPv6 every-address binding must not capture IPv4.
	{"v6-all", "tcp", "::/0", "*"},
	{"v6-host", "tcp", "2001:db8::1", "22"},
	// A udp binding does not capture tcp.
	{"udp-only", "udp", "10.5.0.0/24", "*"},
}

var precedenceCases = []precedenceCase{
	{"10.1.0.9:80", "single"}, {"10.1.0.9:81", "range"}, {"10.1.0.9:1000", "range"},
	{"10.1.0.9:1001", "any"}, {"10.1.0.9:65535", "any"},
	{"10.2.3.4:443", "long-any"}, {"10.2.4.4:443", "short443"}, {"10.2.4.4:444", ""},
	{"10.3.0.1:999", ""}, {"10.3.0.1:1000", "outer"}, {"10.3.0.1:1499", "outer"},
	{"10.3.0.1:1500", "inner"}, {"10.3.0.1:1549", "inner"}, {"10.3.0.1:1550", "innermost"},
	{"10.3.0.1:1551", "inner"}, {"10.3.0.1:1601", "outer"}, {"10.3.0.1:2000", "outer"},
	{"10.3.0.1:2001", ""},
	{"10.4.0.5:80", "host80"}, {"10.4.0.5:81", "net-any"}, {"10.4.0.6:80", "net-any"},
	{"10.6.0.1:7777", "plain"}, {"10.6.0.1:7778", ""},
	{"10.5.0.1:7777", "plain"},
	{"[2001:db8::1]:22", "v6-host"}, {"[2001:db8::1]:23", "v6-all"}, {"[fd00::1]:7777", "v6-all"},
}

// Every precedence rule, checked with real connections and against the
// reference implementation binding.Lookup.
func TestPrecedence(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bs := e.precedenceBindings()
	if _, err := e.d.AddBindings(bs...); err != nil {
		t.Fatal(err)
	}
	e.checkPrecedence(bs)
}

// precedenceBindings parses precedenceSpecs and registers a socket for each
// TCP label.
func (e *env) precedenceBindings() []binding.Binding {
	t := e.t
	t.Helper()
	labels := map[string]bool{}
	var bs []binding.Binding
	for _, s := range precedenceSpecs {
		b, err := binding.Parse(s[0], s[1], s[2], s[3])
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		if b.Protocol == binding.TCP && !labels[s[0]] {
			labels[s[0]] = true
			mustRegister(t, e.d, s[0], e.tcpServer(s[0], "[::]:0"))
		}
	}
	return bs
}

// checkPrecedence dials every destination of precedenceCases, with bs (a
// superset of precedenceSpecs) bound.
func (e *env) checkPrecedence(bs []binding.Binding) {
	t := e.t
	t.Helper()
	// An ordinary socket on IPv4 port 7777 catches what no binding takes.
	e.tcpServer("plain", "0.0.0.0:7777")

	for _, c := range precedenceCases {
		ap := netip.MustParseAddrPort(c.dst)
		ref, ok := binding.Lookup(bs, binding.TCP, ap)
		refLabel := ""
		if ok {
			refLabel = ref.Label
		}
		if c.want != "plain" && refLabel != c.want {
			t.Fatalf("test table disagrees with binding.Lookup for %s: table %q, Lookup %q", c.dst, c.want, refLabel)
		}
		label, local, err := e.dialLabel(c.dst)
		switch {
		case c.want == "":
			if !isRefused(err) {
				t.Errorf("%s: got %q (%v), want connection refused", c.dst, label, err)
			}
		case err != nil:
			t.Errorf("%s: %v, want %q", c.dst, err, c.want)
		case label != c.want:
			t.Errorf("%s: answered by %q, want %q", c.dst, label, c.want)
		case !sameAddr(local, c.dst):
			t.Errorf("%s: server saw %s", c.dst, local)
		}
	}
}

// Random bindings: the kernel's choice equals the reference for every probe.
func TestPrecedenceMatchesReference(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var bs []binding.Binding
	prefixes := []string{"10.7.0.0/16", "10.7.1.0/24", "10.7.1.128/25", "10.7.1.5", "10.0.0.0/8"}
	portsets := []string{"*", "80", "443", "8000-8999", "8080", "8000-8099", "1-1023"}
	n := 0
	for _, p := range prefixes {
		for i, ps := range portsets {
			if (n+i)%3 == 0 {
				continue
			}
			label := fmt.Sprintf("l%d", len(bs)%6)
			b, err := binding.Parse(label, "tcp", p, ps)
			if err != nil {
				t.Fatal(err)
			}
			bs = append(bs, b)
		}
		n++
	}
	if _, err := e.d.AddBindings(bs...); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		l := fmt.Sprintf("l%d", i)
		mustRegister(t, e.d, l, e.tcpServer(l, "127.0.0.1:0"))
	}
	for _, a := range []string{"10.7.1.5", "10.7.1.6", "10.7.1.200", "10.7.2.1", "10.9.9.9"} {
		for _, port := range []uint16{22, 80, 443, 1023, 1024, 8000, 8080, 8099, 8100, 8999, 9000} {
			ap := netip.AddrPortFrom(netip.MustParseAddr(a), port)
			ref, ok := binding.Lookup(bs, binding.TCP, ap)
			label, _, err := e.dialLabel(ap.String())
			if !ok {
				if !isRefused(err) {
					t.Errorf("%s: no binding matches, got %q %v", ap, label, err)
				}
				continue
			}
			if err != nil || label != ref.Label {
				t.Errorf("%s: got %q (%v), want %q from %s", ap, label, err, ref.Label, ref)
			}
		}
	}
}

func TestAmbiguousBindRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("a", "tcp", "10.1.0.0/24", "100-200")
	b, _ := binding.Parse("b", "tcp", "10.1.0.0/24", "150-250")
	_, err := e.d.AddBindings(b)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "a tcp 10.1.0.0/24 100-200") {
		t.Fatalf("partial overlap: got %v, want a conflict naming a's binding", err)
	}
	// Same key, other label.
	c, _ := binding.Parse("c", "tcp", "10.1.0.0/24", "100-200")
	if _, err := e.d.AddBindings(c); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "label a") {
		t.Fatalf("rebinding to another label: got %v", err)
	}
	// Nested and disjoint ranges, other protocol or prefix: fine.
	for _, s := range [][4]string{{"d", "tcp", "10.1.0.0/24", "120-130"}, {"e", "tcp", "10.1.0.0/24", "300-400"},
		{"f", "udp", "10.1.0.0/24", "150-250"}, {"g", "tcp", "10.1.0.0/25", "150-250"}} {
		e.bind(s[0], s[1], s[2], s[3])
	}
	got, err := e.d.Bindings()
	if err != nil || len(got) != 5 {
		t.Fatalf("bindings after refusals: %v %v", got, err)
	}
}

// A binding whose label has no socket refuses TCP at once and counts it;
// closing the service's socket empties the destination.
func TestMissingSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("down", "tcp", "10.1.0.0/24", "*")
	// An ordinary listener on the same port must not get the traffic.
	e.tcpServer("bystander", "0.0.0.0:8080")

	start := time.Now()
	_, _, err := e.dialLabel("10.1.0.1:8080")
	if !isRefused(err) {
		t.Fatalf("no socket: got %v, want connection refused", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("refusal took %v", el)
	}
	cs, _, err := e.d.Counters()
	if err != nil || cs["down"].Missing != 1 || cs["down"].Lookups != 1 {
		t.Fatalf("counters %+v %v, want 1 lookup and 1 missing", cs["down"], err)
	}

	ln := e.tcpServer("down", "127.0.0.1:0")
	mustRegister(t, e.d, "down", ln)
	if label, _, err := e.dialLabel("10.1.0.1:8080"); err != nil || label != "down" {
		t.Fatalf("after register: %q %v", label, err)
	}
	if ds, _ := e.d.Destinations(); len(ds) != 1 || ds[0].Label != "down" || ds[0].Protocol != binding.TCP {
		t.Fatalf("destinations %+v", ds)
	}
	ln.Close()
	if ds, _ := e.d.Destinations(); len(ds) != 0 {
		t.Fatalf("destinations after the service closed its socket: %+v", ds)
	}
	if _, _, err := e.dialLabel("10.1.0.1:8080"); !isRefused(err) {
		t.Fatalf("after close: got %v, want connection refused", err)
	}
	cs, _, _ = e.d.Counters()
	if c := cs["down"]; c.Lookups != 3 || c.Hits != 1 || c.Missing != 2 {
		t.Fatalf("counters %+v, want 3 lookups, 1 hit, 2 missing", c)
	}
}

func TestNoBindingLeavesKernelLookup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("other", "tcp", "10.2.0.0/16", "*")
	e.tcpServer("plain", "10.1.0.1:9000")
	e.ns.AddAddr(t, "lo", netip.MustParsePrefix("2001:db8::5/128"))
	e.tcpServer("plain6", "[2001:db8::5]:9000")
	for _, dst := range []string{"10.1.0.1:9000", "[2001:db8::5]:9000"} {
		label, _, err := e.dialLabel(dst)
		if err != nil || !strings.HasPrefix(label, "plain") {
			t.Fatalf("%s: %q %v", dst, label, err)
		}
	}
	_, unmatched, err := e.d.Counters()
	if err != nil || unmatched < 2 {
		t.Fatalf("unmatched lookups %d %v", unmatched, err)
	}
}

// A member of a SO_REUSEPORT group stands for the group.
func TestReusePortGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reuse := func(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }
	a := listenWith(t, e.ns, "tcp4", "127.0.0.1:0", reuse)
	b := listenWith(t, e.ns, "tcp4", a.Addr().String(), reuse)
	counts := map[string]int{}
	var mu sync.Mutex
	for name, ln := range map[string]*net.TCPListener{"a": a, "b": b} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				counts[name]++
				mu.Unlock()
				fmt.Fprint(c, "group x")
				c.Close()
			}
		}()
	}
	e.bind("group", "tcp", "10.1.0.0/24", "*")
	mustRegister(t, e.d, "group", a)
	for i := range 64 {
		if _, _, err := e.dialLabel(fmt.Sprintf("10.1.0.%d:%d", i%250+1, 1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if counts["a"] == 0 || counts["b"] == 0 || counts["a"]+counts["b"] != 64 {
		t.Fatalf("connections per group member: %v, want both used", counts)
	}
}

// Each kind of socket switchyard cannot dispatch to is refused with a
// message that says what is wrong.
func TestRefusedSockets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "10.1.0.0/24", "*")
	other := testenv.NewNetNS(t)
	mk := func(ns *testenv.NetNS, domain, typ, proto int, setup func(fd int) error) int {
		var fd int
		err := ns.Do(func() error {
			var err error
			fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
			if err != nil {
				return err
			}
			if setup != nil {
				return setup(fd)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("make socket: %v", err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	bindListen := func(fd int) error {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		return unix.Listen(fd, 8)
	}
	cases := []struct {
		name, label string
		fd          int
		sentinel    error
		msg         string
	}{
		{"unix socket", "web", mk(e.ns, unix.AF_UNIX, unix.SOCK_STREAM, 0, nil), sockinfo.ErrUnsupportedFamily, "unix"},
		{"mptcp listener", "web", mk(e.ns, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP, bindListen), sockinfo.ErrMPTCP, "SetMultipathTCP(false)"},
		{"tcp not listening", "web", mk(e.ns, unix.AF_INET, unix.SOCK_STREAM, 0, nil), sockinfo.ErrNotListening, "listen"},
		{"udp unbound", "dns", mk(e.ns, unix.AF_INET, unix.SOCK_DGRAM, 0, nil), sockinfo.ErrUnbound, "bind"},
		{"udp connected", "dns", mk(e.ns, unix.AF_INET, unix.SOCK_DGRAM, 0, func(fd int) error {
			return unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 53})
		}), sockinfo.ErrConnected, "connected"},
		{"other namespace", "web", mk(other, unix.AF_INET, unix.SOCK_STREAM, 0, bindListen), sockinfo.ErrWrongNamespace, "namespace"},
		{"protocol unlike bindings", "web", mk(e.ns, unix.AF_INET, unix.SOCK_DGRAM, 0, func(fd int) error {
			return unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		}), ErrBadSocket, "the label's bindings are tcp only, and this is a udp socket"},
		{"raw socket", "web", mk(e.ns, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP, nil), sockinfo.ErrUnsupportedProtocol, "raw"},
	}
	for _, c := range cases {
		_, err := e.d.RegisterFD(c.label, c.fd)
		if !errors.Is(err, c.sentinel) || !errors.Is(err, ErrBadSocket) || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(c.msg)) {
			t.Errorf("%s: got %v, want %v mentioning %q", c.name, err, c.sentinel, c.msg)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
	if ds, _ := e.d.Destinations(); len(ds) != 0 {
		t.Fatalf("refused sockets were registered: %+v", ds)
	}
}

// Two users of one state directory at once leave it whole, and opening it
// again adopts it with dispatching intact.
func TestConcurrentUsersAndAdopt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d2 := e.open()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for w, d := range []*Dispatcher{e.d, d2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				b, _ := binding.Parse(fmt.Sprintf("w%d", w), "tcp", fmt.Sprintf("10.%d.%d.0/24", 10+w, i), "*")
				if _, err := d.AddBindings(b); err != nil {
					errs <- err
				}
				if i%10 == 0 {
					if _, err := d.Bindings(); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, d := range []*Dispatcher{e.d, d2} {
		bs, err := d.Bindings()
		if err != nil || len(bs) != 200 {
			t.Fatalf("bindings seen: %d %v", len(bs), err)
		}
	}
	mustRegister(t, d2, "w0", e.tcpServer("w0", "127.0.0.1:0"))
	mustRegister(t, e.d, "w1", e.tcpServer("w1", "127.0.0.1:0"))
	e.d.Close()
	d2.Close()

	d3 := e.open()
	bs, err := d3.Bindings()
	if err != nil || len(bs) != 200 {
		t.Fatalf("adopted bindings: %d %v", len(bs), err)
	}
	for _, c := range []precedenceCase{{"10.10.99.1:80", "w0"}, {"10.11.0.1:443", "w1"}} {
		if label, _, err := e.dialLabel(c.dst); err != nil || label != c.want {
			t.Fatalf("%s after adopt: %q %v", c.dst, label, err)
		}
	}
	// Only one program is attached to the namespace.
	if n := countSkLookupLinks(t, e); n != 1 {
		t.Fatalf("%d sk_lookup links in the namespace, want 1", n)
	}
}

func mustRegister(t testing.TB, d *Dispatcher, label string, c syscall.Conn) {
	t.Helper()
	if _, err := d.Register(label, c); err != nil {
		t.Fatalf("register %s: %v", label, err)
	}
}

func listenWith(t testing.TB, ns *testenv.NetNS, network, addr string, setup func(fd int)) *net.TCPListener {
	t.Helper()
	lc := testenv.ListenConfig()
	lc.Control = func(_, _ string, c syscall.RawConn) error { return c.Control(func(fd uintptr) { setup(int(fd)) }) }
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = lc.Listen(t.Context(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// sameAddr compares two address:port strings, treating IPv4-mapped IPv6
// addresses as IPv4.
func sameAddr(a, b string) bool {
	x, err1 := netip.ParseAddrPort(a)
	y, err2 := netip.ParseAddrPort(b)
	return err1 == nil && err2 == nil && x.Addr().Unmap() == y.Addr().Unmap() && x.Port() == y.Port()
}

func countSkLookupLinks(t testing.TB, e *env) int {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: e.ns.FD(), Attach: ebpf.AttachSkLookup})
	if err != nil {
		t.Fatalf("query sk_lookup programs: %v", err)
	}
	return len(res.Programs)
}
