package cli

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newThrowawayNetNS creates a network namespace with lo up and prefix
// routed to lo as local (ip route add local PREFIX dev lo), and returns a
// descriptor of it. The namespace lives as long as the descriptor and the
// sockets made in it.
func newThrowawayNetNS(prefix netip.Prefix) (int, error) {
	fd := -1
	var err error
	onThrowawayThread(func() {
		if err = unix.Unshare(unix.CLONE_NEWNET); err != nil {
			err = fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			err = fmt.Errorf("open namespace: %w", err)
			return
		}
		if err = loUp(); err == nil {
			err = addLocalRoute(prefix)
		}
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	})
	return fd, err
}

// onThrowawayThread runs fn on an OS thread that exits afterwards, so fn
// may move it into another namespace. A locked goroutine that ends kills
// its thread, except the main thread, which the runtime parks instead; on
// that one, fn runs on a nested goroutine that must land elsewhere.
func onThrowawayThread(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			onThrowawayThread(fn)
			runtime.UnlockOSThread()
			close(done)
			return
		}
		defer close(done) // the thread stays locked and exits
		fn()
	}()
	<-done
}

// loUp sets lo up in the calling thread's namespace.
func loUp() error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: set flags: %w", err)
	}
	return nil
}

// addLocalRoute adds a route of type local for prefix via lo, in table
// local, with one rtnetlink request in the calling thread's namespace.
func addLocalRoute(prefix netip.Prefix) error {
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("add route: %w", err)
	}
	err = unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr)
	unix.Close(s)
	if err != nil {
		return fmt.Errorf("add route: index of lo: %w", err)
	}
	loIndex := ifr.Uint32()

	family := uint8(unix.AF_INET)
	if prefix.Addr().Is6() {
		family = unix.AF_INET6
	}
	rtm := unix.RtMsg{
		Family:   family,
		Dst_len:  uint8(prefix.Bits()),
		Table:    unix.RT_TABLE_LOCAL,
		Protocol: unix.RTPROT_BOOT,
		Scope:    unix.RT_SCOPE_HOST,
		Type:     unix.RTN_LOCAL,
	}
	body := append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&rtm)), unix.SizeofRtMsg)...)
	body = appendAttr(body, unix.RTA_DST, prefix.Masked().Addr().AsSlice())
	body = appendAttr(body, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, loIndex))

	hdr := unix.NlMsghdr{
		Len:   uint32(unix.SizeofNlMsghdr + len(body)),
		Type:  unix.RTM_NEWROUTE,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_EXCL,
		Seq:   1,
	}
	msg := append(unsafe.Slice((*byte)(unsafe.Pointer(&hdr)), unix.SizeofNlMsghdr), body...)

	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("add route: netlink socket: %w", err)
	}
	defer unix.Close(nl)
	if err := unix.Sendto(nl, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("add route: send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(nl, buf, 0)
	if err != nil {
		return fmt.Errorf("add route: receive: %w", err)
	}
	// The answer is one NLMSG_ERROR message: a header, then the errno
	// (0 for success) and the request's header.
	if n < unix.SizeofNlMsghdr+4 {
		return fmt.Errorf("add route local %s dev lo: short answer from the kernel", prefix)
	}
	if typ := binary.NativeEndian.Uint16(buf[4:6]); typ != unix.NLMSG_ERROR {
		return fmt.Errorf("add route local %s dev lo: unexpected answer type %d from the kernel", prefix, typ)
	}
	if errno := int32(binary.NativeEndian.Uint32(buf[unix.SizeofNlMsghdr:])); errno != 0 {
		return fmt.Errorf("add route local %s dev lo: %w", prefix, unix.Errno(-errno))
	}
	return nil
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}
