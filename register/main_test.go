package register_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/control/controltest"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// controlPath is the socket of a fake daemon that runs for the whole test
// binary. It checks registered sockets roughly as switchyardd does and
// remembers their cookies.
var (
	controlPath string
	daemon      fakeDaemon
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "register-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	controlPath = filepath.Join(dir, "control.sock")
	srv, err := controltest.Start(controlPath, func(_ *control.Conn, req *control.Request, files []*os.File) *control.Reply {
		return daemon.handle(req, files)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := testenv.CheckFDLeaks(m)
	srv.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

type fakeDaemon struct {
	mu         sync.Mutex
	registered map[string][]uint64 // label -> socket cookies
}

// take returns the cookies of the sockets registered for label, and
// forgets them (so that -count=N runs start afresh).
func (d *fakeDaemon) take(label string) []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.registered[label]
	delete(d.registered, label)
	return c
}

func (d *fakeDaemon) handle(req *control.Request, files []*os.File) *control.Reply {
	r, ok := req.Body.(*control.RegisterRequest)
	if !ok {
		return control.NewErrorReply(req.Version, req.Op(), errors.ErrUnsupported)
	}
	if r.Label == "denied" {
		return control.NewErrorReply(req.Version, req.Op(), control.Errorf(control.CodePermission, "user 0 may not register label denied: ask for it to be granted in the config"))
	}
	var res []control.RegisterResult
	var cookies []uint64
	for _, f := range files {
		rr, cookie, err := inspect(f)
		if err != nil {
			return control.NewErrorReply(req.Version, req.Op(), err)
		}
		res = append(res, rr)
		cookies = append(cookies, cookie)
	}
	d.mu.Lock()
	if d.registered == nil {
		d.registered = make(map[string][]uint64)
	}
	d.registered[r.Label] = append(d.registered[r.Label], cookies...)
	d.mu.Unlock()
	return control.NewReply(req, &control.RegisterResponse{Results: res})
}

// inspect checks a socket the way switchyardd would, roughly. It must not
// use f.Fd: that would switch the service's socket, which shares its file
// description with f, to blocking mode.
func inspect(f *os.File) (rr control.RegisterResult, cookie uint64, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return rr, 0, err
	}
	if cerr := rc.Control(func(fd uintptr) { rr, cookie, err = inspectFD(int(fd)) }); cerr != nil {
		return rr, 0, cerr
	}
	return rr, cookie, err
}

func inspectFD(fd int) (control.RegisterResult, uint64, error) {
	var rr control.RegisterResult
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return rr, 0, control.Errorf(control.CodeInvalid, "not a socket: %v", err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return rr, 0, err
	}
	switch proto {
	case unix.IPPROTO_TCP:
		rr.Protocol = binding.TCP
		if l, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); l != 1 {
			return rr, 0, control.Errorf(control.CodeInvalid, "tcp socket is not listening")
		}
	case unix.IPPROTO_UDP:
		rr.Protocol = binding.UDP
		if _, err := unix.Getpeername(fd); err == nil {
			return rr, 0, control.Errorf(control.CodeInvalid, "udp socket is connected")
		}
	case unix.IPPROTO_MPTCP:
		return rr, 0, control.Errorf(control.CodeInvalid, "MPTCP listener: listen with net.ListenConfig.SetMultipathTCP(false)")
	default:
		return rr, 0, control.Errorf(control.CodeInvalid, "protocol %d is not tcp or udp", proto)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return rr, 0, err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		rr.Family = binding.IPv4
		rr.Local = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		rr.Family = binding.IPv6
		rr.Local = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	default:
		return rr, 0, control.Errorf(control.CodeInvalid, "socket family %d is not IPv4 or IPv6", domain)
	}
	cookie, err := socketCookie(fd)
	return rr, cookie, err
}

func socketCookie(fd int) (uint64, error) {
	var c uint64
	l := uint32(unsafe.Sizeof(c))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_COOKIE,
		uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, fmt.Errorf("SO_COOKIE: %w", e)
	}
	return c, nil
}

// cookieOf returns the socket cookie of a net socket.
func cookieOf(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var cerr error
	if err := rc.Control(func(fd uintptr) { cookie, cerr = socketCookie(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if cerr != nil {
		t.Fatal(cerr)
	}
	return cookie
}

// sockopt reads an int socket option of a net socket.
func sockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}
