package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Proxy is the splice proxy of one label: it owns the label's listening
// sockets, accepts their connections, dials the upstream for each and moves
// bytes both ways, propagating half-close and reset.
type Proxy struct {
	m        *Manager
	label    string
	id       uint32 // the label's id
	upstream string
	host     string
	port     string // "" means the port the client dialled
	kernel   bool   // use the SK_SKB path
	why      string // why not kernel, when not
	// ctx ends when the proxy has stopped; set from the start, so that
	// stop is safe at any time.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	lns      []*net.TCPListener
	conns    map[*net.TCPConn]struct{}
	dirs     map[*dir]struct{}
	stopping bool

	bytes       atomic.Uint64
	connections atomic.Uint64
	lastAccept  atomic.Int64 // unix nanoseconds
}

// splicer is a label's running splice proxy: a Proxy in this process, or
// a worker process.
type splicer interface {
	status() string
	counters() Counters
	stop(graceful bool)
}

// parseUpstream splits "host:port" or "host:same" (port "").
func parseUpstream(label, upstream string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(upstream)
	if err != nil {
		return "", "", fmt.Errorf("splice %s: upstream %q: %w; write host:port or host:same", label, upstream, err)
	}
	if port == "same" {
		return host, "", nil
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("splice %s: upstream %q: port must be 1-65535 or 'same'", label, upstream)
	}
	return host, port, nil
}

// newProxy makes a proxy that runs, once run, until ctx ends or stop.
func newProxy(ctx context.Context, m *Manager, label, upstream, host, port string) *Proxy {
	p := &Proxy{m: m, label: label, upstream: upstream, host: host, port: port, conns: make(map[*net.TCPConn]struct{})}
	p.ctx, p.cancel = context.WithCancel(ctx)
	return p
}

// StartSplice makes the manager proxy label's connections to upstream
// ("host:port", or "host:same" for the port the client dialled). It creates
// the label's listening sockets (MPTCP off) and passes each to register,
// which should register it for the label with the dispatcher. The proxy
// runs until StopSplice, Close, or ctx ends; with Options.Workers, in a
// worker process that outlives the manager, and a worker found serving
// the same is adopted instead.
func (m *Manager) StartSplice(ctx context.Context, label, upstream string, register func(*net.TCPListener) error) error {
	host, port, err := parseUpstream(label, upstream)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("splice %s: manager closed", label)
	}
	if _, ok := m.splices[label]; ok {
		m.mu.Unlock()
		return fmt.Errorf("splice %s: %w: stop it first", label, ErrExists)
	}
	// A placeholder until the proxy runs (a StopSplice or Close
	// meanwhile stops it), or until a worker replaces it.
	p := newProxy(ctx, m, label, upstream, host, port)
	p.kernel = m.skbProg != nil
	p.why = m.spliceWhy
	m.splices[label] = p
	m.mu.Unlock()
	// The kernel engine's maps and pair slots are the daemon's.
	useWorker := m.opts.Workers != nil && !p.kernel
	var lns []*net.TCPListener
	fail := func(err error) error {
		m.mu.Lock()
		if s, ok := m.splices[label]; ok && s == splicer(p) {
			delete(m.splices, label)
		}
		m.mu.Unlock()
		p.stop(false)
		for _, ln := range lns {
			ln.Close()
		}
		return err
	}
	// set makes the worker w the label's splice in place of p, unless p
	// was stopped meanwhile.
	set := func(w *worker) error {
		p.cancel()
		m.mu.Lock()
		if m.closed {
			// Workers outlive the manager: the next one adopts it.
			m.mu.Unlock()
			return nil
		}
		if s, ok := m.splices[label]; !ok || s != splicer(p) {
			m.mu.Unlock()
			w.stop(true)
			return fmt.Errorf("splice %s: stopped while starting", label)
		}
		m.splices[label] = w
		m.mu.Unlock()
		m.retireFound(label)
		return nil
	}
	id, err := m.d.KeepLabel(label)
	if err != nil {
		return fail(fmt.Errorf("splice %s: %w", label, err))
	}
	p.id = id
	if useWorker {
		if w := m.adoptWorker(label, upstream); w != nil {
			return set(w)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		var ln net.Listener
		err := inNetNS(m.opts.NetNS, func() error {
			lc := net.ListenConfig{Control: p.sockBuffers}
			lc.SetMultipathTCP(false)
			var err error
			ln, err = lc.Listen(context.Background(), "tcp", addr)
			return err
		})
		if err != nil {
			if addr == "[::1]:0" && len(lns) > 0 {
				m.log.Debug("splice: no IPv6 listener", "label", label, "error", err)
				continue
			}
			return fail(fmt.Errorf("splice %s: listen: %w", label, err))
		}
		lns = append(lns, ln.(*net.TCPListener))
	}
	if useWorker {
		// The worker serves before the label's socket becomes its
		// listener; the daemon's copies close once registered.
		w, err := m.startWorker(label, upstream, p.why, lns)
		if err != nil {
			return fail(err)
		}
		for _, ln := range lns {
			if err := register(ln); err != nil {
				w.stop(false)
				return fail(fmt.Errorf("splice %s: register listener: %w", label, err))
			}
		}
		for _, ln := range lns {
			ln.Close()
		}
		return set(w)
	}
	// Serve before the label's socket becomes the listener, as a worker
	// does; a stop meanwhile leaves it unstarted.
	p.mu.Lock()
	stopped := p.stopping
	if !stopped {
		p.lns = lns
		p.run()
	}
	p.mu.Unlock()
	if stopped {
		return fail(fmt.Errorf("splice %s: stopped while starting", label))
	}
	for _, ln := range lns {
		if err := register(ln); err != nil {
			return fail(fmt.Errorf("splice %s: register listener: %w", label, err))
		}
	}
	m.log.Info("splice started", "label", label, "upstream", upstream, "kernel", p.kernel)
	return nil
}

// run accepts on the proxy's listeners until its context ends or stop.
// It is called once, with p.lns set.
func (p *Proxy) run() {
	lns := p.lns
	for _, ln := range lns {
		p.wg.Add(1)
		go p.accept(ln)
	}
	go func() {
		<-p.ctx.Done()
		for _, ln := range lns {
			ln.Close()
		}
	}()
}

// quiet returns once no connection has been accepted for d, or when cut
// is closed.
func (p *Proxy) quiet(d time.Duration, cut <-chan struct{}) {
	since := time.Now()
	for {
		last := time.Unix(0, p.lastAccept.Load())
		if last.Before(since) {
			last = since
		}
		wait := time.Until(last.Add(d))
		if wait <= 0 {
			return
		}
		select {
		case <-cut:
			return
		case <-time.After(wait):
		}
	}
}

// StopSplice stops label's proxy, in this process or in a worker process
// alike: its listeners close at once, so the label has no socket until
// another is registered (new connections are refused), while the
// connections already proxied run to their end, losing nothing; a worker
// then exits.
func (m *Manager) StopSplice(label string) error {
	m.mu.Lock()
	p, ok := m.splices[label]
	delete(m.splices, label)
	if ok {
		// Its connections may run on; keep counting them.
		m.retired[label] = append(m.retired[label], p)
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("stop splice %s: %w: no splice runs for it", label, ErrNotFound)
	}
	p.stop(true)
	var mode policySyP_label
	if id, ok, err := m.d.LabelID(label); err == nil && ok {
		m.maps.SyP_policy.Lookup(id, &mode)
	}
	if mode.Mode == 0 {
		return m.d.ReleaseLabel(label)
	}
	return nil
}

// stop closes the listeners and, unless graceful, the open connections;
// graceful lets them finish in the background. It is safe at any time,
// also before run, and more than once.
func (p *Proxy) stop(graceful bool) {
	p.mu.Lock()
	p.stopping = true
	for _, ln := range p.lns {
		ln.Close()
	}
	if !graceful {
		// Under p.mu, which track holds: no connection is tracked
		// after this, so none escapes the closing below.
		p.cancel()
		for c := range p.conns {
			c.Close()
		}
	}
	p.mu.Unlock()
	if !graceful {
		p.wg.Wait()
		return
	}
	go func() {
		p.wg.Wait()
		p.cancel()
	}()
}

func (p *Proxy) counters() Counters {
	return Counters{Bytes: p.bytes.Load(), Connections: p.connections.Load()}
}

func (p *Proxy) status() string {
	if p.kernel {
		return "splice to " + p.upstream + " (in the kernel: sockmap)"
	}
	return "splice to " + p.upstream + " (in userspace with splice(2): " + p.why + ")"
}

func (p *Proxy) accept(ln *net.TCPListener) {
	defer p.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) || p.isStopping() {
				return
			}
			p.m.log.Warn("splice accept", "label", p.label, "error", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.lastAccept.Store(time.Now().UnixNano())
		p.wg.Add(1)
		go p.serve(c)
	}
}

// sockBuffers caps the proxy's socket buffers at Options.SpliceBuffer,
// which bounds what a connection can hold in the proxy; accepted sockets
// inherit the listener's.
func (p *Proxy) sockBuffers(network, address string, c syscall.RawConn) error {
	size := p.m.opts.SpliceBuffer
	if size < 0 {
		return nil
	}
	var err error
	c.Control(func(fd uintptr) {
		if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size); err != nil {
			return
		}
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, size)
	})
	return err
}

func (p *Proxy) isStopping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
}

func (p *Proxy) track(c *net.TCPConn, on bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		if p.ctx.Err() != nil {
			return false
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

// reset closes c with an RST.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func (p *Proxy) serve(client *net.TCPConn) {
	defer p.wg.Done()
	if !p.track(client, true) {
		client.Close()
		return
	}
	defer p.track(client, false)
	port := p.port
	if port == "" {
		_, port, _ = net.SplitHostPort(client.LocalAddr().String())
	}
	addr := net.JoinHostPort(p.host, port)
	var up *net.TCPConn
	err := inNetNS(p.m.opts.NetNS, func() error {
		d := net.Dialer{Timeout: 10 * time.Second, Control: p.sockBuffers}
		d.SetMultipathTCP(false)
		c, err := d.DialContext(p.ctx, "tcp", addr)
		if err == nil {
			up = c.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		// The client learns with an RST, as if the upstream refused.
		p.m.log.Info("splice: upstream unreachable", "label", p.label, "upstream", addr, "error", err)
		reset(client)
		return
	}
	if !p.track(up, true) {
		client.Close()
		up.Close()
		return
	}
	defer p.track(up, false)
	p.connections.Add(1)
	if p.kernel {
		if err := p.kernelPair(client, up); err == nil {
			return
		} else {
			p.m.log.Warn("splice: kernel path refused this connection; splicing in userspace", "label", p.label, "error", err)
		}
	}
	p.userPair(client, up)
}

// userPair moves bytes both ways with splice(2) through a pipe of its own:
// what sits in the proxy per direction is at most the pipe (pipeSize)
// beyond the two sockets' buffers, which the kernel bounds.
func (p *Proxy) userPair(a, b *net.TCPConn) {
	var wg sync.WaitGroup
	var failed atomic.Bool
	pipe := func(dst, src *net.TCPConn) {
		defer wg.Done()
		d := &dir{src: src, dst: dst}
		p.trackDir(d, true)
		defer p.trackDir(d, false)
		err := p.spliceCopy(d)
		if err != nil {
			// A reset (or error) on either side resets both, so the
			// other end learns the stream is broken.
			p.m.log.Debug("splice: connection reset", "label", p.label, "error", err)
			if failed.CompareAndSwap(false, true) {
				reset(a)
				reset(b)
			}
			return
		}
		dst.CloseWrite()
	}
	wg.Add(2)
	go pipe(b, a)
	go pipe(a, b)
	wg.Wait()
	if !failed.Load() {
		a.Close()
		b.Close()
	}
}

// pipeSize is the capacity asked for the pipe of each spliced direction.
const pipeSize = 1 << 20

// dir is one direction of a proxied connection.
type dir struct {
	src, dst *net.TCPConn
	inPipe   atomic.Int64 // bytes in the pipe (userspace engine)
	kernel   bool
	slot     uint32
}

func (p *Proxy) trackDir(d *dir, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dirs == nil {
		p.dirs = make(map[*dir]struct{})
	}
	if on {
		p.dirs[d] = struct{}{}
	} else {
		delete(p.dirs, d)
	}
}

// spliceCopy moves d.src's bytes to d.dst until end of stream (nil) or an
// error, through a pipe with splice(2), never holding more than the pipe.
func (p *Proxy) spliceCopy(d *dir) error {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	src, dst := rawConn(d.src), rawConn(d.dst)
	const flags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	for {
		var n int64
		var serr error
		err := src.Read(func(fd uintptr) bool {
			n, serr = unix.Splice(int(fd), nil, fds[1], nil, pipeSize, flags)
			return serr != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		if serr == unix.EINTR {
			continue
		}
		if serr != nil {
			return serr
		}
		if n == 0 {
			return nil
		}
		d.inPipe.Store(n)
		for n > 0 {
			var m int64
			var werr error
			err := dst.Write(func(fd uintptr) bool {
				m, werr = unix.Splice(fds[0], nil, int(fd), nil, int(n), flags)
				return werr != unix.EAGAIN
			})
			if err != nil {
				return err
			}
			if werr == unix.EINTR {
				continue
			}
			if werr != nil {
				return werr
			}
			n -= m
			d.inPipe.Add(-m)
			p.bytes.Add(uint64(m))
		}
	}
}

// queued returns the bytes the proxy holds between its sockets right now:
// in its sockets' receive queues, pipes, the kernel path's queue, and its
// sockets' send queues.
func (p *Proxy) queued() int64 {
	p.mu.Lock()
	defs := make([]*dir, 0, len(p.dirs))
	for d := range p.dirs {
		defs = append(defs, d)
	}
	p.mu.Unlock()
	var total int64
	for _, d := range defs {
		total += sockQueue(d.src, unix.SIOCINQ) + d.inPipe.Load() + sockQueue(d.dst, unix.SIOCOUTQ)
		if d.kernel {
			var st policySyP_dir
			if p.m.maps.SyP_dirs.Lookup(d.slot, &st) == nil {
				total += int64(kernelBacklog(d.dst, st.Redirected))
			}
		}
	}
	return total
}

func sockQueue(c *net.TCPConn, req uint) int64 {
	var n int
	rawConn(c).Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), req) })
	return int64(n)
}

// inNetNS runs fn with its OS thread in the network namespace at path (""
// for the caller's own). The thread is thrown away afterwards.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	var run func()
	run = func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		if unix.Gettid() == unix.Getpid() {
			// The main thread is parked, not ended, when a locked
			// goroutine exits: never change its namespace.
			go run()
			runtime.Goexit()
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", path, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netns %s: setns: %w", path, err)
			return
		}
		errc <- fn()
	}
	go run()
	return <-errc
}

func rawConn(c *net.TCPConn) syscall.RawConn {
	rc, _ := c.SyscallConn()
	return rc
}
