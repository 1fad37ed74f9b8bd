package dispatch

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.CheckFDLeaks(m)) }

// env is one test's namespace, bpffs and dispatcher.
type env struct {
	t    testing.TB
	ns   *testenv.NetNS
	root string
	d    *Dispatcher
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ns := testenv.NewNetNS(t)
	root := testenv.BPFFS(t)
	for _, p := range []string{"10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32", "fd00::/8"} {
		ns.AddLocalRoute(t, netip.MustParsePrefix(p))
	}
	e := &env{t: t, ns: ns, root: root}
	e.d = e.open()
	return e
}

func (e *env) open() *Dispatcher {
	e.t.Helper()
	d, err := Open(e.ns.Path(), Options{Root: e.root, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		e.t.Fatalf("open dispatcher: %v", err)
	}
	e.t.Cleanup(func() { d.Close() })
	return d
}

// reopen hands check the state as a read-only dispatcher and then a
// restarted one (which recovers what a stopped change left) see it, and
// returns the restarted one.
func (e *env) reopen(check func(who string, d *Dispatcher)) *Dispatcher {
	e.t.Helper()
	ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	check("read-only", ro)
	ro.Close()
	d := e.open()
	check("restarted", d)
	return d
}

func (e *env) bind(label, proto, prefix, ports string) {
	e.t.Helper()
	b, err := binding.Parse(label, proto, prefix, ports)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.d.AddBindings(b); err != nil {
		e.t.Fatalf("bind %s: %v", b, err)
	}
}

// tcpServer accepts connections and answers each with its label and the
// local address the connection has, then closes it.
func (e *env) tcpServer(label, addr string) *net.TCPListener {
	e.t.Helper()
	ln := e.ns.ListenTCP(e.t, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s", label, c.LocalAddr())
			c.Close()
		}
	}()
	return ln
}

// dialLabel connects to addr and returns the label of the server that
// answered and the local address that server saw.
func (e *env) dialLabel(addr string) (label, local string, err error) {
	c, err := e.ns.DialTCP(addr, 3*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", "", err
	}
	label, local, _ = strings.Cut(string(b), " ")
	return label, local, nil
}

func isRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }

// checkDial dials dst and fails the test unless label want's server
// accepts it, or, with want "", the connection is refused.
func (e *env) checkDial(dst, want string) {
	e.t.Helper()
	label, _, err := e.dialLabel(dst)
	switch {
	case want == "" && !isRefused(err):
		e.t.Errorf("%s: got %q (%v), want connection refused", dst, label, err)
	case want != "" && (err != nil || label != want):
		e.t.Errorf("%s: got %q (%v), want %q", dst, label, err, want)
	}
}

// udpServer reports each datagram it receives with the original
// destination address.
type datagram struct {
	label, payload string
	dst            netip.AddrPort
}

func (e *env) udpServer(label, addr string, out chan<- datagram) *net.UDPConn {
	e.t.Helper()
	conn := e.ns.ListenUDP(e.t, addr)
	rc, err := conn.SyscallConn()
	if err != nil {
		e.t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
		unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
	})
	go func() {
		buf := make([]byte, 1500)
		oob := make([]byte, 256)
		for {
			n, oobn, _, _, err := conn.ReadMsgUDPAddrPort(buf, oob)
			if err != nil {
				return
			}
			out <- datagram{label, string(buf[:n]), origDst(oob[:oobn])}
		}
	}()
	return conn
}

func origDst(oob []byte) netip.AddrPort {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8:
			port := uint16(m.Data[2])<<8 | uint16(m.Data[3])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port)
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= 24:
			port := uint16(m.Data[2])<<8 | uint16(m.Data[3])
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])), port)
		}
	}
	return netip.AddrPort{}
}

func (e *env) sendUDP(addr, payload string) {
	e.t.Helper()
	c, err := e.ns.DialUDP(addr)
	if err != nil {
		e.t.Fatalf("dial udp %s: %v", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(payload)); err != nil {
		e.t.Fatalf("send udp %s: %v", addr, err)
	}
}

func recvDatagram(t testing.TB, ch <-chan datagram) (datagram, bool) {
	t.Helper()
	select {
	case d := <-ch:
		return d, true
	case <-time.After(3 * time.Second):
		return datagram{}, false
	}
}
