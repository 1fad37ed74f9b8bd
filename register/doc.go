// Package register is what a service imports to hand its sockets to
// switchyardd: a few lines turn a listener into a destination of a label.
//
//	ln, err := register.ListenTCP(ctx, "", "web", "tcp", "127.0.0.1:8080")
//
// It also helps UDP services answer correctly. switchyard may deliver a
// datagram for any address of a bound prefix to a socket bound elsewhere;
// UDPConn reports each datagram's original destination and sends the reply
// from that address, which is what clients expect.
//
// What it owns: the client side of registration (Register, RegisterFiles,
// ListenTCP, ListenUDP) and the UDP original-destination helpers (UDPConn).
//
// What it does not do: it never loads BPF programs or touches switchyard's
// maps. It imports only the standard library, golang.org/x/sys and the
// control protocol's wire format (internal/control, internal/binding), so
// that linking it into a service costs little.
//
// The control path "" means the default socket of the caller's network
// namespace, /run/switchyard/netns-<inode>/control.sock.
//
// Listeners are created with MPTCP turned off: Go 1.24 and later listen with
// MPTCP by default, and the kernel's sockmap, which switchyard uses, refuses
// MPTCP sockets. If you create listeners yourself, do the same with
// net.ListenConfig.SetMultipathTCP(false).
//
// Replying from the original destination: IPv4 accepts a pktinfo source
// address that is assigned to the host or covered by a `local` route (such
// as `ip route add local 192.0.2.0/24 dev lo`, which is how prefixes are
// usually routed to switchyard). IPv6 accepts only assigned addresses
// unless the socket has IPV6_FREEBIND (unprivileged, set by NewUDPConn and
// ListenUDP) or IP_TRANSPARENT (needs CAP_NET_ADMIN), or the sysctl
// net.ipv6.ip_nonlocal_bind is 1. The source port of a reply is always the
// socket's own port; see UDPConn.WriteTo.
package register
