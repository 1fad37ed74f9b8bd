package testenv_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.CheckFDLeaks(m)) }

const timeout = 5 * time.Second

// accepted is what the server side of a test connection saw.
type accepted struct {
	local, remote net.Addr
	err           error
}

// serveOnce accepts one connection, echoes one line back and reports the
// addresses the accepted socket had.
func serveOnce(ln *net.TCPListener) <-chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		_ = ln.SetDeadline(time.Now().Add(timeout))
		c, err := ln.Accept()
		if err != nil {
			ch <- accepted{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			_, err = io.WriteString(c, line)
		}
		ch <- accepted{local: c.LocalAddr(), remote: c.RemoteAddr(), err: err}
	}()
	return ch
}

// roundTrip dials addr from ns, sends a line, checks the echo, and returns
// what the server saw.
func roundTrip(t *testing.T, from *testenv.NetNS, ln *net.TCPListener, addr string) accepted {
	t.Helper()
	done := serveOnce(ln)
	c, err := from.DialTCP(addr, timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	const msg = "hello switchyard\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if got != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	a := <-done
	if a.err != nil {
		t.Fatalf("server: %v", a.err)
	}
	return a
}

func port(t *testing.T, a net.Addr) string {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(int(ap.Port()))
}

func TestLocalRouteTCP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, listen, prefix, dial string
	}{
		{"ipv4", "0.0.0.0:0", "10.1.0.0/16", "10.1.2.3"},
		{"ipv6", "[::]:0", "2001:db8::/64", "2001:db8::42"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := testenv.NewNetNS(t)
			ln := ns.ListenTCP(t, tc.listen)
			ns.AddLocalRoute(t, netip.MustParsePrefix(tc.prefix))

			addr := net.JoinHostPort(tc.dial, port(t, ln.Addr()))
			a := roundTrip(t, ns, ln, addr)
			if got := a.local.(*net.TCPAddr).IP.String(); got != tc.dial {
				t.Errorf("accepted conn LocalAddr = %s, want %s (the address dialled)", got, tc.dial)
			}

			// An address outside the prefix has no route.
			outside := "10.2.0.1"
			if strings.Contains(tc.dial, ":") {
				outside = "2001:db9::1"
			}
			c, err := ns.DialTCP(net.JoinHostPort(outside, port(t, ln.Addr())), timeout)
			if err == nil {
				c.Close()
				t.Errorf("dial %s outside the local route succeeded", outside)
			}
		})
	}
}

func TestLocalRouteUDP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, listen, prefix, dial string
	}{
		{"ipv4", "0.0.0.0:0", "10.3.0.0/24", "10.3.0.77"},
		{"ipv6", "[::]:0", "2001:db8:3::/64", "2001:db8:3::77"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := testenv.NewNetNS(t)
			srv := ns.ListenUDP(t, tc.listen)
			ns.AddLocalRoute(t, netip.MustParsePrefix(tc.prefix))
			v6 := strings.Contains(tc.dial, ":")
			setOrigDstOptions(t, srv, v6)

			cl, err := ns.DialUDP(net.JoinHostPort(tc.dial, port(t, srv.LocalAddr())))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			_ = cl.SetDeadline(time.Now().Add(timeout))
			_ = srv.SetDeadline(time.Now().Add(timeout))

			if _, err := cl.Write([]byte("ping")); err != nil {
				t.Fatalf("write: %v", err)
			}
			buf := make([]byte, 64)
			oob := make([]byte, 256)
			n, oobn, _, from, err := srv.ReadMsgUDPAddrPort(buf, oob)
			if err != nil {
				t.Fatalf("server read: %v", err)
			}
			if string(buf[:n]) != "ping" {
				t.Fatalf("server got %q", buf[:n])
			}
			dst := origDst(t, oob[:oobn])
			if dst.String() != tc.dial {
				t.Errorf("datagram sent to %s, want %s", dst, tc.dial)
			}
			if from.String() != cl.LocalAddr().String() {
				t.Errorf("datagram from %s, want client %s", from, cl.LocalAddr())
			}

			// Reply from the address the client dialled. For IPv4 the
			// kernel would pick it anyway (a local route's preferred
			// source is the destination); for IPv6 it picks ::1 and
			// the connected client drops the reply.
			var pktinfo []byte
			if v6 {
				pktinfo = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: dst.As16()})
			} else {
				pktinfo = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: dst.As4()})
			}
			if _, _, err := srv.WriteMsgUDPAddrPort([]byte("pong"), pktinfo, from); err != nil {
				t.Fatalf("server write: %v", err)
			}
			n, err = cl.Read(buf)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			if string(buf[:n]) != "pong" {
				t.Fatalf("client got %q", buf[:n])
			}
		})
	}
}

func setOrigDstOptions(t *testing.T, c *net.UDPConn, v6 bool) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
			// IPv6 accepts an IPV6_PKTINFO source only if it is an
			// assigned address, or with freebind: an address that
			// is local through a local route is neither.
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
			}
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR, 1)
		}
	})
	if err = errors.Join(err, serr); err != nil {
		t.Fatalf("set RECVORIGDSTADDR: %v", err)
	}
}

func origDst(t *testing.T, oob []byte) netip.Addr {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		sa, err := unix.ParseOrigDstAddr(&msgs[i])
		if err != nil {
			continue
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			return netip.AddrFrom4(sa.Addr)
		case *unix.SockaddrInet6:
			return netip.AddrFrom16(sa.Addr)
		}
	}
	t.Fatal("no original destination address in control messages")
	return netip.Addr{}
}

func TestVethPair(t *testing.T) {
	t.Parallel()
	a := testenv.NewNetNS(t)
	b := testenv.NewNetNS(t)
	testenv.NewVethPair(t, a, b, "va", "vb",
		netip.MustParsePrefix("10.99.0.1/24"), netip.MustParsePrefix("10.99.0.2/24"))
	a.AddAddr(t, "va", netip.MustParsePrefix("fd99::1/64"))
	b.AddAddr(t, "vb", netip.MustParsePrefix("fd99::2/64"))

	ln := b.ListenTCP(t, "[::]:0")
	for _, tc := range []struct{ client, server string }{
		{"10.99.0.1", "10.99.0.2"},
		{"fd99::1", "fd99::2"},
	} {
		acc := roundTrip(t, a, ln, net.JoinHostPort(tc.server, port(t, ln.Addr())))
		local := acc.local.(*net.TCPAddr).IP
		remote := acc.remote.(*net.TCPAddr).IP
		if local.String() != tc.server || remote.String() != tc.client {
			t.Errorf("server saw %s -> %s, want %s -> %s", remote, local, tc.client, tc.server)
		}
	}

	// The veth ends live in their own namespaces only.
	out, err := a.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, out)
	}
	if !strings.Contains(string(out), " va@") || strings.Contains(string(out), " vb@") {
		t.Errorf("namespace a links:\n%s", out)
	}
}

func TestCommand(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	ns.AddAddr(t, "lo", netip.MustParsePrefix("192.0.2.7/32"))

	out, err := ns.Command("ip", "-o", "addr").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -o addr: %v: %s", err, out)
	}
	s := string(out)
	for _, want := range []string{"lo    inet 127.0.0.1/8", "192.0.2.7/32"} {
		if !strings.Contains(s, want) {
			t.Errorf("ip -o addr output lacks %q:\n%s", want, s)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if f := strings.Fields(line); len(f) < 2 || f[1] != "lo" {
			t.Errorf("interface other than lo in a fresh namespace: %s", line)
		}
	}

	// nsenter leaves /sys alone: the process sees the test's bpffs.
	dir := testenv.BPFFS(t)
	out, err = ns.Command("stat", "-f", "-c", "%t", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("stat: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != strconv.FormatUint(unix.BPF_FS_MAGIC, 16) {
		t.Errorf("bpffs seen from Command has type %s", got)
	}
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestHostNamespaceUnaffected(t *testing.T) {
	t.Parallel()
	host := nsInode(t, "/proc/self/ns/net")
	ns := testenv.NewNetNS(t)
	var fdStat unix.Stat_t
	if err := unix.Fstat(ns.FD(), &fdStat); err != nil {
		t.Fatal(err)
	}
	if fdStat.Ino == host {
		t.Fatal("new namespace is the host namespace")
	}

	// The test goroutine's thread, pinned for the comparison.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := nsInode(t, "/proc/thread-self/ns/net")

	var inside uint64
	if err := ns.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		inside = st.Ino
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after := nsInode(t, "/proc/thread-self/ns/net")
	if before != host || after != host {
		t.Errorf("caller's thread namespace: before %d, after %d, host %d", before, after, host)
	}
	if inside != fdStat.Ino {
		t.Errorf("Do ran in namespace %d, want %d", inside, fdStat.Ino)
	}

	// Hammer Do, then check that every thread the scheduler hands out is
	// still in the host namespace (no thread went back to the pool).
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { _ = ns.Do(func() error { return nil }) })
	}
	wg.Wait()
	testenv.CheckThreads(t, 200, func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		if st.Ino != host {
			return fmt.Errorf("a scheduler thread is in namespace %d, host is %d", st.Ino, host)
		}
		return nil
	})
}

func TestCookie(t *testing.T) {
	t.Parallel()
	a := testenv.NewNetNS(t)
	b := testenv.NewNetNS(t)
	if a.Cookie() == 0 || a.Cookie() == b.Cookie() {
		t.Fatalf("cookies: a=%d b=%d", a.Cookie(), b.Cookie())
	}

	// A socket made in the namespace reports the same cookie.
	ln := a.ListenTCP(t, "127.0.0.1:0")
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	var serr error
	var cookie uint64
	if err := rc.Control(func(fd uintptr) {
		proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if serr == nil {
			l := uint32(unsafe.Sizeof(cookie))
			_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE,
				uintptr(unsafe.Pointer(&cookie)), uintptr(unsafe.Pointer(&l)), 0)
			if errno != 0 {
				serr = errno
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	if proto != unix.IPPROTO_TCP {
		t.Errorf("listener protocol = %d, want IPPROTO_TCP (%d): MPTCP must be off", proto, unix.IPPROTO_TCP)
	}
	if cookie != a.Cookie() {
		t.Errorf("SO_NETNS_COOKIE of a socket in the namespace = %d, want %d", cookie, a.Cookie())
	}
}

func TestDoErrorsAndPanics(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)

	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want sentinel", err)
	}
	if err := ns.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Error("Do with runtime.Goexit returned nil")
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "boom") {
				t.Errorf("recovered %v, want the panic from fn", r)
			}
		}()
		_ = ns.Do(func() error { panic("boom") })
	}()
}

func TestCleanup(t *testing.T) {
	testenv.RequireRoot(t) // the checks below run after the subtest
	var dir string
	var nsIno uint64
	t.Run("use", func(t *testing.T) {
		dir = testenv.BPFFS(t)
		ns := testenv.NewNetNS(t)
		var st unix.Stat_t
		if err := unix.Fstat(ns.FD(), &st); err != nil {
			t.Fatal(err)
		}
		nsIno = st.Ino
		ns.ListenTCP(t, "127.0.0.1:0")

		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			t.Fatal(err)
		}
		if fs.Type != unix.BPF_FS_MAGIC {
			t.Fatalf("statfs type %#x, want BPF_FS_MAGIC", fs.Type)
		}
		if err := os.Mkdir(dir+"/sub", 0o700); err != nil {
			t.Fatalf("mkdir in bpffs: %v", err)
		}
		// Two instances are independent.
		other := testenv.BPFFS(t)
		if _, err := os.Stat(other + "/sub"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("second bpffs sees the first one's directory: %v", err)
		}
	})

	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bpffs dir %s still there after cleanup: %v", dir, err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), dir) {
		t.Errorf("bpffs %s still mounted after cleanup", dir)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", nsIno)
	for _, e := range entries {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == want {
			t.Errorf("fd %s still holds the namespace after cleanup", e.Name())
		}
	}
}

func TestParallel(t *testing.T) {
	t.Parallel()
	for i := range 6 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			ns := testenv.NewNetNS(t)
			dir := testenv.BPFFS(t)
			if err := os.Mkdir(dir+"/x", 0o700); err != nil {
				t.Fatal(err)
			}
			ln := ns.ListenTCP(t, "0.0.0.0:0")
			// Every namespace may use the same prefix.
			ns.AddLocalRoute(t, netip.MustParsePrefix("10.50.0.0/16"))

			// Concurrent Do calls on one namespace.
			addr := net.JoinHostPort("10.50.0."+strconv.Itoa(i+1), port(t, ln.Addr()))
			const conns = 8
			var wg sync.WaitGroup
			errs := make(chan error, 2*conns)
			for range conns {
				wg.Go(func() {
					c, err := ns.DialTCP(addr, timeout)
					if err != nil {
						errs <- err
						return
					}
					c.Close()
				})
			}
			for range conns {
				c, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != "10.50.0."+strconv.Itoa(i+1) {
					t.Errorf("accepted on %s", got)
				}
				c.Close()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

func TestDoAfterCleanup(t *testing.T) {
	testenv.RequireRoot(t)
	var ns *testenv.NetNS
	t.Run("inner", func(t *testing.T) { ns = testenv.NewNetNS(t) })
	if err := ns.Do(func() error { return nil }); !errors.Is(err, testenv.ErrClosed) {
		t.Errorf("Do after cleanup = %v, want ErrClosed", err)
	}
	if ns.FD() != -1 {
		t.Errorf("FD after cleanup = %d, want -1", ns.FD())
	}
}
