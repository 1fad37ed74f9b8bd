package register

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
)

// Result describes one registered socket: its protocol, family and local
// address as the daemon saw them.
type Result = control.RegisterResult

// Errors the daemon may answer with; match them with errors.Is. Errors of
// the daemon carry its message, which says what to do.
var (
	// ErrInvalid: a bad label, or a socket the daemon refuses (not
	// listening, connected, MPTCP, wrong protocol for the label's
	// bindings, another network namespace).
	ErrInvalid = control.ErrInvalid
	// ErrPermission: this user may not register sockets for the label.
	ErrPermission = control.ErrPermission
	// ErrNotFound: the label is unknown to the daemon.
	ErrNotFound = control.ErrNotFound
	// ErrConflict: the registration clashes with the daemon's state.
	ErrConflict = control.ErrConflict
	// ErrUnsupported: the daemon speaks another protocol version.
	ErrUnsupported = control.ErrUnsupported
)

// Register hands a socket to the switchyardd listening on controlPath ("":
// the default path of the caller's network namespace), as a destination of
// label. conn is typically a *net.TCPListener or *net.UDPConn; it stays open
// and the caller's: the daemon keeps no reference to it, so the
// registration ends when the caller closes it.
func Register(ctx context.Context, controlPath, label string, conn syscall.Conn) error {
	f, err := dupConn(conn)
	if err != nil {
		return fmt.Errorf("register %s: %w", label, err)
	}
	defer f.Close()
	_, err = RegisterFiles(ctx, controlPath, label, f)
	return err
}

// RegisterFiles hands one or more sockets to the daemon in one request, for
// example the members of a SO_REUSEPORT group or the fds systemd passed.
// The files stay the caller's.
func RegisterFiles(ctx context.Context, controlPath, label string, files ...*os.File) ([]Result, error) {
	if err := binding.ValidateLabel(label); err != nil {
		return nil, fmt.Errorf("register: %w", control.AsError(err))
	}
	c, err := control.Dial(ctx, controlPath)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", label, err)
	}
	defer c.Close()
	res, err := c.Register(ctx, label, files...)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", label, err)
	}
	return res, nil
}

// dupConn returns a new *os.File for conn's socket, without touching the
// blocking mode of conn (which (*net.TCPListener).File would not, but
// which a shared *os.File's Fd would).
func dupConn(conn syscall.Conn) (*os.File, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("socket: dup: %w", derr)
	}
	return os.NewFile(uintptr(nfd), "socket"), nil
}

func listenConfig() net.ListenConfig {
	var lc net.ListenConfig
	// Go 1.24+ listens with MPTCP by default; sockmap, and so switchyard,
	// refuse MPTCP sockets.
	lc.SetMultipathTCP(false)
	return lc
}

// ListenTCP listens on addr like net.Listen (network "tcp", "tcp4" or
// "tcp6"), with MPTCP turned off, and registers the listener as a
// destination of label. On failure nothing stays open.
func ListenTCP(ctx context.Context, controlPath, label, network, addr string) (*net.TCPListener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("register %s: network %q: %w: use tcp, tcp4 or tcp6", label, network, ErrInvalid)
	}
	lc := listenConfig()
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", label, err)
	}
	tl := ln.(*net.TCPListener)
	if err := Register(ctx, controlPath, label, tl); err != nil {
		tl.Close()
		return nil, err
	}
	return tl, nil
}

// ListenUDP binds a UDP socket like net.ListenPacket (network "udp", "udp4"
// or "udp6"), turns on what is needed to learn each datagram's original
// destination and to reply from it (see NewUDPConn), and registers it as a
// destination of label. Wrap the result with NewUDPConn to use those.
func ListenUDP(ctx context.Context, controlPath, label, network, addr string) (*net.UDPConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, fmt.Errorf("register %s: network %q: %w: use udp, udp4 or udp6", label, network, ErrInvalid)
	}
	lc := listenConfig()
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", label, err)
	}
	uc := pc.(*net.UDPConn)
	if err := setUDPOptions(uc); err != nil {
		uc.Close()
		return nil, fmt.Errorf("register %s: %w", label, err)
	}
	if err := Register(ctx, controlPath, label, uc); err != nil {
		uc.Close()
		return nil, err
	}
	return uc, nil
}
