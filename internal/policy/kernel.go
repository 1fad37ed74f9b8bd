package policy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Modes of policySyP_dir, as SY_P_KERNEL and SY_P_USER in bpf/policy.h.
const (
	dirKernel = 0
	dirUser   = 1
)

// stuckAfter: data that sits on a kernel-spliced socket this long was never
// seen by the verdict program (it arrived before the socket entered the
// sockmap, and no packet came since to run the program): userspace moves
// it, and the rest of that direction.
const stuckAfter = 20 * time.Millisecond

// slots hands out pair indexes of sy_p_pairs.
type slots struct {
	mu   sync.Mutex
	next uint32
	free []uint32
}

const maxPairs = 1 << 16

func (s *slots) get() (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		i := s.free[n-1]
		s.free = s.free[:n-1]
		return i, true
	}
	if s.next >= maxPairs {
		return 0, false
	}
	s.next++
	return s.next - 1, true
}

func (s *slots) put(i uint32) {
	s.mu.Lock()
	s.free = append(s.free, i)
	s.mu.Unlock()
}

var pairSlots slots

func cookieOf(c *net.TCPConn) (uint64, error) {
	var v uint64
	var err error
	rawConn(c).Control(func(fd uintptr) {
		v, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	})
	return v, err
}

// kernelPair splices a and b in the kernel: both go into sy_p_pairs and the
// verdict program redirects what each receives to the other. Two goroutines
// watch for end of stream, reset, and directions that fell back to
// userspace. It returns an error, having changed nothing, if the pair could
// not enter the map.
func (p *Proxy) kernelPair(a, b *net.TCPConn) error {
	n, ok := pairSlots.get()
	if !ok {
		return errors.New("no free splice slot")
	}
	defer pairSlots.put(n)
	mp := p.m.maps
	conns := [2]*net.TCPConn{a, b}
	var cookies [2]uint64
	for i, c := range conns {
		ck, err := cookieOf(c)
		if err != nil {
			return fmt.Errorf("socket cookie: %w", err)
		}
		cookies[i] = ck
		slot := 2*n + uint32(i)
		if err := mp.SyP_dirs.Put(slot, &policySyP_dir{Mode: dirKernel, Label: p.id}); err != nil {
			return fmt.Errorf("splice state write: %w", err)
		}
		if err := mp.SyP_cookies.Put(ck, slot); err != nil {
			return fmt.Errorf("splice state write: %w", err)
		}
	}
	cleanup := func() {
		for i := range conns {
			mp.SyP_pairs.Delete(2*n + uint32(i))
			mp.SyP_cookies.Delete(cookies[i])
		}
	}
	for i, c := range conns {
		var err error
		rawConn(c).Control(func(fd uintptr) {
			err = mp.SyP_pairs.Update(2*n+uint32(i), uint64(fd), ebpf.UpdateAny)
		})
		if err != nil {
			cleanup()
			return fmt.Errorf("sockmap insert: %w", err)
		}
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
			d := &dir{src: src, dst: dst, kernel: true, slot: 2*n + uint32(i)}
			p.trackDir(d, true)
			defer p.trackDir(d, false)
			if err := p.kernelDir(src, dst, 2*n+uint32(i)); err != nil {
				p.m.log.Info("splice: connection reset", "label", p.label, "dir", i, "error", err)
				resetBoth()
				return
			}
			dst.CloseWrite()
		}()
	}
	wg.Wait()
	if !failed.Load() {
		a.Close()
		b.Close()
	}
	return nil
}

// kernelDir follows one direction until the source's end of stream (nil) or
// an error. While the direction is in the kernel, it only peeks at the
// source: data readable there means the verdict program passed it
// (fallback) or never saw it (stuck). Userspace then moves it, once the
// bytes redirected so far have reached the destination's send queue, so
// nothing overtakes anything.
func (p *Proxy) kernelDir(src, dst *net.TCPConn, slot uint32) error {
	mp := p.m.maps
	rc := rawConn(src)
	var peek [1]byte
	var since time.Time
	drained := false
	var userBytes uint64
	buf := make([]byte, 256<<10)
	for {
		var d policySyP_dir
		if err := mp.SyP_dirs.Lookup(slot, &d); err != nil {
			return err
		}
		if d.Mode == dirUser {
			if !drained {
				if err := waitDrained(dst, slot, mp.SyP_dirs, p.ctxDone()); err != nil {
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
				p.bytes.Add(uint64(nr))
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
			if err := waitDrained(dst, slot, mp.SyP_dirs, p.ctxDone()); err != nil {
				return err
			}
			return nil
		}
		if since.IsZero() {
			since = time.Now()
		}
		if time.Since(since) > stuckAfter {
			d.Mode = dirUser
			if err := mp.SyP_dirs.Update(slot, &d, ebpf.UpdateExist); err != nil {
				return err
			}
			continue
		}
		time.Sleep(time.Millisecond)
	}
}

func (p *Proxy) ctxDone() <-chan struct{} { return p.ctx.Done() }

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

// waitDrained waits until every byte the verdict program redirected from
// the direction's source has entered dst's send queue: dst's bytes acked
// plus its unsent and unacked bytes reach the count redirected.
func waitDrained(dst *net.TCPConn, slot uint32, dirs *ebpf.Map, done <-chan struct{}) error {
	for {
		var d policySyP_dir
		if err := dirs.Lookup(slot, &d); err != nil {
			return err
		}
		w, state, err := written(dst)
		if err != nil {
			return err
		}
		if w >= d.Redirected {
			return nil
		}
		if state != unix.BPF_TCP_ESTABLISHED && state != unix.BPF_TCP_CLOSE_WAIT {
			return fmt.Errorf("splice: destination closed with %d bytes undelivered", d.Redirected-w)
		}
		select {
		case <-done:
			return errors.New("splice: stopped")
		case <-time.After(time.Millisecond):
		}
	}
}
