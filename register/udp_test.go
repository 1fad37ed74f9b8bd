package register_test

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/testenv"
	"github.com/switchyard-project/switchyard/register"
)

// udpNetNS is a namespace where 192.0.2.0/24 and 2001:db8::/64 are local
// through `local` routes on lo, without any address assigned: how prefixes
// reach switchyard on a real host.
func udpNetNS(t *testing.T) *testenv.NetNS {
	ns := testenv.NewNetNS(t)
	ns.AddLocalRoute(t, netip.MustParsePrefix("192.0.2.0/24"))
	ns.AddLocalRoute(t, netip.MustParsePrefix("2001:db8::/64"))
	return ns
}

func port(t *testing.T, c net.PacketConn) uint16 {
	t.Helper()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func clientAddr(c *net.UDPConn) netip.AddrPort {
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestUDPOriginalDestination sends to an address of a routed prefix that no
// socket is bound to; a wildcard socket receives it (as a socket chosen by
// switchyard would), learns the address the client used, and replies from
// it. The client's socket is connected, so it accepts only a reply from that
// exact address and port.
func TestUDPOriginalDestination(t *testing.T) {
	ns := udpNetNS(t)
	for _, tc := range []struct{ name, listen, dst string }{
		{"ipv4", "0.0.0.0:0", "192.0.2.77"},
		{"ipv6", "[::]:0", "2001:db8::77"},
		{"ipv4 on dual-stack", "[::]:0", "192.0.2.78"},
		{"ipv6 other address", "[::]:0", "2001:db8::1:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := ns.ListenUDP(t, tc.listen)
			u, err := register.NewUDPConn(raw)
			if err != nil {
				t.Fatal(err)
			}
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.dst), port(t, raw))
			client, err := ns.DialUDP(dst.String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			deadline := time.Now().Add(5 * time.Second)
			u.SetDeadline(deadline)
			client.SetDeadline(deadline)

			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, src, gotDst, err := u.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) != "ping" {
				t.Fatalf("read %q", buf[:n])
			}
			if gotDst != dst {
				t.Fatalf("original destination %s, want %s", gotDst, dst)
			}
			if want := clientAddr(client); src != want {
				t.Fatalf("source %s, want %s", src, want)
			}
			if _, err := u.WriteTo([]byte("pong"), gotDst, src); err != nil {
				t.Fatal(err)
			}
			n, err = client.Read(buf)
			if err != nil {
				t.Fatalf("client got no reply from %s: %v", dst, err)
			}
			if string(buf[:n]) != "pong" {
				t.Fatalf("client read %q", buf[:n])
			}
		})
	}
}

// TestUDPReplyFromOtherAddress replies from a routed address through a
// socket bound to a specific, different address: the situation of a socket
// that switchyard hands traffic for a whole prefix.
func TestUDPReplyFromOtherAddress(t *testing.T) {
	ns := udpNetNS(t)
	for _, tc := range []struct{ name, listen, from string }{
		{"ipv4", "127.0.0.1:0", "192.0.2.9"},
		{"ipv6", "[::1]:0", "2001:db8::9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := ns.ListenUDP(t, tc.listen)
			from := netip.AddrPortFrom(netip.MustParseAddr(tc.from), port(t, raw))
			client, err := ns.DialUDP(from.String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			to := clientAddr(client)

			if tc.name == "ipv6" {
				// Without IPV6_FREEBIND the kernel refuses an IPv6 source
				// that is local only by route: NewUDPConn's doc relies
				// on this.
				oob := unix.PktInfo6(&unix.Inet6Pktinfo{Addr: from.Addr().As16()})
				_, _, err := raw.WriteMsgUDPAddrPort([]byte("x"), oob, to)
				if !errors.Is(err, unix.EINVAL) {
					t.Errorf("plain IPv6 socket sending from %s: %v, want EINVAL", from.Addr(), err)
				}
			}

			u, err := register.NewUDPConn(raw)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := u.WriteTo([]byte("hello"), from, to); err != nil {
				t.Fatal(err)
			}
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, err := client.Read(buf)
			if err != nil || string(buf[:n]) != "hello" {
				t.Fatalf("client read %q, %v", buf[:n], err)
			}
		})
	}
}

// A reply to a datagram that reached the socket on another port, as through
// a port-range binding, still comes from the port the client sent to: a
// client connected to that address and port accepts it.
func TestUDPWriteToSourcePort(t *testing.T) {
	ns := udpNetNS(t)
	u, err := register.NewUDPConn(ns.ListenUDP(t, "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	other := port(t, u.Conn()) + 1
	dialled := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), other)
	client, err := ns.DialUDP(dialled.String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	to := netip.MustParseAddrPort(client.LocalAddr().String())
	if _, err := u.WriteTo([]byte("reply"), dialled, to); !errors.Is(err, register.ErrSourcePort) || !strings.Contains(err.Error(), "namespace") {
		t.Fatalf("reply from a thread of another namespace: %v, want ErrSourcePort naming the namespace", err)
	}
	if err := ns.Do(func() error {
		_, err := u.WriteTo([]byte("reply"), dialled, to)
		return err
	}); err != nil {
		t.Fatalf("reply from %s: %v", dialled, err)
	}
	client.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 16)
	n, err := client.Read(buf)
	if err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("client connected to %s read %q, %v", dialled, buf[:n], err)
	}
}

// TestListenUDPRoundTrip goes through ListenUDP, with registration, and
// serves one request.
func TestListenUDPRoundTrip(t *testing.T) {
	ns := udpNetNS(t)
	var raw *net.UDPConn
	err := ns.Do(func() (err error) {
		raw, err = register.ListenUDP(t.Context(), controlPath, "dns-rt", "udp", "[::]:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := register.NewUDPConn(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, a := range []string{"192.0.2.53", "2001:db8::53"} {
		dst := netip.AddrPortFrom(netip.MustParseAddr(a), port(t, raw))
		client, err := ns.DialUDP(dst.String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		deadline := time.Now().Add(5 * time.Second)
		u.SetDeadline(deadline)
		client.SetDeadline(deadline)
		client.Write([]byte("q"))
		buf := make([]byte, 16)
		_, src, gotDst, err := u.ReadFrom(buf)
		if err != nil || gotDst != dst {
			t.Fatalf("read: dst %s, %v; want %s", gotDst, err, dst)
		}
		if _, err := u.WriteTo([]byte("a"), gotDst, src); err != nil {
			t.Fatal(err)
		}
		if n, err := client.Read(buf); err != nil || string(buf[:n]) != "a" {
			t.Fatalf("client: %q, %v", buf[:n], err)
		}
	}
}

// TestUDPPktinfoFallback turns IP_RECVORIGDSTADDR off behind the UDPConn's
// back: the address then comes from IP_PKTINFO, with the socket's port.
func TestUDPPktinfoFallback(t *testing.T) {
	ns := udpNetNS(t)
	raw := ns.ListenUDP(t, "0.0.0.0:0")
	u, err := register.NewUDPConn(raw)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := raw.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR, 0) })
	if serr != nil {
		t.Fatal(serr)
	}
	dst := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.200"), port(t, raw))
	client, err := ns.DialUDP(dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.Write([]byte("x"))
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, got, err := u.ReadFrom(make([]byte, 8))
	if err != nil || got != dst {
		t.Fatalf("dst %s, %v; want %s", got, err, dst)
	}
}
