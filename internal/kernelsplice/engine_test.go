package kernelsplice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/testenv"
	"golang.org/x/sys/unix"
)

// A destination that never takes the redirected bytes keeps waitDrained
// waiting for as long as the connection lives: it looks again less and
// less often, not every millisecond, and still ends when told to.
func TestWaitDrainedBacksOff(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	ln := ns.ListenTCP(t, "127.0.0.1:0")
	c, err := ns.DialTCP(ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var looks atomic.Int64
	// More than was ever written to c: never drained.
	redirected := func() (uint64, error) {
		looks.Add(1)
		return 1 << 40, nil
	}
	done := make(chan struct{})
	const wait = 500 * time.Millisecond
	time.AfterFunc(wait, func() { close(done) })
	err = waitDrained(c.(*net.TCPConn), redirected, done)
	if err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("waitDrained on a destination that never drains, stopped: %v, want the stop", err)
	}
	// 1+2+4+...+64 ms, then every 64 ms: about 14 looks in 500 ms, where
	// a look every millisecond made hundreds.
	if n := looks.Load(); n > 30 {
		t.Errorf("waitDrained looked %d times in %v: want it to back off (at most 30)", n, wait)
	}
}

// pairEnv is a proxied connection in a namespace of its own, for Pair: the
// client (c), the proxy's two sockets (a, accepted from c; b, dialled to
// the upstream) and the upstream's (u).
type pairEnv struct {
	e          *Engine
	c, a, b, u *net.TCPConn
}

func newPairEnv(t *testing.T, limit uint32) *pairEnv {
	t.Helper()
	ns := testenv.NewNetNS(t)
	e, err := Open(testenv.BPFFS(t), limit, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	conn := func(ln *net.TCPListener) (dialled, accepted *net.TCPConn) {
		c, err := ns.DialTCP(ln.Addr().String(), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c.(*net.TCPConn), s
	}
	p := &pairEnv{e: e}
	p.c, p.a = conn(ns.ListenTCP(t, "127.0.0.1:0"))
	p.b, p.u = conn(ns.ListenTCP(t, "127.0.0.1:0"))
	return p
}

// run starts Pair for label id 1 and returns what it returns, once it has.
func (p *pairEnv) run() <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- p.e.Pair(context.Background(), 1, p.a, p.b, Hooks{
			Log:   slog.New(slog.DiscardHandler),
			Moved: func(uint64) {},
			Track: func(src, dst *net.TCPConn, backlog func() int64) func() { return func() {} },
		})
	}()
	return done
}

// kernelBytes is what the engine counts as moved in the kernel for label 1
// (policy's KernelBytes).
func (p *pairEnv) kernelBytes(t *testing.T) uint64 {
	t.Helper()
	n, _, err := p.e.Counters(1)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// acked reports, waiting up to 5 s, whether the peer of c has taken in
// (acknowledged) n bytes written to c, so that its receive path has run
// for them, the verdict program with it where the socket is in
// sy_k_pairs; if not, it says what it saw.
func acked(c *net.TCPConn, n uint64) (bool, string) {
	return testenv.Poll(5*time.Second, func() (bool, string) {
		var info *unix.TCPInfo
		var err error
		rawConn(c).Control(func(fd uintptr) {
			info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		})
		if err != nil {
			return false, err.Error()
		}
		return info.Bytes_acked >= n, fmt.Sprintf("%d of %d bytes acked", info.Bytes_acked, n)
	})
}

// A client that writes first, right after connecting and again while the
// pair enters the engine (its socket in sy_k_pairs, the upstream's not
// yet), gets every byte through intact and in order, and what it sends
// once the pair runs moves in the kernel: the direction did not fall back
// to userspace for good because bytes arrived before its destination was
// in the map.
func TestPairDataBeforePairing(t *testing.T) {
	t.Parallel()
	p := newPairEnv(t, 256<<20)
	early, middle := []byte("written right after connect;"), []byte("written while a is in the map, b not yet;")
	if _, err := p.c.Write(early); err != nil {
		t.Fatal(err)
	}
	p.e.inserted = func(i int) {
		if i != 0 {
			return
		}
		if _, err := p.c.Write(middle); err != nil {
			t.Error(err)
			return
		}
		if ok, seen := acked(p.c, uint64(len(early)+len(middle))); !ok {
			t.Errorf("the client's bytes taken in while the pair starts: %s", seen)
		}
		// A read of a's queue (as Pair's watch makes) runs the verdict
		// program over what it holds where the kernel has not yet.
		rawConn(p.a).Control(func(fd uintptr) {
			unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK|unix.MSG_DONTWAIT)
		})
	}
	done := p.run()
	late := make([]byte, 4<<20)
	for i := range late {
		late[i] = byte(i*7 + i>>11)
	}
	want := slices.Concat(early, middle, late)
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(p.u)
		if err != nil {
			t.Errorf("upstream read: %v", err)
		}
		got <- b
	}()
	// The late bytes once the first ones have arrived: the pair runs.
	if ok, seen := acked(p.b, uint64(len(early)+len(middle))); !ok {
		t.Fatalf("the first bytes forwarded: %s", seen)
	}
	before := p.kernelBytes(t)
	if _, err := p.c.Write(late); err != nil {
		t.Fatal(err)
	}
	p.c.CloseWrite()
	b := <-got
	if !bytes.Equal(b, want) {
		i := 0
		for i < min(len(b), len(want)) && b[i] == want[i] {
			i++
		}
		t.Errorf("upstream received %d bytes, want %d; first difference at offset %d", len(b), len(want), i)
	}
	p.u.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if k := p.kernelBytes(t) - before; k != uint64(len(late)) {
		t.Errorf("the kernel moved %d of the %d bytes sent once the pair ran (%d bytes before it, %d while it started): want all", k, len(late), len(early), len(middle))
	}
}

// tcpState returns c's TCP state (unix.BPF_TCP_*).
func tcpState(c *net.TCPConn) uint8 {
	var state uint8
	rawConn(c).Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state
}

// An upstream that half-closes while the pair enters the engine, after
// the proxy's upstream socket (b) went into sy_k_peers and before it could
// enter sy_k_pairs (which takes established sockets only), leaves the
// connection to the userspace engine when the program has not acted on
// the client's bytes yet (Pair returns an error and changed nothing: the
// bytes are still there to read), and resets it when it has (they went
// with the map's entries).
func TestPairUpstreamClosesWhilePairing(t *testing.T) {
	for _, clientWrites := range []bool{false, true} {
		t.Run(fmt.Sprintf("clientWrites=%v", clientWrites), func(t *testing.T) {
			t.Parallel()
			p := newPairEnv(t, 256<<20)
			msg := []byte("client bytes")
			p.e.inserted = func(i int) {
				if i != 0 {
					return
				}
				p.u.CloseWrite()
				if ok, seen := testenv.Poll(5*time.Second, func() (bool, string) {
					s := tcpState(p.b)
					return s == unix.BPF_TCP_CLOSE_WAIT, fmt.Sprintf("state %d", s)
				}); !ok {
					t.Errorf("the proxy's upstream socket half-closed: %s", seen)
				}
				if !clientWrites {
					return
				}
				if _, err := p.c.Write(msg); err != nil {
					t.Error(err)
				}
				if ok, seen := acked(p.c, uint64(len(msg))); !ok {
					t.Errorf("the client's bytes taken in: %s", seen)
				}
				rawConn(p.a).Control(func(fd uintptr) {
					unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK|unix.MSG_DONTWAIT)
				})
			}
			err := <-p.run()
			if !clientWrites {
				if err == nil {
					t.Fatal("Pair with the upstream half-closed before it entered the map: nil error, want the insert's")
				}
				// Nothing changed: the userspace engine takes over.
				if _, err := p.c.Write(msg); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(msg))
				p.a.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(p.a, got); err != nil || !bytes.Equal(got, msg) {
					t.Errorf("read the client's bytes after Pair refused: %q, %v", got, err)
				}
				if n, err := p.b.Read(got); n != 0 || err != io.EOF {
					t.Errorf("read the upstream's end of stream after Pair refused: %d bytes, %v", n, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Pair after the program moved bytes toward an upstream that then half-closed: %v, want nil (both reset)", err)
			}
			p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := p.c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("client read after the reset: %v, want ECONNRESET", err)
			}
		})
	}
}

// While a pair runs, its sockets closing under it (the process that holds
// them dies, or closes them) resets both connections: the client and the
// upstream see the stream cut, not an end of stream that would pass a cut
// stream for a whole one.
func TestPairCutResetsBothEnds(t *testing.T) {
	p := newPairEnv(t, 1<<20)
	done := p.run()
	buf := make([]byte, 1)
	for _, d := range []struct{ from, to *net.TCPConn }{{p.c, p.u}, {p.u, p.c}} {
		if _, err := d.from.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		d.to.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(d.to, buf); err != nil {
			t.Fatal(err)
		}
	}
	if ok, why := testenv.Poll(5*time.Second, func() (bool, string) {
		n := p.kernelBytes(t)
		return n >= 2, fmt.Sprintf("%d bytes moved in the kernel", n)
	}); !ok {
		t.Fatalf("the pair did not run in the kernel: %s", why)
	}
	// What the kernel does with a dead process's sockets.
	p.a.Close()
	p.b.Close()
	for name, c := range map[string]*net.TCPConn{"client": p.c, "upstream": p.u} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s read after the proxy's sockets closed under the pair: %d bytes, %v; want connection reset", name, n, err)
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Pair did not return after its sockets closed")
	}
}
