package sockinfo

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Endpoints lists where the listening TCP and the UDP sockets of the
// calling thread's network namespace are bound, as the kernel's socket
// diagnostics (inet_diag) report it, by socket cookie, the key a sockmap
// yields. Run it inside the namespace (netns.NS.Do).
func Endpoints() (map[uint64]netip.AddrPort, error) {
	socks, err := Sockets()
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]netip.AddrPort, len(socks))
	for cookie, s := range socks {
		out[cookie] = s.Local
	}
	return out, nil
}

// DiagSocket is a socket as the kernel's socket diagnostics show it.
type DiagSocket struct {
	// Local is where it is bound.
	Local netip.AddrPort
	// Inode is its inode number, which /proc/PID/fd links name as
	// socket:[INODE].
	Inode uint32
}

// Sockets is Endpoints with the sockets' inode numbers.
func Sockets() (map[uint64]DiagSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	out := map[uint64]DiagSocket{}
	for _, q := range []struct {
		family, proto uint8
		states        uint32
	}{
		{unix.AF_INET, unix.IPPROTO_TCP, 1 << tcpListen},
		{unix.AF_INET6, unix.IPPROTO_TCP, 1 << tcpListen},
		{unix.AF_INET, unix.IPPROTO_UDP, ^uint32(0)},
		{unix.AF_INET6, unix.IPPROTO_UDP, ^uint32(0)},
	} {
		if err := dumpDiag(fd, q.family, q.proto, q.states, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

const (
	tcpListen      = 10 // TCP_LISTEN
	diagReqLen     = 56 // struct inet_diag_req_v2
	diagMsgLen     = 72 // struct inet_diag_msg
	diagInodeOff   = 68 // its idiag_inode
	nlmsgHeaderLen = unix.SizeofNlMsghdr
)

// dumpDiag asks for the sockets of one family and protocol in states and
// adds them to out.
func dumpDiag(fd int, family, proto uint8, states uint32, out map[uint64]DiagSocket) error {
	req := make([]byte, nlmsgHeaderLen+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	r := req[nlmsgHeaderLen:]
	r[0], r[1] = family, proto
	ne.PutUint32(r[4:], states)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if cookie, ep, ok := parseDiagMsg(m.Data); ok {
					out[cookie] = DiagSocket{Local: ep, Inode: ne.Uint32(m.Data[diagInodeOff:])}
				}
			}
		}
	}
}

// parseDiagMsg reads a struct inet_diag_msg: the socket's cookie and its
// local address and port.
func parseDiagMsg(b []byte) (uint64, netip.AddrPort, bool) {
	if len(b) < diagMsgLen {
		return 0, netip.AddrPort{}, false
	}
	ne := binary.NativeEndian
	port := binary.BigEndian.Uint16(b[4:6])
	var addr netip.Addr
	switch b[0] {
	case unix.AF_INET:
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	case unix.AF_INET6:
		addr = netip.AddrFrom16([16]byte(b[8:24]))
	default:
		return 0, netip.AddrPort{}, false
	}
	cookie := uint64(ne.Uint32(b[44:48])) | uint64(ne.Uint32(b[48:52]))<<32
	return cookie, netip.AddrPortFrom(addr, port), true
}
