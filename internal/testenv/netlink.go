package testenv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal rtnetlink client: just enough to add routes, addresses and links
// and read the kernel's acknowledgement. Every request is sent on a
// NETLINK_ROUTE socket opened by the caller inside the target namespace.

// vethInfoPeer is VETH_INFO_PEER from <linux/veth.h>, missing in x/sys/unix.
const vethInfoPeer = 1

// nlMsg builds one netlink message: a header, a fixed family header and
// attributes, all in host byte order.
type nlMsg struct {
	buf []byte
}

func newNLMsg(typ, flags uint16, fixed []byte) *nlMsg {
	m := &nlMsg{buf: make([]byte, unix.SizeofNlMsghdr, 256)}
	binary.NativeEndian.PutUint16(m.buf[4:], typ)
	binary.NativeEndian.PutUint16(m.buf[6:], flags)
	m.buf = append(m.buf, fixed...)
	m.pad()
	return m
}

func (m *nlMsg) pad() {
	for len(m.buf)%unix.NLMSG_ALIGNTO != 0 {
		m.buf = append(m.buf, 0)
	}
}

// attr appends one attribute.
func (m *nlMsg) attr(typ uint16, data []byte) {
	m.buf = binary.NativeEndian.AppendUint16(m.buf, uint16(unix.SizeofRtAttr+len(data)))
	m.buf = binary.NativeEndian.AppendUint16(m.buf, typ)
	m.buf = append(m.buf, data...)
	m.pad()
}

func (m *nlMsg) attrU32(typ uint16, v uint32) {
	m.attr(typ, binary.NativeEndian.AppendUint32(nil, v))
}

func (m *nlMsg) attrString(typ uint16, s string) {
	m.attr(typ, append([]byte(s), 0))
}

// begin opens a nested attribute; end closes it by fixing its length.
func (m *nlMsg) begin(typ uint16) int {
	off := len(m.buf)
	m.attr(typ|unix.NLA_F_NESTED, nil)
	return off
}

// raw appends bytes that sit inside a nested attribute without an attribute
// header of their own (the peer's ifinfomsg in VETH_INFO_PEER).
func (m *nlMsg) raw(b []byte) {
	m.buf = append(m.buf, b...)
	m.pad()
}

func (m *nlMsg) end(off int) {
	binary.NativeEndian.PutUint16(m.buf[off:], uint16(len(m.buf)-off))
}

func (m *nlMsg) bytes(seq uint32) []byte {
	binary.NativeEndian.PutUint32(m.buf[0:], uint32(len(m.buf)))
	binary.NativeEndian.PutUint32(m.buf[8:], seq)
	return m.buf
}

func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// rtnlExec sends one request on a new NETLINK_ROUTE socket, which belongs to
// the namespace of the calling thread, and waits for its acknowledgement.
// Call it inside NetNS.Do.
func rtnlExec(m *nlMsg) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open rtnetlink socket: %w", err)
	}
	defer unix.Close(fd)

	// Extended acks carry the kernel's own explanation of an error
	// ("Invalid prefix for given prefix length", ...). Best effort.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)

	const seq = 1
	if err := unix.Sendto(fd, m.bytes(seq), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send rtnetlink request: %w", err)
	}

	buf := make([]byte, 64*1024)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive rtnetlink ack: %w", err)
		}
		msgs := buf[:n]
		for len(msgs) >= unix.SizeofNlMsghdr {
			l := binary.NativeEndian.Uint32(msgs[0:])
			typ := binary.NativeEndian.Uint16(msgs[4:])
			flags := binary.NativeEndian.Uint16(msgs[6:])
			mseq := binary.NativeEndian.Uint32(msgs[8:])
			if l < unix.SizeofNlMsghdr || int(l) > len(msgs) {
				return errors.New("receive rtnetlink ack: truncated message")
			}
			body := msgs[unix.SizeofNlMsghdr:l]
			msgs = msgs[min(nlAlign(int(l)), len(msgs)):]
			if mseq != seq {
				continue
			}
			if typ != unix.NLMSG_ERROR {
				continue
			}
			return parseAck(body, flags)
		}
	}
}

func nlAlign(n int) int {
	return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
}

// parseAck turns an NLMSG_ERROR body into nil (ack) or an errno, with the
// extended ack message if the kernel sent one.
func parseAck(body []byte, flags uint16) error {
	if len(body) < 4 {
		return errors.New("receive rtnetlink ack: short error message")
	}
	errno := -int32(binary.NativeEndian.Uint32(body))
	if errno == 0 {
		return nil
	}
	err := error(unix.Errno(errno))
	if flags&unix.NLM_F_ACK_TLVS == 0 {
		return err
	}
	// struct nlmsgerr holds the request's header (only the header, as
	// NETLINK_CAP_ACK is set, which NLM_F_CAPPED confirms), then TLVs.
	tlvs := body[min(unix.SizeofNlMsgerr, len(body)):]
	if flags&unix.NLM_F_CAPPED == 0 && len(body) >= unix.SizeofNlMsgerr {
		reqLen := int(binary.NativeEndian.Uint32(body[4:]))
		tlvs = body[min(4+nlAlign(reqLen), len(body)):]
	}
	for len(tlvs) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(tlvs[0:]))
		typ := binary.NativeEndian.Uint16(tlvs[2:])
		if l < unix.SizeofRtAttr || l > len(tlvs) {
			break
		}
		if typ == unix.NLMSGERR_ATTR_MSG {
			return fmt.Errorf("%w (%s)", err, unix.ByteSliceToString(tlvs[unix.SizeofRtAttr:l]))
		}
		tlvs = tlvs[min(nlAlign(l), len(tlvs)):]
	}
	return err
}

// ifIndex returns the index of the interface called name in the namespace
// of the calling thread.
func ifIndex(name string) (uint32, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("interface name %q: %w", name, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("find interface %q: %w", name, err)
	}
	return ifr.Uint32(), nil
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// addLocalRouteMsg is `ip route add local PREFIX dev lo`: a route of type
// local in table local with scope host, so that every address of the prefix
// is delivered to this host's sockets.
func addLocalRouteMsg(prefix netip.Prefix, loIndex uint32) *nlMsg {
	prefix = prefix.Masked()
	rtm := unix.RtMsg{
		Family:   family(prefix.Addr()),
		Dst_len:  uint8(prefix.Bits()),
		Table:    unix.RT_TABLE_LOCAL,
		Protocol: unix.RTPROT_BOOT,
		Scope:    unix.RT_SCOPE_HOST,
		Type:     unix.RTN_LOCAL,
	}
	m := newNLMsg(unix.RTM_NEWROUTE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, structBytes(&rtm))
	m.attr(unix.RTA_DST, prefix.Addr().AsSlice())
	m.attrU32(unix.RTA_OIF, loIndex)
	return m
}

// addAddrMsg is `ip addr add PREFIX dev IF` (with nodad for IPv6, so the
// address is usable at once instead of after duplicate address detection).
func addAddrMsg(prefix netip.Prefix, index uint32) *nlMsg {
	addr := prefix.Addr()
	var flags uint32
	if addr.Is6() {
		flags = unix.IFA_F_NODAD
	}
	ifa := unix.IfAddrmsg{
		Family:    family(addr),
		Prefixlen: uint8(prefix.Bits()),
		Flags:     uint8(flags),
		Scope:     unix.RT_SCOPE_UNIVERSE,
		Index:     index,
	}
	m := newNLMsg(unix.RTM_NEWADDR, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, structBytes(&ifa))
	m.attr(unix.IFA_LOCAL, addr.AsSlice())
	m.attr(unix.IFA_ADDRESS, addr.AsSlice())
	m.attrU32(unix.IFA_FLAGS, flags)
	return m
}

// linkUpMsg is `ip link set IF up`.
func linkUpMsg(index uint32) *nlMsg {
	ifi := unix.IfInfomsg{
		Family: unix.AF_UNSPEC,
		Index:  int32(index),
		Flags:  unix.IFF_UP,
		Change: unix.IFF_UP,
	}
	return newNLMsg(unix.RTM_NEWLINK, unix.NLM_F_REQUEST|unix.NLM_F_ACK, structBytes(&ifi))
}

// newVethMsg is `ip link add NAME type veth peer name PEER netns PEERNSFD`.
func newVethMsg(name, peer string, peerNSFD int) *nlMsg {
	var ifi unix.IfInfomsg
	m := newNLMsg(unix.RTM_NEWLINK, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, structBytes(&ifi))
	m.attrString(unix.IFLA_IFNAME, name)
	info := m.begin(unix.IFLA_LINKINFO)
	m.attrString(unix.IFLA_INFO_KIND, "veth")
	data := m.begin(unix.IFLA_INFO_DATA)
	peerAttr := m.begin(vethInfoPeer)
	var peerIfi unix.IfInfomsg
	m.raw(structBytes(&peerIfi))
	m.attrString(unix.IFLA_IFNAME, peer)
	m.attrU32(unix.IFLA_NET_NS_FD, uint32(peerNSFD))
	m.end(peerAttr)
	m.end(data)
	m.end(info)
	return m
}
