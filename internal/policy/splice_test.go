package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/settings"
)

const spliceAddr = srvAddr + ":9000"

// splice starts a proxy for label "px" bound at spliceAddr to upstream.
func (e *env) splice(upstream string) {
	e.t.Helper()
	e.bind("px", srvAddr+"/32", "9000")
	err := e.m.StartSplice(context.Background(), "px", upstream, e.engine, func(ln *net.TCPListener) error {
		_, err := e.d.Register("px", ln)
		return err
	})
	if err != nil {
		e.t.Fatalf("start splice: %v", err)
	}
}

// spliceToListener starts the splice of label px to a listener of its
// own on the server side, which it returns.
func (e *env) spliceToListener() *net.TCPListener {
	e.t.Helper()
	ln := e.srv.ListenTCP(e.t, "127.0.0.1:0")
	e.splice(ln.Addr().String())
	return ln
}

// eachEngine runs test in a parallel subtest per splice engine, each with
// an env of its own.
func eachEngine(t *testing.T, test func(t *testing.T, e *env)) {
	for _, eng := range engines() {
		t.Run(string(eng), func(t *testing.T) {
			t.Parallel()
			test(t, newEnv(t, Options{}, eng))
		})
	}
}

func engines() []settings.Engine { return []settings.Engine{settings.Userspace, settings.Kernel} }

// Bytes proxied by splice arrive intact, in both directions (the reply
// comes back through the proxy after the client's half-close), for every
// way the upstream reads and with each engine.
func TestSpliceIntegrity(t *testing.T) {
	n := integrityBytes()
	for _, v := range []struct {
		name  string
		eng   settings.Engine
		limit uint32
	}{
		{"userspace", settings.Userspace, 0},
		{"kernel", settings.Kernel, 0},
		// A bound high enough that most bytes stay in the kernel.
		{"kernel-unbounded", settings.Kernel, 256 << 20},
	} {
		for _, recv := range []string{"read", "readv", "splice"} {
			t.Run(v.name+"/"+recv, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, Options{SpliceLimit: v.limit}, v.eng)
				up := e.server("", false, recv)
				e.splice("127.0.0.1:" + up.port)
				e.transfer(e.cli, false, spliceAddr, 2, n)
				c := e.counters("px")
				st, _ := e.m.Status()
				t.Logf("counters %+v, %.1f%% of bytes moved in the kernel; status %q", c, 100*float64(c.KernelBytes)/float64(c.Bytes), st["px"])
				if c.Connections != 1 || c.Bytes < n {
					t.Errorf("counters %+v: want 1 connection and at least %d bytes", c, n)
				}
				// The kernel cases test the kernel engine, not the
				// userspace one it falls back to.
				if v.eng == settings.Kernel && !strings.Contains(st["px"], "in the kernel") {
					t.Errorf("status with engine kernel: %q", st["px"])
				}
				if v.limit != 0 && c.KernelBytes == 0 {
					t.Errorf("counters %+v: the kernel engine moved no byte under a bound of %d", c, v.limit)
				}
			})
		}
	}
}

// host:same dials the port the client dialled.
func TestSpliceSamePort(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ln := e.srv.ListenTCP(t, "127.0.0.1:9000")
	go func() {
		c, err := ln.Accept()
		if err == nil {
			fmt.Fprintf(c, "hello from %s", c.LocalAddr())
			c.Close()
		}
	}()
	e.splice("127.0.0.1:same")
	c, err := e.cli.DialTCP(spliceAddr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello from 127.0.0.1:9000" {
		t.Fatalf("read %q, %v", b, err)
	}
}

// pair dials through the proxy and returns the client's end and the
// upstream's end of one proxied connection.
func (e *env) pair(t *testing.T, ln *net.TCPListener) (client, upstream *net.TCPConn) {
	t.Helper()
	c, err := e.cli.DialTCP(spliceAddr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	u, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return c.(*net.TCPConn), u
}

func expectRead(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
		t.Fatalf("read %q, %v; want %q", buf, err, want)
	}
}

// byteEachWay sends a byte from client c to upstream u and one back, so
// that both directions of the splice between them are under way.
func byteEachWay(t *testing.T, c, u net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	expectRead(t, u, "q")
	if _, err := u.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "a")
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("read %d, %v; want EOF", n, err)
	}
}

func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var err error
	for err == nil {
		_, err = c.Read(make([]byte, 4096))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v; want connection reset", err)
	}
}

// Half-close travels both ways and each side can still send after it; a
// reset on either side resets the other. (Peers that exit:
// TestSplicePeerExit, TestSpliceClientExit.)
func TestSplicePropagation(t *testing.T) {
	eachEngine(t, func(t *testing.T, e *env) {
		ln := e.spliceToListener()

		// Half-close, client first.
		c, u := e.pair(t, ln)
		c.Write([]byte("ping"))
		c.CloseWrite()
		expectRead(t, u, "ping")
		expectEOF(t, u)
		u.Write([]byte("pong after your FIN"))
		u.CloseWrite()
		expectRead(t, c, "pong after your FIN")
		expectEOF(t, c)

		// Half-close, upstream first.
		c, u = e.pair(t, ln)
		u.Write([]byte("banner"))
		u.CloseWrite()
		expectRead(t, c, "banner")
		expectEOF(t, c)
		c.Write([]byte("late request"))
		c.CloseWrite()
		expectRead(t, u, "late request")
		expectEOF(t, u)

		// Reset by the upstream.
		c, u = e.pair(t, ln)
		c.Write([]byte("x"))
		expectRead(t, u, "x")
		u.SetLinger(0)
		u.Close()
		expectReset(t, c)

		// Reset by the client.
		c, u = e.pair(t, ln)
		u.Write([]byte("y"))
		expectRead(t, c, "y")
		c.SetLinger(0)
		c.Close()
		expectReset(t, u)
	})
}

// With an upstream that reads slowly, what queues between the client's
// writes and the upstream's reads stays bounded: the client is held back.
func TestSpliceSlowReceiverBounded(t *testing.T) {
	// Per direction: 2*SpliceBuffer received + 1 MiB pipe or SpliceLimit
	// + 2*SpliceBuffer to send, with the defaults.
	const bound = 2*DefaultSpliceBuffer + 1<<20 + 2*DefaultSpliceBuffer
	eachEngine(t, func(t *testing.T, e *env) {
		ln := e.spliceToListener()
		c, u := e.pair(t, ln)
		var written, read atomic.Int64
		stop := make(chan struct{})
		go func() {
			buf := make([]byte, 256<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				n, _ := c.Write(buf)
				written.Add(int64(n))
			}
		}()
		buf := make([]byte, 64<<10)
		var peak, proxyPeak int64
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			n, err := io.ReadFull(u, buf)
			read.Add(int64(n))
			if err != nil {
				t.Fatal(err)
			}
			peak = max(peak, written.Load()-read.Load())
			q, _ := e.m.Splices().Queued("px")
			proxyPeak = max(proxyPeak, q)
			time.Sleep(5 * time.Millisecond)
		}
		close(stop)
		t.Logf("%s: client wrote %d, upstream read %d; peak in flight end to end %d bytes, peak held by the proxy %d bytes (bound %d)",
			e.engine, written.Load(), read.Load(), peak, proxyPeak, bound)
		if proxyPeak > bound {
			t.Errorf("the proxy held up to %d bytes, want at most %d", proxyPeak, bound)
		}
	})
}

func (e *env) startSplice(upstream string) {
	e.t.Helper()
	err := e.m.StartSplice(context.Background(), "px", upstream, e.engine, func(ln *net.TCPListener) error {
		_, err := e.d.Register("px", ln)
		return err
	})
	if err != nil {
		e.t.Fatalf("start splice: %v", err)
	}
}

// Stopping a splice while a connection streams through it loses nothing:
// the open connection runs to its end, new ones are refused (the label has
// no socket), and starting the splice again serves them.
func TestSpliceStopWhileOpen(t *testing.T) {
	eachEngine(t, func(t *testing.T, e *env) {
		up := e.server("", false, "read")
		upstream := "127.0.0.1:" + up.port
		e.splice(upstream)
		const n = 48 << 20
		h := e.startEnv(e.cli, false, []string{"SY_CLIENT_PACE=2ms", "SY_CLIENT_SAY_CONNECTED=1"}, "client", spliceAddr, "7", fmt.Sprint(n))
		if got := h.line(t); got != "connected" {
			t.Fatalf("client: %q", got)
		}
		if err := e.m.StopSplice("px"); err != nil {
			t.Fatal(err)
		}
		if c, err := e.cli.DialTCP(spliceAddr, 2*time.Second); err == nil {
			c.Close()
			t.Error("a new connection was accepted after StopSplice")
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial after StopSplice: %v, want connection refused", err)
		}
		if got, want := h.line(t), fmt.Sprintf("ok %d %s", n, streamHash(7, n)); got != want {
			t.Fatalf("connection open across StopSplice: client says %q, want %q", got, want)
		}
		e.startSplice(upstream)
		e.transfer(e.cli, false, spliceAddr, 8, 8<<20)
	})
}

// Closing the manager (the daemon stopping) cuts the connections its
// proxies splice, and the client sees the cut as a reset: a clean end of
// stream would pass a truncated response for a whole one.
func TestSpliceCloseResetsConnections(t *testing.T) {
	eachEngine(t, func(t *testing.T, e *env) {
		ln := e.spliceToListener()
		c, u := e.pair(t, ln)
		byteEachWay(t, c, u)
		if err := e.m.Close(); err != nil {
			t.Fatal(err)
		}
		expectReset(t, c)
	})
}

// A kernel path that cannot attach leaves connections working, and Status
// says why.
func TestBypassFallbackWhenUnattachable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{Cgroup: t.TempDir(), TrustReaders: true}) // not a cgroup
	e.bypassServer("read", nil)
	e.transfer(e.cli, true, srvAddr+":8080", 6, 8<<20)
	st, err := e.m.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st["svc"], "not accelerated") || !strings.Contains(st["svc"], "cgroup") {
		t.Errorf("status %q, want it to say bypass is not accelerated and why", st["svc"])
	}
	if c := e.counters("svc"); c.Bytes != 0 {
		t.Errorf("counters %+v with no sockops program attached", c)
	}
}

// A peer process that exits closes its end; the other side of the splice
// sees the bytes it sent and then end of stream, whichever side exited.
func TestSplicePeerExit(t *testing.T) {
	for i, eng := range engines() {
		t.Run(string(eng), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, Options{}, eng)

			// The upstream is a process per connection (socat's forked
			// child) that answers and exits.
			port := fmt.Sprint(19191 + i)
			up := e.srv.Command("socat", "TCP4-LISTEN:"+port+",bind=127.0.0.1,reuseaddr,fork", "SYSTEM:echo bye")
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { up.Process.Kill(); up.Wait() }()
			for deadline := time.Now().Add(5 * time.Second); ; {
				c, err := e.srv.DialTCP("127.0.0.1:"+port, time.Second)
				if err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("socat does not listen")
				}
				time.Sleep(20 * time.Millisecond)
			}
			e.splice("127.0.0.1:" + port)
			var c net.Conn
			for deadline := time.Now().Add(5 * time.Second); ; {
				var err error
				if c, err = e.cli.DialTCP(spliceAddr, 3*time.Second); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "bye\n" {
				t.Fatalf("client after the upstream exited: %q, %v; want its bytes, then end of stream", got, err)
			}
		})
	}
}

// A client process that sends and exits: the upstream gets its bytes, then
// end of stream.
func TestSpliceClientExit(t *testing.T) {
	eachEngine(t, func(t *testing.T, e *env) {
		ln := e.spliceToListener()
		cli := e.cli.Command("socat", "-u", "SYSTEM:echo hi", "TCP4:"+spliceAddr)
		if out, err := cli.CombinedOutput(); err != nil {
			t.Fatalf("client: %v: %s", err, out)
		}
		ln.SetDeadline(time.Now().Add(5 * time.Second))
		u, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		u.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(u)
		if err != nil || string(got) != "hi\n" {
			t.Fatalf("upstream after the client exited: %q, %v; want its bytes, then end of stream", got, err)
		}
	})
}

// With the kernel engine, bytes the upstream sends the moment it accepts,
// before the pair is in the engine's sockmap, arrive once and in order with
// what follows: the verdict program sees them when the socket enters the
// map (Linux 6.18 reads the queue then: all bytes count as moved in the
// kernel), or, where it does not, the engine takes the direction over in
// userspace (sy_k_force).
func TestKernelSpliceEarlyData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{SpliceLimit: 256 << 20}, settings.Kernel)
	ln := e.srv.ListenTCP(t, "127.0.0.1:0")
	const early, rest = "early bytes;", 1 << 20
	want := make([]byte, 0, len(early)+rest)
	want = append(want, early...)
	for i := range rest {
		want = append(want, byte(i*7+i>>9))
	}
	go func() {
		u, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		defer u.Close()
		u.Write(want[:len(early)])
		// The rest once the client has spoken: the pair runs by then.
		if _, err := io.ReadFull(u, make([]byte, 2)); err != nil {
			return
		}
		u.Write(want[len(early):])
	}()
	e.splice(ln.Addr().String())
	c, err := e.cli.DialTCP(spliceAddr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectRead(t, c, early)
	if _, err := c.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, rest)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the rest: %v", err)
	}
	if !bytes.Equal(got, want[len(early):]) {
		i := 0
		for i < len(got) && got[i] == want[len(early)+i] {
			i++
		}
		t.Fatalf("the stream after the early bytes differs first at offset %d", i)
	}
	t.Logf("counters %+v", e.counters("px"))
}

// With the kernel engine, a client that speaks first (as TLS and HTTP
// clients do, right after connecting, before the proxy has accepted or
// dialled the upstream) gets its bytes through once and in order, and the
// kernel moves them and every byte after: the early bytes do not leave
// the connection to userspace.
func TestKernelSpliceClientFirst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{SpliceLimit: 256 << 20}, settings.Kernel)
	ln := e.srv.ListenTCP(t, "127.0.0.1:0")
	e.splice(ln.Addr().String())
	c, err := e.cli.DialTCP(spliceAddr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const hello, reply = "client hello;", "server hello;"
	if _, err := c.Write([]byte(hello)); err != nil {
		t.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	u, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	expectRead(t, u, hello)
	if _, err := u.Write([]byte(reply)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, reply)
	rest := make([]byte, 4<<20)
	for i := range rest {
		rest[i] = byte(i*7 + i>>9)
	}
	go func() {
		c.Write(rest)
		c.(*net.TCPConn).CloseWrite()
	}()
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(u)
	if err != nil {
		t.Fatalf("upstream read: %v", err)
	}
	if !bytes.Equal(got, rest) {
		i := 0
		for i < min(len(got), len(rest)) && got[i] == rest[i] {
			i++
		}
		t.Fatalf("upstream received %d bytes after the hello, want %d; first difference at offset %d", len(got), len(rest), i)
	}
	if cn := e.counters("px"); cn.KernelBytes != cn.Bytes || cn.Bytes != uint64(len(hello)+len(reply)+len(rest)) {
		t.Errorf("counters %+v: want all %d bytes moved in the kernel", cn, len(hello)+len(reply)+len(rest))
	}
}
