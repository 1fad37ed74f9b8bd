package sockinfo

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Refusals. Each error returned for an unsuitable socket wraps exactly one of
// these.
var (
	// ErrNotSocket: the file descriptor is not a socket.
	ErrNotSocket = errors.New("not a socket")
	// ErrUnsupportedFamily: the socket is not AF_INET or AF_INET6.
	ErrUnsupportedFamily = errors.New("unsupported address family")
	// ErrUnsupportedProtocol: the socket is neither a TCP stream socket nor a
	// UDP datagram socket (raw, SCTP, UDP-Lite, ping sockets...).
	ErrUnsupportedProtocol = errors.New("unsupported socket type or protocol")
	// ErrMPTCP: the socket is a Multipath TCP socket, which sockmap rejects.
	ErrMPTCP = errors.New("multipath tcp socket")
	// ErrNotListening: a TCP socket that is not in the listening state.
	ErrNotListening = errors.New("tcp socket is not listening")
	// ErrUnbound: a UDP socket without a local port.
	ErrUnbound = errors.New("udp socket is not bound")
	// ErrConnected: a UDP socket connected to a peer.
	ErrConnected = errors.New("udp socket is connected")
	// ErrWrongNamespace: the socket belongs to another network namespace.
	ErrWrongNamespace = errors.New("socket is from another network namespace")
)

var refusals = []error{
	ErrNotSocket, ErrUnsupportedFamily, ErrUnsupportedProtocol, ErrMPTCP,
	ErrNotListening, ErrUnbound, ErrConnected, ErrWrongNamespace,
}

// IsRefusal reports whether err says that the socket is unsuitable, as opposed
// to a failure to inspect it.
func IsRefusal(err error) bool {
	for _, r := range refusals {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// Info is what the kernel says about a socket.
type Info struct {
	Family   binding.Family
	Protocol binding.Protocol
	// Listening is SO_ACCEPTCONN: a TCP socket after listen(2).
	Listening bool
	// Local is the address from getsockname; port 0 means unbound.
	Local netip.AddrPort
	// Connected reports whether the socket has a peer (getpeername works).
	Connected bool
	// V6Only is IPV6_V6ONLY; false on an IPv6 socket means it also serves
	// IPv4 (dual-stack). Always false for IPv4 sockets.
	V6Only bool
	// ReusePort is SO_REUSEPORT: the socket may be a member of a group.
	ReusePort bool
	// NetNSCookie is SO_NETNS_COOKIE, the cookie of the socket's network
	// namespace.
	NetNSCookie uint64
	// Cookie is SO_COOKIE, the socket's own identity, as BPF programs see it.
	Cookie uint64
}

// DualStack reports whether the socket is an IPv6 socket that also accepts
// IPv4 traffic.
func (i Info) DualStack() bool { return i.Family == binding.IPv6 && !i.V6Only }

// String describes the socket for logs, e.g.
// "tcp ipv6 [::]:80 listening dual-stack reuseport cookie=4097".
func (i Info) String() string {
	s := fmt.Sprintf("%s %s %s", i.Protocol, i.Family, i.Local)
	if i.Listening {
		s += " listening"
	}
	if i.Connected {
		s += " connected"
	}
	if i.DualStack() {
		s += " dual-stack"
	}
	if i.ReusePort {
		s += " reuseport"
	}
	return s + fmt.Sprintf(" cookie=%d", i.Cookie)
}

// Inspect reads the state of the socket fd. It fails with ErrNotSocket,
// ErrUnsupportedFamily, ErrUnsupportedProtocol or ErrMPTCP for sockets whose
// kind switchyard cannot handle at all; it does not judge the state of a
// supported socket (use Check or Validate for that). On error, the returned
// Info holds what was learned before the failure.
//
// Inspect does not take ownership of fd.
func Inspect(fd int) (Info, error) {
	var info Info

	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return info, fmt.Errorf("inspect fd %d: fstat: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return info, fmt.Errorf("fd %d is a %s: %w: pass the service's listening TCP or bound UDP socket", fd, fileKind(st.Mode), ErrNotSocket)
	}

	domain, err := getInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN, "SO_DOMAIN")
	if err != nil {
		return info, err
	}
	switch domain {
	case unix.AF_INET:
		info.Family = binding.IPv4
	case unix.AF_INET6:
		info.Family = binding.IPv6
	default:
		return info, fmt.Errorf("fd %d is an %s socket: %w: switchyard dispatches only to IPv4 and IPv6 (AF_INET, AF_INET6) sockets", fd, familyName(domain), ErrUnsupportedFamily)
	}

	typ, err := getInt(fd, unix.SOL_SOCKET, unix.SO_TYPE, "SO_TYPE")
	if err != nil {
		return info, err
	}
	proto, err := getInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL, "SO_PROTOCOL")
	if err != nil {
		return info, err
	}
	switch {
	case typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP:
		info.Protocol = binding.TCP
	case typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP:
		info.Protocol = binding.UDP
	case typ == unix.SOCK_STREAM && proto == unix.IPPROTO_MPTCP:
		return info, fmt.Errorf("fd %d: %w (IPPROTO_MPTCP, protocol %d), which sockmap cannot hold: "+
			"Go 1.24+ net.Listen creates MPTCP sockets by default; use net.ListenConfig with SetMultipathTCP(false), "+
			"or GODEBUG=multipathtcp=0; in C, pass IPPROTO_TCP or 0 to socket(2)", fd, ErrMPTCP, proto)
	default:
		return info, fmt.Errorf("fd %d is a %s socket: %w: switchyard dispatches only to TCP (SOCK_STREAM) and UDP (SOCK_DGRAM) sockets", fd, protoName(typ, proto), ErrUnsupportedProtocol)
	}

	if info.Listening, err = getBool(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, "SO_ACCEPTCONN"); err != nil {
		return info, err
	}
	if info.ReusePort, err = getBool(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT"); err != nil {
		return info, err
	}
	if info.Family == binding.IPv6 {
		if info.V6Only, err = getBool(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY"); err != nil {
			return info, err
		}
	}

	sa, err := unix.Getsockname(fd)
	if err != nil {
		return info, fmt.Errorf("inspect fd %d: getsockname: %w", fd, err)
	}
	info.Local = addrPort(sa)

	switch _, err := unix.Getpeername(fd); {
	case err == nil:
		info.Connected = true
	case errors.Is(err, unix.ENOTCONN):
	default:
		return info, fmt.Errorf("inspect fd %d: getpeername: %w", fd, err)
	}

	if info.Cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
		return info, fmt.Errorf("inspect fd %d: getsockopt SO_COOKIE: %w", fd, err)
	}
	if info.NetNSCookie, err = NetNSCookie(fd); err != nil {
		return info, err
	}
	return info, nil
}

// Check reports whether switchyard can dispatch to a socket in the state
// described by i: a TCP socket must be listening; a UDP socket must be bound
// to a port and not connected.
func (i Info) Check() error {
	switch i.Protocol {
	case binding.TCP:
		if i.Listening {
			return nil
		}
		if i.Connected {
			return fmt.Errorf("%w (%s is a connection, not a listener): register the socket the service called listen(2) on", ErrNotListening, i.Local)
		}
		return fmt.Errorf("%w (%s): call listen(2) on it before registering it", ErrNotListening, describeLocal(i.Local))
	case binding.UDP:
		if i.Connected {
			return fmt.Errorf("%w (local address %s): a connected socket only receives from its peer; register an unconnected socket and reply with sendto(2)/sendmsg(2)", ErrConnected, i.Local)
		}
		if i.Local.Port() == 0 {
			return fmt.Errorf("%w: bind(2) it to an address and port before registering it", ErrUnbound)
		}
		return nil
	default:
		return fmt.Errorf("socket protocol %s: %w", i.Protocol, ErrUnsupportedProtocol)
	}
}

// Validate inspects fd and checks that switchyard can dispatch to it from the
// network namespace whose SO_NETNS_COOKIE is wantNetNSCookie (see
// netns.NS.Cookie). wantNetNSCookie must not be zero.
func Validate(fd int, wantNetNSCookie uint64) (Info, error) {
	if wantNetNSCookie == 0 {
		return Info{}, errors.New("validate socket: no network namespace cookie to compare with")
	}
	info, err := Inspect(fd)
	if err != nil {
		return info, err
	}
	if info.NetNSCookie != wantNetNSCookie {
		return info, fmt.Errorf("%s %s socket (%s): %w (namespace cookie %d, want %d): create the socket inside the namespace switchyardd serves, or register it with the switchyardd of its own namespace (--netns)",
			info.Protocol, info.Family, describeLocal(info.Local), ErrWrongNamespace, info.NetNSCookie, wantNetNSCookie)
	}
	return info, info.Check()
}

// NetNSCookie returns the SO_NETNS_COOKIE of the network namespace that the
// socket fd belongs to. It works for sockets of any family.
func NetNSCookie(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w: the kernel is too old (Linux 5.14 or later is needed)", err)
	}
	if err != nil {
		return 0, fmt.Errorf("inspect fd %d: getsockopt SO_NETNS_COOKIE: %w", fd, err)
	}
	return c, nil
}

func describeLocal(a netip.AddrPort) string {
	if a.Port() == 0 {
		return "not bound"
	}
	return "local address " + a.String()
}

func getInt(fd, level, opt int, name string) (int, error) {
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return 0, fmt.Errorf("inspect fd %d: getsockopt %s: %w", fd, name, err)
	}
	return v, nil
}

func getBool(fd, level, opt int, name string) (bool, error) {
	v, err := getInt(fd, level, opt, name)
	return v != 0, err
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		// Zones are dropped: dispatch matches on addresses only.
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFIFO:
		return "pipe"
	case unix.S_IFLNK:
		return "symbolic link"
	}
	return "non-socket file"
}

func familyName(domain int) string {
	switch domain {
	case unix.AF_UNIX:
		return "AF_UNIX"
	case unix.AF_NETLINK:
		return "AF_NETLINK"
	case unix.AF_PACKET:
		return "AF_PACKET"
	case unix.AF_VSOCK:
		return "AF_VSOCK"
	case unix.AF_ALG:
		return "AF_ALG"
	case unix.AF_XDP:
		return "AF_XDP"
	}
	return fmt.Sprintf("address family %d", domain)
}

func protoName(typ, proto int) string {
	switch {
	case typ == unix.SOCK_RAW:
		return fmt.Sprintf("raw (SOCK_RAW, protocol %d)", proto)
	case proto == unix.IPPROTO_SCTP:
		return "SCTP"
	case proto == unix.IPPROTO_UDPLITE:
		return "UDP-Lite"
	case typ == unix.SOCK_DGRAM && (proto == unix.IPPROTO_ICMP || proto == unix.IPPROTO_ICMPV6):
		return "ICMP ping (SOCK_DGRAM)"
	case typ == unix.SOCK_SEQPACKET:
		return fmt.Sprintf("SOCK_SEQPACKET (protocol %d)", proto)
	}
	return fmt.Sprintf("type %d protocol %d", typ, proto)
}
