package register_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/testenv"
	"github.com/switchyard-project/switchyard/register"
)

func TestListenTCP(t *testing.T) {
	ns := testenv.NewNetNS(t)
	for _, tc := range []struct{ label, network, addr string }{
		{"tcp4-web", "tcp4", "127.0.0.1:0"},
		{"tcp6-web", "tcp6", "[::1]:0"},
		{"dual-web", "tcp", ":0"},
	} {
		t.Run(tc.label, func(t *testing.T) {
			var ln *net.TCPListener
			err := ns.Do(func() (err error) {
				ln, err = register.ListenTCP(t.Context(), controlPath, tc.label, tc.network, tc.addr)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if p := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
				t.Errorf("listener protocol %d, want plain TCP (MPTCP must be off)", p)
			}
			if got := daemon.take(tc.label); !slices.Equal(got, []uint64{cookieOf(t, ln)}) {
				t.Errorf("daemon got sockets %v, want %v", got, cookieOf(t, ln))
			}
			// The listener still works and is still non-blocking: Accept
			// honours a deadline.
			ln.SetDeadline(time.Now().Add(10 * time.Millisecond))
			if _, err := ln.Accept(); !isTimeout(err) {
				t.Fatalf("accept: %v, want a timeout", err)
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestListenTCPRefused(t *testing.T) {
	ns := testenv.NewNetNS(t)
	before := testenv.CountFDs(t)
	var err error
	ns.Do(func() error {
		_, err = register.ListenTCP(t.Context(), controlPath, "denied", "tcp4", "127.0.0.1:0")
		return nil
	})
	if !errors.Is(err, register.ErrPermission) || !strings.Contains(err.Error(), "granted in the config") {
		t.Fatalf("got %v, want the daemon's permission error", err)
	}
	// Nothing stays open: the listener was closed. Go may finish closing
	// a descriptor a moment later, when a goroutine still using it lets go.
	testenv.WaitFor(t, 2*time.Second, "descriptors closed", func() (bool, string) {
		after := testenv.CountFDs(t)
		return after <= before, fmt.Sprintf("%d descriptors left open", after-before)
	})
}

func TestRegisterErrors(t *testing.T) {
	ctx := t.Context()
	if _, err := register.ListenTCP(ctx, controlPath, "web", "udp", ":0"); !errors.Is(err, register.ErrInvalid) {
		t.Errorf("ListenTCP on udp: %v", err)
	}
	if _, err := register.ListenUDP(ctx, controlPath, "web", "tcp", ":0"); !errors.Is(err, register.ErrInvalid) {
		t.Errorf("ListenUDP on tcp: %v", err)
	}
	if _, err := register.RegisterFiles(ctx, controlPath, "bad label"); !errors.Is(err, register.ErrInvalid) {
		t.Errorf("bad label: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "control.sock")
	if _, err := register.RegisterFiles(ctx, missing, "web"); err == nil || !strings.Contains(err.Error(), "start switchyardd") {
		t.Errorf("no daemon: %v", err)
	}
}

func TestListenUDP(t *testing.T) {
	ns := testenv.NewNetNS(t)
	for _, tc := range []struct {
		label, network, addr string
		v4, v6               bool
	}{
		{"udp4-dns", "udp4", "127.0.0.1:0", true, false},
		{"udp6-dns", "udp6", "[::1]:0", false, true},
		{"dual-dns", "udp", ":0", true, true},
	} {
		t.Run(tc.label, func(t *testing.T) {
			var c *net.UDPConn
			err := ns.Do(func() (err error) {
				c, err = register.ListenUDP(t.Context(), controlPath, tc.label, tc.network, tc.addr)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := daemon.take(tc.label); !slices.Equal(got, []uint64{cookieOf(t, c)}) {
				t.Errorf("daemon got sockets %v, want %v", got, cookieOf(t, c))
			}
			if tc.v4 && sockopt(t, c, unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR) != 1 {
				t.Error("IP_RECVORIGDSTADDR is off")
			}
			if tc.v6 {
				if sockopt(t, c, unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR) != 1 {
					t.Error("IPV6_RECVORIGDSTADDR is off")
				}
				if sockopt(t, c, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND) != 1 {
					t.Error("IPV6_FREEBIND is off")
				}
			}
		})
	}
}

func TestRegisterSocket(t *testing.T) {
	ns := testenv.NewNetNS(t)
	ln := ns.ListenTCP(t, "127.0.0.1:0")
	u := ns.ListenUDP(t, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := register.Register(ctx, controlPath, "pair", ln); err != nil {
		t.Fatal(err)
	}
	if err := register.Register(ctx, controlPath, "pair", u); err != nil {
		t.Fatal(err)
	}
	if got, want := daemon.take("pair"), []uint64{cookieOf(t, ln), cookieOf(t, u)}; !slices.Equal(got, want) {
		t.Fatalf("daemon got sockets %v, want %v", got, want)
	}
	// A connected UDP socket is refused, with the daemon's reason.
	c, err := ns.DialUDP("127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := register.Register(ctx, controlPath, "pair", c); !errors.Is(err, register.ErrInvalid) || !strings.Contains(err.Error(), "connected") {
		t.Fatalf("connected socket: %v", err)
	}
}
