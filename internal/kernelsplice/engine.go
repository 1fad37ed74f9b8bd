package kernelsplice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultLimit is the default bound, per direction of a pair, on the bytes
// queued between the two sockets.
const DefaultLimit = 1 << 20

// legacyPins are the engine's maps as builds up to 4362dae pinned them, in
// one object with bypass, in every namespace with policy state; their
// daemon never spliced in the kernel, so they hold nothing.
var legacyPins = []string{"sy_p_pairs", "sy_p_dirs", "sy_p_cookies"}

// Modes of kernelspliceSyK_dir, as SY_K_KERNEL and SY_K_USER in
// bpf/kernelsplice.h.
const (
	dirKernel = 0
	dirUser   = 1
)

// stuckAfter: data that sits on a kernel-spliced socket this long was never
// seen by the verdict program: userspace moves it, and the rest of that
// direction. What arrived before the socket entered the sockmap is not
// such data: Pair has the kernel run the program over it as the pair
// starts, so this is a last resort.
const stuckAfter = 20 * time.Millisecond

// maxPairs is SY_K_MAX_PAIRS of bpf/kernelsplice.h.
const maxPairs = 1 << 16

// Engine is the in-kernel splice engine of one dispatcher's state
// directory: its maps (sy_k_*), pinned there while it runs, and its verdict
// program, attached to sy_k_pairs. Its methods are safe for concurrent use.
type Engine struct {
	dir  string
	maps kernelspliceMaps
	prog *ebpf.Program

	onIdle func()

	// inserted, if not nil, is called as Pair has put the socket of
	// index i (0: a, 1: b) into sy_k_pairs: tests delay the pairing there.
	inserted func(i int)

	mu     sync.Mutex
	next   uint32
	free   []uint32
	active int // pairs running
}

// Open makes the engine's maps in dir, with limit bytes (0:
// DefaultLimit) as the bound per direction of a pair, and attaches its
// program. Maps an earlier process left there are removed first: the
// sockets they held were that process's, and closed with it. onIdle, if
// not nil, is called (in a goroutine of its own) each time the last pair
// running ends.
func Open(dir string, limit uint32, onIdle func()) (*Engine, error) {
	if limit == 0 {
		limit = DefaultLimit
	}
	if err := Remove(dir); err != nil {
		return nil, err
	}
	spec, err := loadKernelsplice()
	if err != nil {
		return nil, fmt.Errorf("kernel splice spec load: %w", err)
	}
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinByName
	}
	e := &Engine{dir: dir, onIdle: onIdle}
	var objs kernelspliceObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}); err != nil {
		Remove(dir)
		return nil, fmt.Errorf("kernel splice load: %w", err)
	}
	e.maps, e.prog = objs.kernelspliceMaps, objs.SyK_splice
	fail := func(err error) (*Engine, error) {
		e.prog.Close()
		e.maps.Close()
		Remove(dir)
		return nil, err
	}
	if err := e.maps.SyK_config.Put(uint32(0), &kernelspliceSyK_cfg{Limit: limit}); err != nil {
		return fail(fmt.Errorf("kernel splice config write: %w", err))
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: e.maps.SyK_pairs.FD(), Program: e.prog, Attach: ebpf.AttachSkSKBStreamVerdict}); err != nil {
		return fail(fmt.Errorf("attach sk_skb program: %w", err))
	}
	return e, nil
}

// Busy reports whether a pair runs.
func (e *Engine) Busy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.active > 0
}

// Close unpins the engine's maps and releases them; the program, attached
// to sy_k_pairs, goes with it. Call it once no pair runs (Busy): data
// redirected and not yet sent goes with the map.
func (e *Engine) Close() error {
	err := Remove(e.dir)
	e.prog.Close()
	return errors.Join(err, e.maps.Close())
}

// Remove removes the engine's pins from dir, those of this build and those
// of builds that pinned it with bypass.
func Remove(dir string) error {
	spec, err := loadKernelsplice()
	if err != nil {
		return fmt.Errorf("kernel splice spec load: %w", err)
	}
	names := append([]string(nil), legacyPins...)
	for name := range spec.Maps {
		names = append(names, name)
	}
	var errs []error
	for _, name := range names {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kernel splice state: %w", err)
	}
	return nil
}

// Counters returns the bytes and socket buffers the engine redirected in
// the kernel for the label with id.
func (e *Engine) Counters(id uint32) (bytes, messages uint64, err error) {
	var per []kernelspliceSyK_counts
	if err := e.maps.SyK_stats.Lookup(id, &per); err != nil {
		return 0, 0, fmt.Errorf("kernel splice counters read: %w", err)
	}
	for _, s := range per {
		bytes += s.Bytes
		messages += s.Messages
	}
	return bytes, messages, nil
}

func (e *Engine) getSlot() (uint32, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.free); n > 0 {
		i := e.free[n-1]
		e.free = e.free[:n-1]
		return i, true
	}
	if e.next >= maxPairs {
		return 0, false
	}
	e.next++
	return e.next - 1, true
}

func (e *Engine) putSlot(i uint32) {
	e.mu.Lock()
	e.free = append(e.free, i)
	e.mu.Unlock()
}

func (e *Engine) begin() {
	e.mu.Lock()
	e.active++
	e.mu.Unlock()
}

func (e *Engine) end() {
	e.mu.Lock()
	e.active--
	idle := e.active == 0
	e.mu.Unlock()
	if idle && e.onIdle != nil {
		go e.onIdle()
	}
}

// Hooks connect a pair to the proxy that runs it.
type Hooks struct {
	// Log receives the pair's events.
	Log *slog.Logger
	// Moved counts bytes userspace moved for a direction that fell back.
	Moved func(n uint64)
	// Track is called as a direction starts, with its source, its
	// destination and what of it the kernel holds right now; the function
	// it returns is called as the direction ends.
	Track func(src, dst *net.TCPConn, backlog func() int64) (untrack func())
}

func cookieOf(c *net.TCPConn) (uint64, error) {
	var v uint64
	var err error
	if cerr := rawConn(c).Control(func(fd uintptr) {
		v, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); cerr != nil {
		return 0, cerr
	}
	return v, err
}

// Pair splices a and b in the kernel until both directions end: both go
// into sy_k_peers, then sy_k_pairs, and the verdict program redirects what
// each receives to the other, for the label with id, starting with what
// each received before. Two goroutines watch for end of stream,
// reset, and directions that fell back to userspace; half-close and reset
// travel on, and both connections are closed at the end. It returns an
// error, having changed nothing, if the pair could not enter the map; if b
// could not enter it after a did (b was reset or half-closed meanwhile)
// and the program had already acted on bytes a received, it resets both
// connections and returns nil.
func (e *Engine) Pair(ctx context.Context, id uint32, a, b *net.TCPConn, h Hooks) error {
	e.begin()
	defer e.end()
	n, ok := e.getSlot()
	if !ok {
		return errors.New("no free splice slot")
	}
	defer e.putSlot(n)
	mp := e.maps
	conns := [2]*net.TCPConn{a, b}
	var cookies [2]uint64
	// cleanup takes out what this pair put in; on an early return too, so
	// that an error leaves nothing changed. The program goes first, then
	// what it redirects through.
	cleanup := func() {
		for i := range conns {
			mp.SyK_pairs.Delete(2*n + uint32(i))
		}
		for i, c := range conns {
			mp.SyK_peers.Delete(2*n + uint32(i))
			if cookies[i] != 0 {
				mp.SyK_cookies.Delete(cookies[i])
			}
			c.SetLinger(-1)
		}
	}
	for i, c := range conns {
		ck, err := cookieOf(c)
		if err != nil {
			cleanup()
			return fmt.Errorf("socket cookie: %w", err)
		}
		slot := 2*n + uint32(i)
		if err := mp.SyK_force.Put(slot, uint32(0)); err != nil {
			cleanup()
			return fmt.Errorf("splice state write: %w", err)
		}
		if err := mp.SyK_dirs.Put(slot, &kernelspliceSyK_dir{Mode: dirKernel, Label: id}); err != nil {
			cleanup()
			return fmt.Errorf("splice state write: %w", err)
		}
		if err := mp.SyK_cookies.Put(ck, slot); err != nil {
			cleanup()
			return fmt.Errorf("splice state write: %w", err)
		}
		cookies[i] = ck
	}
	insert := func(m *ebpf.Map, i int) error {
		var err error
		if cerr := rawConn(conns[i]).Control(func(fd uintptr) {
			err = m.Update(2*n+uint32(i), uint64(fd), ebpf.UpdateAny)
		}); cerr != nil {
			err = cerr
		}
		return err
	}
	// Both sockets go into sy_k_peers, which has no program, before
	// either enters sy_k_pairs, which gives it the program: from the
	// first byte the program sees, it finds the peer to redirect to.
	// Were a socket in sy_k_pairs while its peer was not in the map the
	// program redirects through, what it received meanwhile would have
	// nowhere to go but userspace, and the direction would stay there.
	// While paired, a close that is not the pair's own end (the process
	// dies, or its connections are closed under it) resets both
	// connections: their bytes are in flight between the sockets, and an
	// end of stream would pass a cut stream for a whole one. The end
	// closes them as usual.
	for _, c := range conns {
		c.SetLinger(0)
	}
	for i := range conns {
		if err := insert(mp.SyK_peers, i); err != nil {
			cleanup()
			return fmt.Errorf("sockmap insert: %w", err)
		}
	}
	for i := range conns {
		if err := insert(mp.SyK_pairs, i); err != nil {
			cleanup()
			if i > 0 && !e.untouched(2*n) {
				// b was reset or half-closed since it entered
				// sy_k_peers, and the program has redirected or
				// passed bytes a received: they went with the
				// entries, so the stream cannot go on intact in
				// userspace either.
				h.Log.Debug("splice: connection reset", "dir", 0, "error", err)
				reset(a)
				reset(b)
				return nil
			}
			return fmt.Errorf("sockmap insert: %w", err)
		}
		if e.inserted != nil {
			e.inserted(i)
		}
	}
	// What the sockets received before they entered sy_k_pairs sits in
	// their receive queues, unseen by the program until the kernel next
	// signals data there (a packet arrives; on Linux 6.5 and later also
	// a read). Have it signal now, so that the program redirects it at
	// once, ahead of what follows: setting SO_RCVLOWAT calls
	// tcp_data_ready (net/ipv4/tcp.c, tcp_set_rcvlowat), which runs the
	// program over the queue (net/core/skmsg.c,
	// sk_psock_verdict_data_ready). 1 is the default value.
	for _, c := range conns {
		rawConn(c).Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
		})
	}
	defer cleanup()

	var wg sync.WaitGroup
	var failed atomic.Bool
	resetBoth := func() {
		if failed.CompareAndSwap(false, true) {
			reset(a)
			reset(b)
		}
	}
	wg.Add(2)
	for i := range 2 {
		go func() {
			defer wg.Done()
			src, dst := conns[i], conns[1-i]
			slot := 2*n + uint32(i)
			untrack := h.Track(src, dst, func() int64 {
				var st kernelspliceSyK_dir
				if mp.SyK_dirs.Lookup(slot, &st) != nil {
					return 0
				}
				return int64(kernelBacklog(dst, st.Redirected))
			})
			defer untrack()
			if err := e.dir1(ctx, src, dst, slot, h.Moved); err != nil {
				h.Log.Debug("splice: connection reset", "dir", i, "error", err)
				resetBoth()
				return
			}
			dst.CloseWrite()
		}()
	}
	wg.Wait()
	if !failed.Load() {
		a.SetLinger(-1)
		b.SetLinger(-1)
		a.Close()
		b.Close()
	}
	return nil
}

// untouched reports whether the program left the direction at slot as
// Pair set it up (no byte redirected, none passed): called once the
// source is out of sy_k_pairs, it first waits for runs under way to end.
func (e *Engine) untouched(slot uint32) bool {
	waitProgramRuns()
	var d kernelspliceSyK_dir
	if err := e.maps.SyK_dirs.Lookup(slot, &d); err != nil {
		return false
	}
	return d.Mode == dirKernel && d.Redirected == 0
}

// reset closes c with an RST.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// dir1 follows one direction until the source's end of stream (nil) or
// an error. While the direction is in the kernel, it only peeks at the
// source: data readable there means the verdict program passed it
// (fallback) or never saw it (stuck). Userspace then moves it, once the
// bytes redirected so far have reached the destination's send queue, so
// nothing overtakes anything.
func (e *Engine) dir1(ctx context.Context, src, dst *net.TCPConn, slot uint32, moved func(uint64)) error {
	mp := e.maps
	rc := rawConn(src)
	var peek [1]byte
	var since time.Time
	drained := false
	forced := false
	var userBytes uint64
	buf := make([]byte, 256<<10)
	for {
		var d kernelspliceSyK_dir
		if err := mp.SyK_dirs.Lookup(slot, &d); err != nil {
			return err
		}
		if forced || d.Mode == dirUser {
			if !drained {
				if err := waitDrained(dst, e.redirected(slot), ctx.Done()); err != nil {
					return err
				}
				drained = true
			}
			nr, err := src.Read(buf)
			if nr > 0 {
				if _, werr := dst.Write(buf[:nr]); werr != nil {
					return fmt.Errorf("write %d bytes after %d redirected, %d moved: %w", nr, d.Redirected, userBytes, werr)
				}
				userBytes += uint64(nr)
				moved(uint64(nr))
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			continue
		}
		// Kernel mode: wait until the source is readable.
		var nr int
		var perr error
		err := rc.Read(func(fd uintptr) bool {
			nr, _, perr = unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if errors.Is(perr, unix.EAGAIN) {
				since = time.Time{} // the verdict program took it
				return false
			}
			return true
		})
		if err != nil {
			return err
		}
		if perr != nil {
			return perr
		}
		if nr == 0 {
			// End of stream: send it on after the data before it.
			return waitDrained(dst, e.redirected(slot), ctx.Done())
		}
		if since.IsZero() {
			since = time.Now()
		}
		if time.Since(since) > stuckAfter {
			// Take the direction over through sy_k_force, never by
			// writing sy_k_dirs, which the program updates as it
			// redirects. Then wait until every program run that may
			// not have seen the flag has ended, so that the count of
			// redirected bytes waitDrained reads is final.
			if err := mp.SyK_force.Update(slot, uint32(1), ebpf.UpdateExist); err != nil {
				return err
			}
			waitProgramRuns()
			forced = true
			continue
		}
		time.Sleep(time.Millisecond)
	}
}

// waitProgramRuns returns once every run of the verdict program under way
// when it was called has ended: BPF programs run inside an RCU read-side
// section, and membarrier's global command waits for a grace period
// (kernel/sched/membarrier.c, MEMBARRIER_CMD_GLOBAL: synchronize_rcu). On
// nohz_full kernels, which refuse the command, it sleeps far longer than a
// program run takes.
func waitProgramRuns() {
	const membarrierCmdGlobal = 1
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		time.Sleep(50 * time.Millisecond)
	}
}

// written returns the bytes written into c so far (acked plus still
// queued), and its TCP state. Acked is read first, so a concurrent send can
// only make the sum low, never high.
func written(c *net.TCPConn) (uint64, uint8, error) {
	var n uint64
	var state uint8
	var err error
	rawConn(c).Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return
		}
		var outq int
		outq, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		n = info.Bytes_acked + uint64(outq)
		state = info.State
	})
	return n, state, err
}

// kernelBacklog is how many of the redirected bytes have not reached c's
// send queue yet.
func kernelBacklog(c *net.TCPConn, redirected uint64) uint64 {
	w, _, err := written(c)
	if err != nil || w >= redirected {
		return 0
	}
	return redirected - w
}

// redirected returns a function that reads the bytes the verdict program
// has redirected from the source of the direction at slot.
func (e *Engine) redirected(slot uint32) func() (uint64, error) {
	return func() (uint64, error) {
		var d kernelspliceSyK_dir
		if err := e.maps.SyK_dirs.Lookup(slot, &d); err != nil {
			return 0, err
		}
		return d.Redirected, nil
	}
}

// drainPollMax bounds the interval at which waitDrained looks again. Nothing
// signals that the kernel's queue has drained, so it polls, from every
// millisecond at first to every drainPollMax: a destination that does not
// read (a stalled download, or a client that never will) keeps the wait
// going for as long as the connection lives, and at a fixed millisecond
// each such connection would cost a thousand wakeups a second.
const drainPollMax = 64 * time.Millisecond

// waitDrained waits until every byte the verdict program redirected from
// the direction's source (redirected) has entered dst's send queue: dst's
// bytes acked plus its unsent and unacked bytes reach the count
// redirected.
func waitDrained(dst *net.TCPConn, redirected func() (uint64, error), done <-chan struct{}) error {
	every := time.Millisecond
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		r, err := redirected()
		if err != nil {
			return err
		}
		w, state, err := written(dst)
		if err != nil {
			return err
		}
		if w >= r {
			return nil
		}
		if state != unix.BPF_TCP_ESTABLISHED && state != unix.BPF_TCP_CLOSE_WAIT {
			return fmt.Errorf("splice: destination closed with %d bytes undelivered", r-w)
		}
		t.Reset(every)
		select {
		case <-done:
			return errors.New("splice: stopped")
		case <-t.C:
		}
		every = min(2*every, drainPollMax)
	}
}

func rawConn(c *net.TCPConn) syscall.RawConn {
	rc, _ := c.SyscallConn()
	return rc
}
