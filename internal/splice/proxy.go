package splice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Proxy is the splice proxy of one label: it owns the label's listening
// sockets, accepts their connections, dials the upstream for each and moves
// bytes both ways, propagating half-close and reset.
type Proxy struct {
	m        *Set
	label    string
	upstream string
	up       settings.Upstream
	kernel   Kernel // nil: splice(2) in userspace
	why      string // why in userspace, when so
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

// Kernel moves the bytes of a proxied connection, a and b, in the kernel
// until both directions end, closing both; it returns an error, having
// changed nothing, if it cannot take the connection on, which userspace
// then splices.
type Kernel func(ctx context.Context, a, b *net.TCPConn, d Dirs) error

// Dirs connect a Kernel pair to its proxy.
type Dirs struct {
	// Log receives the pair's events.
	Log *slog.Logger
	// Moved counts bytes userspace moved for a direction.
	Moved func(n uint64)
	// Track is called as a direction starts, with its source, its
	// destination and what of it the kernel holds right now; the function
	// it returns is called as the direction ends.
	Track func(src, dst *net.TCPConn, backlog func() int64) (untrack func())
}

// DefaultBuffer is the default of Config.Buffer.
const DefaultBuffer = 1 << 20

// Config configures a Set.
type Config struct {
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// NetNS is the path of the network namespace the proxies make their
	// sockets in (listeners and upstream connections). Default: the
	// caller's.
	NetNS string
	// Buffer is SO_RCVBUF and SO_SNDBUF of the proxies' sockets (the
	// kernel doubles it for its overhead), which bounds the bytes a slow
	// receiver can make a proxy hold: per direction at most about
	// 2*Buffer received, the pipe (1 MiB) or the kernel engine's bound in
	// flight, and 2*Buffer to send. Default DefaultBuffer; negative
	// leaves the kernel's autotuning alone (unbounded up to the
	// tcp_rmem/tcp_wmem sysctls).
	Buffer int
	// Workers, if set, runs proxies that splice in userspace in worker
	// processes that outlive the Set (see WorkerOptions). NewSet fills
	// its defaults.
	Workers *WorkerOptions
}

// Counters are one label's splice counters.
type Counters struct {
	// Bytes proxied (by userspace; a Kernel counts its own).
	Bytes uint64
	// Connections proxied.
	Connections uint64
}

// Sentinel errors that callers branch on with errors.Is.
var (
	// ErrNotFound: no splice runs for the label.
	ErrNotFound = errors.New("not found")
	// ErrExists: the label already has a splice running.
	ErrExists = errors.New("already exists")
)

// Set runs the splice proxies of the labels of one namespace. Its methods
// are safe for concurrent use.
type Set struct {
	log  *slog.Logger
	opts Config

	mu      sync.Mutex
	splices map[string]splicer
	retired map[string][]splicer // stopped splices, for their counters
	found   []*worker            // splice workers found at NewSet, not yet adopted
	closed  bool
}

// NewSet makes a Set; with Config.Workers, it finds the workers an
// earlier Set left running, for Start to adopt or SettleWorkers to finish.
func NewSet(cfg Config) (*Set, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = DefaultBuffer
	}
	s := &Set{log: cfg.Logger, opts: cfg, splices: make(map[string]splicer), retired: make(map[string][]splicer)}
	if wo := cfg.Workers; wo != nil {
		if len(wo.Command) == 0 {
			wo.Command = []string{"/proc/self/exe", "splice-worker"}
		}
		if wo.Build == "" {
			var err error
			if wo.Build, err = buildID(); err != nil {
				return nil, err
			}
		}
		if err := s.findWorkers(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// splicer is a label's running splice proxy: a Proxy in this process, or
// a worker process.
type splicer interface {
	status() string
	counters() Counters
	stop(graceful bool)
}

// parseUpstream is settings.ParseUpstream, the one upstream parser, with
// the label in its error.
func parseUpstream(label, upstream string) (settings.Upstream, error) {
	u, err := settings.ParseUpstream(upstream)
	if err != nil {
		return u, fmt.Errorf("splice %s: %w", label, err)
	}
	return u, nil
}

// newProxy makes a proxy that runs, once run, until ctx ends or stop.
func newProxy(ctx context.Context, m *Set, label, upstream string, up settings.Upstream) *Proxy {
	p := &Proxy{m: m, label: label, upstream: upstream, up: up, conns: make(map[*net.TCPConn]struct{})}
	p.ctx, p.cancel = context.WithCancel(ctx)
	return p
}

// Start proxies label's connections to upstream ("host:port", or
// "host:same" for the port the client dialled), moving bytes with kernel,
// or, if nil, with splice(2) in userspace (why says why, for status). It
// creates the label's listening sockets (MPTCP off) and passes each to
// register, which should register it for the label with the dispatcher.
// The proxy runs until Stop, Close, or ctx ends; in userspace with
// Config.Workers, in a worker process that outlives the Set, and a worker
// found serving the same is adopted instead.
func (m *Set) Start(ctx context.Context, label, upstream, why string, kernel Kernel, register func(*net.TCPListener) error) error {
	up, err := parseUpstream(label, upstream)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("splice %s: closed", label)
	}
	if _, ok := m.splices[label]; ok {
		m.mu.Unlock()
		return fmt.Errorf("splice %s: %w: stop it first", label, ErrExists)
	}
	// A placeholder until the proxy runs (a Stop or Close
	// meanwhile stops it), or until a worker replaces it.
	p := newProxy(ctx, m, label, upstream, up)
	p.kernel = kernel
	p.why = why
	m.splices[label] = p
	m.mu.Unlock()
	// The kernel engine's maps and pair slots are this process's.
	useWorker := m.opts.Workers != nil && p.kernel == nil
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
			// Workers outlive the Set: the next one adopts it.
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
	m.log.Info("splice started", "label", label, "upstream", upstream, "kernel", p.kernel != nil)
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

// Stop stops label's proxy, in this process or in a worker process
// alike: its listeners close at once, so the label has no socket until
// another is registered (new connections are refused), while the
// connections already proxied run to their end, losing nothing; a worker
// then exits.
func (m *Set) Stop(label string) error {
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
	return nil
}

// Running reports whether a splice runs for label, and whether it moves
// bytes in the kernel.
func (m *Set) Running(label string) (running, kernel bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.splices[label]
	if !ok {
		return false, false
	}
	p, inProcess := s.(*Proxy)
	return true, inProcess && p.kernel != nil
}

// Status says, for each label with a splice running, what is in force.
func (m *Set) Status() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]string, len(m.splices))
	for name, p := range m.splices {
		out[name] = p.status()
	}
	return out
}

// Counters returns the counters of label's splices, running and stopped.
func (m *Set) Counters(label string) Counters {
	m.mu.Lock()
	running := append([]splicer{m.splices[label]}, m.retired[label]...)
	m.mu.Unlock()
	var c Counters
	for _, p := range running {
		if p != nil {
			u := p.counters()
			c.Bytes += u.Bytes
			c.Connections += u.Connections
		}
	}
	return c
}

// Close stops the proxies that run in this process, closing their
// connections. Workers run on with their connections, for the next Set to
// adopt.
func (m *Set) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	var proxies []*Proxy
	for _, s := range m.splices {
		if p, ok := s.(*Proxy); ok {
			proxies = append(proxies, p)
		}
	}
	for _, ss := range m.retired {
		for _, s := range ss {
			if p, ok := s.(*Proxy); ok {
				proxies = append(proxies, p)
			}
		}
	}
	m.splices = nil
	m.mu.Unlock()
	for _, p := range proxies {
		p.stop(false)
	}
}

// stop closes the listeners and, unless graceful, resets the open
// connections; graceful lets them finish in the background. It is safe at any time,
// also before run, and more than once.
func (p *Proxy) stop(graceful bool) {
	p.mu.Lock()
	p.stopping = true
	for _, ln := range p.lns {
		ln.Close()
	}
	if !graceful {
		// Under p.mu, which track holds: no connection is tracked
		// after this, so none escapes the closing below. A reset, not
		// an end of stream: the client must not take a stream cut
		// short for one that ended.
		p.cancel()
		for c := range p.conns {
			reset(c)
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
	if p.kernel != nil {
		return "splice to " + p.upstream + " (in the kernel: SK_SKB engine)"
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

// sockBuffers caps the proxy's socket buffers at Config.Buffer,
// which bounds what a connection can hold in the proxy; accepted sockets
// inherit the listener's.
func (p *Proxy) sockBuffers(network, address string, c syscall.RawConn) error {
	size := p.m.opts.Buffer
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
	var dialled uint16
	if a, ok := client.LocalAddr().(*net.TCPAddr); ok {
		dialled = uint16(a.Port)
	}
	addr := p.up.Dial(dialled)
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
	if p.kernel != nil {
		dirs := Dirs{Log: p.m.log.With("label", p.label), Moved: func(n uint64) { p.bytes.Add(n) }, Track: p.trackKernel}
		if err := p.kernel(p.ctx, client, up, dirs); err == nil {
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
//
// While it runs, both sockets linger 0: if the process dies (a worker
// killed, a daemon killed), the kernel's close of its sockets resets both
// ends, so neither takes a stream cut short, with bytes lost in the pipe,
// for one that ended. A pair that ends normally gets the default back
// before it closes, so what is still queued is sent.
func (p *Proxy) userPair(a, b *net.TCPConn) {
	var wg sync.WaitGroup
	var failed atomic.Bool
	a.SetLinger(0)
	b.SetLinger(0)
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
		a.SetLinger(-1)
		b.SetLinger(-1)
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
	backlog  func() int64 // bytes the kernel holds (kernel engine)
}

// trackKernel tracks a direction a Kernel moves.
func (p *Proxy) trackKernel(src, dst *net.TCPConn, backlog func() int64) func() {
	d := &dir{src: src, dst: dst, backlog: backlog}
	p.trackDir(d, true)
	return func() { p.trackDir(d, false) }
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
		if d.backlog != nil {
			total += d.backlog()
		}
	}
	return total
}

func sockQueue(c *net.TCPConn, req uint) int64 {
	var n int
	rawConn(c).Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), req) })
	return int64(n)
}

// inNetNS runs fn in the network namespace at path ("" for the caller's
// own), so that the sockets it makes belong there.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := netns.Open(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}

func rawConn(c *net.TCPConn) syscall.RawConn {
	rc, _ := c.SyscallConn()
	return rc
}

// Kernel reports whether a running proxy moves bytes in the kernel.
func (m *Set) Kernel() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.splices {
		if p, ok := s.(*Proxy); ok && p.kernel != nil {
			return true
		}
	}
	return false
}

// Queued returns the bytes label's proxy holds between its sockets right
// now, if it runs in this process: in its sockets' queues, its pipes and
// the kernel engine's queue.
func (m *Set) Queued(label string) (int64, bool) {
	m.mu.Lock()
	p, ok := m.splices[label].(*Proxy)
	m.mu.Unlock()
	if !ok {
		return 0, false
	}
	return p.queued(), true
}

// WorkerPID returns the pid of the worker process that runs label's
// splice, if one does.
func (m *Set) WorkerPID(label string) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w, ok := m.splices[label].(*worker)
	if !ok {
		return 0, false
	}
	return w.pid, true
}
