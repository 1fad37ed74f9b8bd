package tests

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// patternUpstream is an upstream that checks every byte a connection
// sends it against a known stream, offset by offset, and answers each
// byte it checked with one of a stream of its own, which the client
// checks in turn. A connection's first byte is its seed, which picks
// both streams.
type patternUpstream struct {
	mu   sync.Mutex
	done map[byte]chan patternResult
}

// patternCheck compares what one side of a connection reads with the
// stream it expects, offset by offset.
type patternCheck struct {
	want     *rand.ChaCha8
	buf      []byte
	checked  int64 // bytes that matched, from offset 0
	mismatch int64 // offset of the first byte that did not; -1 if none
}

func newPatternCheck(key [32]byte) patternCheck {
	return patternCheck{want: rand.NewChaCha8(key), buf: make([]byte, 64<<10), mismatch: -1}
}

// check takes the next bytes read, b (at most 64 KiB).
func (p *patternCheck) check(b []byte) {
	want := p.buf[:len(b)]
	p.want.Read(want)
	if p.mismatch >= 0 {
		return
	}
	for i := range b {
		if b[i] != want[i] {
			p.mismatch = p.checked + int64(i)
			return
		}
	}
	p.checked += int64(len(b))
}

// patternResult is what the upstream saw of one connection.
type patternResult struct {
	patternCheck
	err error // nil: the client half-closed, after which it closed
}

func newPatternUpstream(t *testing.T, ln net.Listener) *patternUpstream {
	t.Helper()
	u := &patternUpstream{done: make(map[byte]chan patternResult)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	return u
}

func (u *patternUpstream) result(seed byte) chan patternResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch, ok := u.done[seed]
	if !ok {
		ch = make(chan patternResult, 1)
		u.done[seed] = ch
	}
	return ch
}

func (u *patternUpstream) serve(c net.Conn) {
	defer c.Close()
	var seed [1]byte
	if _, err := io.ReadFull(c, seed[:]); err != nil {
		return
	}
	out := rand.NewChaCha8([32]byte{seed[0], 1})
	r := patternResult{patternCheck: newPatternCheck([32]byte{seed[0]})}
	buf, reply := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			r.check(buf[:n])
			out.Read(reply[:n])
			if _, werr := c.Write(reply[:n]); werr != nil && err == nil {
				err = werr
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.err = err
			}
			u.result(seed[0]) <- r
			return
		}
	}
}

// patternConn is a client of patternUpstream: it sends the stream of its
// seed and checks, as it reads, what the upstream answers.
type patternConn struct {
	seed byte
	c    *net.TCPConn
	out  *rand.ChaCha8
	sent int64

	mu    sync.Mutex
	ans   patternCheck // the answer, as read so far
	rerr  error        // how reading ended (io.EOF: cleanly)
	moved chan struct{}
	ended chan struct{}
}

func dialPattern(t *testing.T, w *world, addr string, seed byte) *patternConn {
	t.Helper()
	c, err := w.ns.DialTCP(addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	p := &patternConn{seed: seed, c: c.(*net.TCPConn), out: rand.NewChaCha8([32]byte{seed}), ans: newPatternCheck([32]byte{seed, 1}), moved: make(chan struct{}, 1), ended: make(chan struct{})}
	if _, err := p.c.Write([]byte{seed}); err != nil {
		t.Fatalf("dial %s: send the seed: %v", addr, err)
	}
	go p.read()
	return p
}

func (p *patternConn) read() {
	defer close(p.ended)
	buf := make([]byte, 64<<10)
	for {
		n, err := p.c.Read(buf)
		p.mu.Lock()
		p.ans.check(buf[:n])
		if err != nil {
			p.rerr = err
		}
		p.mu.Unlock()
		select {
		case p.moved <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// state is what the client checked of the answer so far.
func (p *patternConn) state() (got, mismatch int64, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ans.checked, p.ans.mismatch, p.rerr
}

// send sends n more bytes of the stream and returns once the upstream's
// answer to every byte sent so far has arrived and matched.
func (p *patternConn) send(t *testing.T, when string, n int) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for n > 0 {
		b := buf[:min(n, len(buf))]
		p.out.Read(b)
		p.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		if _, err := p.c.Write(b); err != nil {
			got, _, rerr := p.state()
			t.Fatalf("%s: send on the connection of seed %d after %d bytes sent, %d answered: %v (reading: %v)", when, p.seed, p.sent, got, err, rerr)
		}
		p.sent += int64(len(b))
		n -= len(b)
	}
	deadline := time.After(20 * time.Second)
	for {
		got, mismatch, err := p.state()
		switch {
		case mismatch >= 0:
			t.Fatalf("%s: the answer on the connection of seed %d differs at offset %d", when, p.seed, mismatch)
		case got == p.sent:
			return
		case err != nil:
			t.Fatalf("%s: the connection of seed %d ended after %d of %d bytes answered: %v", when, p.seed, got, p.sent, err)
		}
		select {
		case <-p.moved:
		case <-deadline:
			t.Fatalf("%s: %d of %d bytes answered on the connection of seed %d after 20s", when, got, p.sent, p.seed)
		}
	}
}

// finish half-closes, and checks that the upstream got every byte sent,
// intact, that the answer ended cleanly, and that neither side saw a
// reset.
func (p *patternConn) finish(t *testing.T, u *patternUpstream) {
	t.Helper()
	if err := p.c.CloseWrite(); err != nil {
		t.Fatalf("connection of seed %d: half-close: %v", p.seed, err)
	}
	select {
	case r := <-u.result(p.seed):
		if r.err != nil || r.mismatch >= 0 || r.checked != p.sent {
			t.Errorf("connection of seed %d: the upstream checked %d of %d bytes sent (first difference at %d), ended with %v", p.seed, r.checked, p.sent, r.mismatch, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("connection of seed %d: the upstream saw no end 20s after the half-close", p.seed)
	}
	select {
	case <-p.ended:
	case <-time.After(20 * time.Second):
		t.Fatalf("connection of seed %d: the answer did not end 20s after the upstream's", p.seed)
	}
	if got, mismatch, err := p.state(); !errors.Is(err, io.EOF) || mismatch >= 0 || got != p.sent {
		t.Errorf("connection of seed %d: %d of %d answer bytes checked (first difference at %d), reading ended with %v, want EOF", p.seed, got, p.sent, mismatch, err)
	}
}

// kernelSpliced is the sum of the kernel engine's byte counters (every
// label) in the state directory dir.
func kernelSpliced(t *testing.T, dir string) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sy_k_stats"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("the kernel engine's counters: %v", err)
	}
	defer m.Close()
	var key uint32
	var per []struct{ Bytes, Messages uint64 }
	var sum uint64
	it := m.Iterate()
	for it.Next(&key, &per) {
		for _, c := range per {
			sum += c.Bytes
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("the kernel engine's counters: %v", err)
	}
	return sum
}

// sockets counts the sockets in the pinned sockmap at path.
func sockets(t *testing.T, path string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("sockmap %s: %v", filepath.Base(path), err)
	}
	defer m.Close()
	n := 0
	var cookie uint64
	for i := range m.MaxEntries() {
		if err := m.Lookup(i, &cookie); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("sockmap %s[%d]: %v", filepath.Base(path), i, err)
		}
	}
	return n
}

// The daemon of landed main with a splice label on the in-kernel engine
// (engine: kernel in its config), a long-lived connection streaming
// through it in both directions and other connections under way, is
// stopped (SIGTERM, or killed) and this build started on the same state.
//
// The kernel engine's proxy runs in the daemon, in the landed build as in
// this one (README: its connections end when the daemon stops or
// restarts), and the landed daemon closes them as it stops, so no build
// started after it can keep them: against the project's rule for
// upgrades (no connection lost), a limitation of the engine, not a goal.
// What the test holds: the long connection is checked, byte by byte and
// both ways, up to the stop, and then ends (does not hang) with nothing
// delivered out of order or corrupted. The landed engine's pinned maps,
// left behind by a kill, hold no socket by the time this build starts
// (each socket left its sockmap as the dead daemon's descriptors closed),
// and this build replaces them with its own (the engine's Open removes
// what an earlier process pinned): it never runs its program over a pair
// the landed build made. New connections through the label then work and
// the kernel moves their bytes, and every binding and setting is kept.
func TestUpgradeKernelSpliceFromLandedMain(t *testing.T) {
	t.Parallel()
	old := buildLanded(t, landedMain)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			t.Parallel()
			upgradeKernelSplice(t, old, sig)
		})
	}
}

// kernelPins are the in-kernel splice engine's pins, the landed build's
// (since 2c45d48) and this build's.
var kernelPins = []string{"sy_k_config", "sy_k_cookies", "sy_k_dirs", "sy_k_force", "sy_k_pairs", "sy_k_peers", "sy_k_stats"}

func upgradeKernelSplice(t *testing.T, old string, sig syscall.Signal) {
	w, oldRun := startLanded(t, old)

	upLn := w.ns.ListenTCP(t, "127.0.0.1:0")
	up := newPatternUpstream(t, upLn)
	cfg := writeFile(t, fmt.Sprintf(`version: 1
labels:
  web: {}
  proxied:
    policy: splice
    upstream: "%s"
    engine: kernel
bindings:
  - {label: web, protocol: tcp, prefix: 10.8.0.0/16, ports: "*"}
  - {label: proxied, protocol: tcp, prefix: 10.6.0.0/24, ports: "*"}
`, upLn.Addr()))
	oldRun("apply", "-f", cfg)
	serveOK(w.registerTCP("web", "tcp4", "127.0.0.1:0"))

	beforeBindings := listing(t, oldRun("bindings", "-o", "json"))
	beforePolicies := labelPolicies(t, oldRun("status", "-o", "json"))
	if got := beforePolicies["proxied"]; got != "splice "+upLn.Addr().String() {
		t.Fatalf("the old daemon's status of proxied: %q", got)
	}
	if st := oldRun("status", "proxied"); !strings.Contains(st, "in the kernel") {
		t.Fatalf("the old daemon does not splice proxied in the kernel:\n%s", st)
	}
	if got := policyPins(t, w.stateDir()); !slices.Equal(got, kernelPins) {
		t.Fatalf("the landed build's policy pins: %q, want %q", got, kernelPins)
	}

	long := dialPattern(t, w, "10.6.0.1:80", 1)
	long.send(t, "landed build", 1<<20)
	if k := kernelSpliced(t, w.stateDir()); k == 0 {
		t.Fatalf("the landed build moved no byte of the long connection in the kernel")
	}

	l := startLoad(w, 4, func(r *rand.Rand) string {
		return fmt.Sprintf("10.8.%d.%d:%d", r.IntN(256), 1+r.IntN(254), 1+r.IntN(65535))
	})
	defer l.finishChecked(t)
	l.waitAttempts(t, 500)
	long.send(t, "landed build, under load", 1<<20)
	if got := sockets(t, filepath.Join(w.stateDir(), "sy_k_pairs")); got != 2 {
		t.Fatalf("the landed build's sy_k_pairs holds %d sockets with one connection spliced, want 2", got)
	}
	// This build's CLI asks the landed daemon, which does not speak
	// control.StatusVersion, in the version it reads.
	if st := w.mustCLI("status", "proxied"); !strings.Contains(st, "in the kernel") {
		t.Errorf("this build's CLI, status of the landed daemon:\n%s", st)
	}

	if st := w.d.stop(t, sig); sig == syscall.SIGTERM && st.ExitCode() != 0 {
		t.Errorf("the old daemon's SIGTERM: exit %v", st)
	}
	// The long connection ends with the landed daemon: every byte it
	// answered before was checked, and none after.
	select {
	case <-long.ended:
	case <-time.After(20 * time.Second):
		t.Fatalf("the landed daemon's kernel-spliced connection still open 20s after its %s", unix.SignalName(sig))
	}
	got, mismatch, rerr := long.state()
	t.Logf("%s to the landed daemon ended its kernel-spliced connection after %d bytes each way: the client read %v", unix.SignalName(sig), got, rerr)
	if mismatch >= 0 || got != long.sent {
		t.Errorf("the long connection's answer: %d of %d bytes checked, first difference at %d", got, long.sent, mismatch)
	}
	select {
	case r := <-up.result(long.seed):
		t.Logf("the upstream read %v (nil: end of stream)", r.err)
		if r.mismatch >= 0 || r.checked != long.sent {
			t.Errorf("the upstream checked %d of the %d bytes the long connection sent, first difference at %d", r.checked, long.sent, r.mismatch)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("the upstream's side of the long connection still open 20s after the landed daemon's %s", unix.SignalName(sig))
	}

	if sig == syscall.SIGKILL {
		// The killed daemon's kernel engine is still pinned, holding no
		// socket: its sockets left the map as its descriptors closed.
		if got := policyPins(t, w.stateDir()); !slices.Equal(got, kernelPins) {
			t.Fatalf("policy pins after the landed daemon was killed: %q, want %q", got, kernelPins)
		}
		if n := sockets(t, filepath.Join(w.stateDir(), "sy_k_pairs")); n != 0 {
			t.Errorf("the killed landed daemon's sy_k_pairs holds %d sockets, want none", n)
		}
	}
	w.d = w.startDaemon()
	l.waitAttempts(t, 500)

	if v := w.mustCLI("version"); !strings.Contains(v, "dev") {
		t.Errorf("the upgraded daemon says %q", v)
	}
	if after := listing(t, w.mustCLI("bindings", "-o", "json")); !slices.Equal(after, beforeBindings) {
		t.Errorf("bindings after the upgrade: %q, want %q", after, beforeBindings)
	}
	afterPolicies := labelPolicies(t, w.mustCLI("status", "-o", "json"))
	for label, want := range beforePolicies {
		if got := afterPolicies[label]; got != want {
			t.Errorf("status of %s after the upgrade: policy %q, want %q", label, got, want)
		}
	}
	if st := w.mustCLI("status", "proxied"); !strings.Contains(st, "in the kernel") {
		t.Errorf("after the upgrade proxied is not spliced in the kernel:\n%s", st)
	}
	if out := w.mustCLI("apply", "--dry-run", "-f", cfg); strings.TrimSpace(out) != "no changes" {
		t.Errorf("the landed config applied again after the upgrade would change:\n%.2000s", out)
	}
	if got := policyPins(t, w.stateDir()); !slices.Equal(got, kernelPins) {
		t.Errorf("policy pins after the upgrade: %q, want %q", got, kernelPins)
	}

	// New connections through the label work, and the kernel moves
	// their bytes: one spans more load, the other is short.
	before := kernelSpliced(t, w.stateDir())
	c2 := dialPattern(t, w, "10.6.0.2:443", 2)
	c2.send(t, "this build", 1<<20)
	c3 := dialPattern(t, w, "10.6.0.3:8443", 3)
	c3.send(t, "this build, second connection", 1<<20)
	c3.finish(t, up)
	l.waitAttempts(t, 500)
	c2.send(t, "this build, under load", 1<<20)
	c2.finish(t, up)
	k := kernelSpliced(t, w.stateDir()) - before
	t.Logf("the kernel moved %d of the %d bytes of the new connections (both ways, with the seeds)", k, 2*(c2.sent+c3.sent)+2)
	if k == 0 {
		t.Errorf("the kernel moved no byte of the new connections after the upgrade")
	}
	// The landed CLI reads this daemon's status while the label has
	// kernel bytes to show, which its version's replies leave out.
	if st := oldRun("status", "proxied", "-o", "json"); !strings.Contains(st, `"proxied"`) || strings.Contains(st, "kernel_bytes") {
		t.Errorf("the landed CLI's status of this daemon:\n%s", st)
	}
	if st := w.mustCLI("status", "proxied"); !strings.Contains(st, "the kernel moved") {
		t.Errorf("status of proxied does not say how much the kernel moved:\n%s", st)
	}
}
