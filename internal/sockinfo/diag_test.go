package sockinfo

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Endpoints finds the namespace's listening TCP and bound UDP sockets by
// cookie, with their addresses, and nothing of another namespace.
func TestEndpoints(t *testing.T) {
	ns := newTestNS(t)
	other := newTestNS(t)
	// The UDP socket is made with fsuid 65534, which the kernel records as
	// its owner; the thread's fsuid is put back before it returns to Go.
	const udpOwner = 65534
	mk := func(ns *testNS, family, typ int, sa unix.Sockaddr) (int, uint64) {
		t.Helper()
		var fd int
		err := ns.do(func() error {
			var err error
			if typ == unix.SOCK_DGRAM {
				if err := unix.Setfsuid(udpOwner); err != nil {
					return err
				}
			}
			fd, err = unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
			if typ == unix.SOCK_DGRAM {
				if err := unix.Setfsuid(os.Geteuid()); err != nil {
					return err
				}
			}
			if err != nil {
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
	tcp4fd, tcp4 := mk(ns, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8081})
	udp6fd, udp6 := mk(ns, unix.AF_INET6, unix.SOCK_DGRAM, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16(), Port: 5353})
	_, elsewhere := mk(other, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 8082})

	// An established connection to the listener, not accepted yet.
	client, err := ns.DialTCP("127.0.0.1:8081", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	var eps map[uint64]netip.AddrPort
	if err := ns.do(func() (err error) { eps, err = Endpoints(); return err }); err != nil {
		t.Fatal(err)
	}
	var socks map[uint64]DiagSocket
	if err := ns.do(func() (err error) { socks, err = Sockets(); return err }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		cookie uint64
		fd     int
		uid    int
	}{{tcp4, tcp4fd, os.Geteuid()}, {udp6, udp6fd, udpOwner}} {
		var st unix.Stat_t
		if err := unix.Fstat(want.fd, &st); err != nil {
			t.Fatal(err)
		}
		if s := socks[want.cookie]; s.Inode != uint32(st.Ino) || s.UID != uint32(want.uid) {
			t.Errorf("socket %d: inode %d uid %d, want %d and %d", want.cookie, s.Inode, s.UID, st.Ino, want.uid)
		}
	}
	// A connection to the listener is no listener: only the listening
	// socket of that port is listed.
	for _, s := range socks {
		if s.Local.Port() == 8081 && s.Inode != socks[tcp4].Inode {
			t.Errorf("an accepted or connecting socket is listed: %+v", s)
		}
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
		_, s, ok := parseDiagMsg(b)
		if ok && (len(b) < diagMsgLen || !s.Local.IsValid()) {
			t.Fatalf("accepted %x as %+v", b, s)
		}
	})
}

// A dump the kernel marks as interrupted is run again, and only a whole
// run's sockets count; one that never completes is an error.
func TestRetryInterrupted(t *testing.T) {
	out := map[uint64]DiagSocket{}
	runs := 0
	err := retryInterrupted(out, func(m map[uint64]DiagSocket) error {
		runs++
		m[uint64(runs)] = DiagSocket{Inode: uint32(runs)}
		if runs < 3 {
			return netlink.ErrDumpInterrupted
		}
		return nil
	})
	if err != nil || runs != 3 || len(out) != 1 || out[3].Inode != 3 {
		t.Errorf("after %d runs: %v, %+v; want the third run's one socket", runs, err, out)
	}

	out = map[uint64]DiagSocket{}
	err = retryInterrupted(out, func(m map[uint64]DiagSocket) error {
		m[1] = DiagSocket{}
		return netlink.ErrDumpInterrupted
	})
	if !errors.Is(err, netlink.ErrDumpInterrupted) || !strings.Contains(err.Error(), "5 attempts") || len(out) != 0 {
		t.Errorf("always interrupted: %v, %+v", err, out)
	}
}
