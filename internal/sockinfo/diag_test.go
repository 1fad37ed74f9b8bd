package sockinfo

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// Endpoints finds the namespace's listening TCP and bound UDP sockets by
// cookie, with their addresses, and nothing of another namespace.
func TestEndpoints(t *testing.T) {
	ns := newTestNS(t)
	other := newTestNS(t)
	mk := func(ns *testNS, family, typ int, sa unix.Sockaddr) (int, uint64) {
		t.Helper()
		var fd int
		err := ns.do(func() error {
			var err error
			if fd, err = unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0); err != nil {
				return err
			}
			if err := unix.Bind(fd, sa); err != nil {
				return err
			}
			if typ == unix.SOCK_STREAM {
				return unix.Listen(fd, 8)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			t.Fatal(err)
		}
		return fd, cookie
	}
	_, tcp4 := mk(ns, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8081})
	_, udp6 := mk(ns, unix.AF_INET6, unix.SOCK_DGRAM, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16(), Port: 5353})
	_, elsewhere := mk(other, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8082})

	var eps map[uint64]netip.AddrPort
	if err := ns.do(func() (err error) { eps, err = Endpoints(); return err }); err != nil {
		t.Fatal(err)
	}
	for cookie, want := range map[uint64]netip.AddrPort{
		tcp4: netip.MustParseAddrPort("127.0.0.1:8081"),
		udp6: netip.MustParseAddrPort("[::1]:5353"),
	} {
		if got, ok := eps[cookie]; !ok || got != want {
			t.Errorf("socket %d: %+v (found %v), want %+v", cookie, got, ok, want)
		}
	}
	if ep, ok := eps[elsewhere]; ok {
		t.Errorf("a socket of another namespace is listed: %+v", ep)
	}
}

// parseDiagMsg takes any bytes without panicking and reads only a whole
// message of a known family.
func FuzzParseDiagMsg(f *testing.F) {
	msg := make([]byte, diagMsgLen)
	msg[0] = unix.AF_INET
	f.Add(msg)
	f.Add(msg[:diagMsgLen-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, ep, ok := parseDiagMsg(b)
		if ok && (len(b) < diagMsgLen || !ep.IsValid()) {
			t.Fatalf("accepted %x as %+v", b, ep)
		}
	})
}
