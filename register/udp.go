package register

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSourcePort is returned by UDPConn.WriteTo when it cannot send from a
// source whose port is not the socket's own.
var ErrSourcePort = errors.New("cannot send from that source port")

// UDPConn is a UDP socket that knows the original destination of each
// datagram and can reply from it. With switchyard a socket receives
// datagrams for every address (and port) of its label's bindings, not just
// the address it is bound to; a client expects the answer to come from the
// address it sent to.
//
// It is safe for concurrent use, like *net.UDPConn.
type UDPConn struct {
	c    *net.UDPConn
	port uint16
}

// NewUDPConn wraps a bound UDP socket and turns on the options it needs:
//
//   - IP_RECVORIGDSTADDR and IPV6_RECVORIGDSTADDR, which attach the
//     original destination address and port to every datagram, and
//     IP_PKTINFO and IPV6_RECVPKTINFO as a fallback for the address;
//   - on IPv6 sockets, IPV6_FREEBIND, so that replies may come from an IPv6
//     address that is routed to the host by a `local` route but not
//     assigned to an interface (IPv6 checks a pktinfo source against the
//     assigned addresses only; IPv4 also accepts any address of a local
//     route, so IPv4 needs nothing more). IP_TRANSPARENT would work too,
//     but needs CAP_NET_ADMIN; FREEBIND needs no privilege, and is set
//     after bind so that it does not change what bind accepts.
//
// A dual-stack IPv6 socket gets the IPv4 options too. c stays usable on its
// own; closing the UDPConn closes c.
func NewUDPConn(c *net.UDPConn) (*UDPConn, error) {
	if err := setUDPOptions(c); err != nil {
		return nil, err
	}
	la, ok := c.LocalAddr().(*net.UDPAddr)
	if !ok || la == nil {
		return nil, fmt.Errorf("udp socket: %w: not bound; bind it before wrapping it", ErrInvalid)
	}
	return &UDPConn{c: c, port: uint16(la.Port)}, nil
}

func setUDPOptions(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("udp socket options: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = setUDPOptionsFD(int(fd)) }); err != nil {
		return fmt.Errorf("udp socket options: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("udp socket options: %w", serr)
	}
	return nil
}

func setUDPOptionsFD(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("SO_DOMAIN: %w", err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("SO_TYPE: %w", err)
	}
	if typ != unix.SOCK_DGRAM {
		return fmt.Errorf("%w: not a datagram socket", ErrInvalid)
	}
	v4 := domain == unix.AF_INET
	switch domain {
	case unix.AF_INET:
	case unix.AF_INET6:
		v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
		v4 = v6only == 0
		for _, o := range []struct {
			opt  int
			name string
		}{
			{unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR"},
			{unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"},
		} {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, o.opt, 1); err != nil {
				return fmt.Errorf("%s: %w", o.name, err)
			}
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			// Before Linux 4.15 IP_FREEBIND set the same flag.
			if err2 := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err2 != nil {
				return fmt.Errorf("IPV6_FREEBIND: %w", err)
			}
		}
	default:
		return fmt.Errorf("%w: socket family %d is not IPv4 or IPv6", ErrInvalid, domain)
	}
	if v4 {
		for _, o := range []struct {
			opt  int
			name string
		}{
			{unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR"},
			{unix.IP_PKTINFO, "IP_PKTINFO"},
		} {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, o.opt, 1); err != nil {
				return fmt.Errorf("%s: %w", o.name, err)
			}
		}
	}
	return nil
}

// oobSize fits every control message the options above produce.
var oobSize = 2*unix.CmsgSpace(unix.SizeofSockaddrInet6) + unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(unix.SizeofInet4Pktinfo)

// ReadFrom reads one datagram into b. src is the sender; dst is the address
// and port the sender sent to, which with switchyard may be any address of
// a bound prefix and any port of a bound range, not the socket's own
// address. IPv4 addresses come back in their 4-byte form, also on a
// dual-stack socket. dst is the zero AddrPort if the kernel did not say
// (options turned off behind the UDPConn's back). A datagram longer than b
// is truncated, as with net.UDPConn.
func (u *UDPConn) ReadFrom(b []byte) (n int, src, dst netip.AddrPort, err error) {
	oob := make([]byte, oobSize)
	n, oobn, _, src, err := u.c.ReadMsgUDPAddrPort(b, oob)
	if err != nil {
		return n, src, dst, err
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	return n, src, u.destination(oob[:oobn]), nil
}

// destination finds the original destination in a datagram's control
// messages: IP(V6)_ORIGDSTADDR, or failing that IP(V6)_PKTINFO with the
// socket's own port.
func (u *UDPConn) destination(oob []byte) netip.AddrPort {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}
	}
	var fromPktinfo netip.Addr
	for _, m := range msgs {
		d := m.Data
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(d) >= 8:
			// struct sockaddr_in: family, port (network order), address.
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(d[4:8])), binary.BigEndian.Uint16(d[2:4]))
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(d) >= 24:
			// struct sockaddr_in6: family, port, flowinfo, address, scope.
			a := netip.AddrFrom16([16]byte(d[8:24]))
			return netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(d[2:4]))
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_PKTINFO && len(d) >= 12:
			// struct in_pktinfo: ifindex, spec_dst, addr (header destination).
			fromPktinfo = netip.AddrFrom4([4]byte(d[8:12]))
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(d) >= 16:
			// struct in6_pktinfo: addr, ifindex.
			fromPktinfo = netip.AddrFrom16([16]byte(d[0:16])).Unmap()
		}
	}
	if fromPktinfo.IsValid() {
		return netip.AddrPortFrom(fromPktinfo, u.port)
	}
	return netip.AddrPort{}
}

// WriteTo sends b to to, from src: pass the dst that ReadFrom returned for
// the request, so the client sees the reply come from where it sent. When
// src's port is the socket's own (or 0), the source address is set with an
// IP_PKTINFO or IPV6_PKTINFO control message, so it may be any local
// address, including one that is local only through a `local` route (see
// NewUDPConn). When the request came to another port, as it does through a
// port-range or every-port binding, the reply leaves from a short-lived
// socket bound to src with IP_FREEBIND; dispatching of new datagrams is not
// disturbed by it. A zero src lets the kernel pick the source, like
// net.UDPConn.WriteTo.
func (u *UDPConn) WriteTo(b []byte, src, to netip.AddrPort) (int, error) {
	var oob []byte
	if a := src.Addr(); a.IsValid() && !a.IsUnspecified() {
		if p := src.Port(); p != 0 && p != u.port {
			return u.writeFrom(b, src, to)
		}
		if a.Is4() || a.Is4In6() {
			oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: a.Unmap().As4()})
		} else {
			oob = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: a.As16()})
		}
	}
	n, _, err := u.c.WriteMsgUDPAddrPort(b, oob, to)
	if err != nil {
		return n, fmt.Errorf("udp reply from %s to %s: %w", src.Addr(), to, err)
	}
	return n, nil
}

// writeFrom sends one datagram from a socket of its own bound to src. That
// socket is made in the calling thread's network namespace, which must be
// u's, as it is for a service that runs in one namespace.
func (u *UDPConn) writeFrom(b []byte, src, to netip.AddrPort) (int, error) {
	fail := func(err error) (int, error) {
		return 0, fmt.Errorf("udp reply from %s to %s: %w", src, to, err)
	}
	s, t := src.Addr().Unmap(), to.Addr().Unmap()
	if s.Is4() != t.Is4() {
		return fail(fmt.Errorf("%w: source and destination are of different families", ErrSourcePort))
	}
	var fd int
	var err error
	var sa, da unix.Sockaddr
	if s.Is4() {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
		sa = &unix.SockaddrInet4{Addr: s.As4(), Port: int(src.Port())}
		da = &unix.SockaddrInet4{Addr: t.As4(), Port: int(to.Port())}
	} else {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		}
		sa = &unix.SockaddrInet6{Addr: s.As16(), Port: int(src.Port())}
		da = &unix.SockaddrInet6{Addr: t.As16(), Port: int(to.Port())}
	}
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return fail(err)
	}
	defer unix.Close(fd)
	if err := u.sameNetNS(fd); err != nil {
		return fail(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail(err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail(fmt.Errorf("%w: bind: %w", ErrSourcePort, err))
	}
	if err := unix.Sendto(fd, b, 0, da); err != nil {
		return fail(err)
	}
	return len(b), nil
}

// Conn returns the underlying socket.
func (u *UDPConn) Conn() *net.UDPConn { return u.c }

// Close closes the socket.
func (u *UDPConn) Close() error { return u.c.Close() }

// LocalAddr is the address the socket is bound to.
func (u *UDPConn) LocalAddr() net.Addr { return u.c.LocalAddr() }

// SetDeadline sets the read and write deadlines.
func (u *UDPConn) SetDeadline(t time.Time) error { return u.c.SetDeadline(t) }

// SetReadDeadline sets the deadline for ReadFrom.
func (u *UDPConn) SetReadDeadline(t time.Time) error { return u.c.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for WriteTo.
func (u *UDPConn) SetWriteDeadline(t time.Time) error { return u.c.SetWriteDeadline(t) }

// sameNetNS checks that fd is in u's network namespace.
func (u *UDPConn) sameNetNS(fd int) error {
	mine, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return nil // kernels before 5.14 cannot tell; assume the usual case
	}
	rc, err := u.c.SyscallConn()
	if err != nil {
		return err
	}
	var theirs uint64
	var gerr error
	rc.Control(func(ufd uintptr) {
		theirs, gerr = unix.GetsockoptUint64(int(ufd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	})
	if gerr == nil && theirs != mine {
		return fmt.Errorf("%w: this thread is in another network namespace than the socket; reply from a thread in the socket's namespace", ErrSourcePort)
	}
	return nil
}
