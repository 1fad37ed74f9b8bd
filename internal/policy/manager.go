package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/bypass"
	"github.com/switchyard-project/switchyard/internal/kernelsplice"
	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/splice"
)

// WorkerOptions makes userspace splice proxies run in worker processes
// (splice.WorkerOptions).
type WorkerOptions = splice.WorkerOptions

// DefaultSpliceLimit is the default of Options.SpliceLimit.
const DefaultSpliceLimit = kernelsplice.DefaultLimit

// DefaultSpliceBuffer is the default of Options.SpliceBuffer.
const DefaultSpliceBuffer = splice.DefaultBuffer

// Options configure Open.
type Options struct {
	// Cgroup is the cgroup v2 directory whose sockets bypass applies to.
	// Default: the cgroup v2 root, found in /proc/self/mountinfo.
	Cgroup string
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// NetNS is the path of the network namespace the splice proxies make
	// their sockets in (listeners and upstream connections). Default:
	// the caller's.
	NetNS string
	// TrustReaders: see bypass.Options.
	TrustReaders bool
	// SpliceBuffer: see splice.Config.Buffer.
	SpliceBuffer int
	// Workers, if set, runs userspace splice proxies in worker processes
	// that outlive the manager (see WorkerOptions).
	Workers *WorkerOptions
	// SpliceLimit bounds, per direction of a connection the kernel engine
	// splices, the bytes queued between the sockets. Default
	// DefaultSpliceLimit.
	SpliceLimit uint32
}

// Counters are one label's policy counters.
type Counters struct {
	// Bytes moved by the policy's fast path (bypass: redirected
	// messages; splice: bytes proxied by either engine).
	Bytes uint64 `json:"bytes"`
	// Messages: sendmsg calls redirected (bypass) or socket buffers
	// redirected (splice, kernel engine).
	Messages uint64 `json:"messages"`
	// Connections that the policy took on.
	Connections uint64 `json:"connections"`
	// Passed counts bypass messages that took the normal path: the peer
	// was remote, not yet known, or the policy was switched off.
	Passed uint64 `json:"passed"`
	// BusyPoll counts connections bypass left alone because an end
	// busy-polls.
	BusyPoll uint64 `json:"busy_poll"`
	// KernelBytes are the bytes of Bytes the kernel engine moved.
	KernelBytes uint64 `json:"kernel_bytes"`
}

// Manager applies connection policies to the labels of one dispatcher:
// it keeps each policy's kernel objects in the dispatcher's state
// directory only while a label uses them. Its methods are safe for
// concurrent use.
type Manager struct {
	d       *dispatch.Dispatcher
	log     *slog.Logger
	opts    Options
	dir     string
	splices *splice.Set

	mu         sync.Mutex
	bp         *bypass.Bypass // nil: no bypass state
	bpRetiring bool           // bp detached, removed once its sockets are gone
	ks         *kernelsplice.Engine
	ksStarting int // StartSplice calls about to use ks
	// retired is, per label, what bypass's and the kernel engine's
	// counters had counted when their state was removed, so that a
	// label's counters never go down (a scraper would take that for a
	// restart and count everything again).
	retired map[string]Counters
	closed  bool
	stopc   chan struct{}
}

// Open adopts the policy state pinned in the dispatcher's state directory
// by an earlier Open (of this build or an older one): bypass's maps, with
// the sockets of the connections it serves, and its programs, which it
// replaces with this build's. What no label can be using is removed: the
// kernel engine's maps (their sockets were the earlier process's), and
// the rest of a removal cut short. Policy state in use is created as
// labels ask for it; call Settle once the labels' policies are in force,
// to remove what none of them uses.
func Open(d *dispatch.Dispatcher, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.SpliceLimit == 0 {
		opts.SpliceLimit = DefaultSpliceLimit
	}
	m := &Manager{d: d, log: opts.Logger, opts: opts, dir: d.Dir(), stopc: make(chan struct{})}
	if err := kernelsplice.Remove(m.dir); err != nil {
		return nil, err
	}
	if bypass.Pinned(m.dir) {
		bp, err := m.openBypass()
		if err != nil {
			return nil, err
		}
		m.bp = bp
	} else if err := bypass.Remove(m.dir); err != nil {
		return nil, err
	}
	set, err := splice.NewSet(splice.Config{Logger: opts.Logger, NetNS: opts.NetNS, Buffer: opts.SpliceBuffer, Workers: opts.Workers})
	if err != nil {
		if m.bp != nil {
			m.bp.Close()
		}
		return nil, err
	}
	m.splices = set
	return m, nil
}

func (m *Manager) openBypass() (*bypass.Bypass, error) {
	return bypass.Open(m.dir, bypass.Options{Cgroup: m.opts.Cgroup, Logger: m.log, TrustReaders: m.opts.TrustReaders, NetNSCookie: m.d.NetNSCookie()})
}

// Close stops the splice proxies that run in this process, closing their
// connections, removes the kernel engine's state, and releases the
// manager's handles. Splice workers (Options.Workers) run on with their
// connections, and bypass's pinned state stays: bypass keeps working, and
// the next Open adopts both.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.stopc)
	m.mu.Unlock()
	m.splices.Close()
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if m.ks != nil {
		errs = append(errs, m.ks.Close())
		m.ks = nil
	}
	if m.bp != nil {
		errs = append(errs, m.bp.Close())
		m.bp = nil
	}
	return errors.Join(errs...)
}

// Settle removes the state of the policies no label uses (see Open), and
// finishes the splice workers found at Open that no StartSplice took
// over since. Call it once the label settings are in force.
func (m *Manager) Settle() {
	m.splices.SettleWorkers()
	m.retireBypass()
	m.kernelIdle()
}

// release gives label's id back to the dispatcher once no policy holds it.
func (m *Manager) release(label string) error {
	if running, _ := m.splices.Running(label); running {
		return nil
	}
	id, ok, err := m.d.LabelID(label)
	if err != nil {
		return err
	}
	if ok {
		// Under m.mu, so that no removal closes bypass's maps meanwhile.
		var on bool
		m.mu.Lock()
		if m.bp != nil {
			on, err = m.bp.On(id)
		}
		m.mu.Unlock()
		if err != nil || on {
			return err
		}
	}
	return m.d.ReleaseLabel(label)
}

// SetBypass switches bypass on or off for a label's connections. On: new
// connections between two local sockets skip the TCP/IP stack (if the
// kernel path is unavailable, the policy is recorded, connections take the
// normal path, and Status says why); bypass's state is created if no
// label had bypass. Off: the open ones take the normal path from their
// next message on, after what was already redirected, so nothing is lost
// or reordered; once no label has bypass, bypass's state is removed as
// soon as the connections it took on have closed. Connections open when
// bypass is switched on keep the normal path.
func (m *Manager) SetBypass(label string, on bool) error {
	if !on {
		id, ok, err := m.d.LabelID(label)
		if err != nil {
			return fmt.Errorf("policy %s: %w", label, err)
		}
		if ok {
			m.mu.Lock()
			if m.bp != nil {
				err = m.bp.Set(id, false)
			}
			m.mu.Unlock()
			if err != nil {
				return fmt.Errorf("policy %s: %w", label, err)
			}
		}
		if err := m.release(label); err != nil {
			return fmt.Errorf("policy %s: %w", label, err)
		}
		m.retireBypass()
		return nil
	}
	id, err := m.d.KeepLabel(label)
	if err != nil {
		return fmt.Errorf("policy %s: %w", label, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("policy %s: manager closed", label)
	}
	if m.bp != nil && m.bpRetiring {
		// Detached on its way out: take it back, attached again.
		m.bp.Close()
		m.bp, m.bpRetiring = nil, false
	}
	if m.bp == nil {
		bp, err := m.openBypass()
		if err != nil {
			return fmt.Errorf("policy %s: %w", label, err)
		}
		m.bp = bp
		m.log.Info("bypass state created", "dir", m.dir)
	}
	if why := m.bp.Unavailable(); why != "" {
		m.log.Warn("bypass set but not accelerated", "label", label, "reason", why)
	}
	if err := m.bp.Set(id, true); err != nil {
		return fmt.Errorf("policy %s: %w", label, err)
	}
	return nil
}

// retireBypassEvery is how often a retiring bypass looks whether the
// connections it took on have closed.
const retireBypassEvery = time.Second

// retireBypass, once no label has bypass, detaches bypass's sockops
// program (no connection joins any more) and removes bypass's state as
// soon as no socket is left in its sockhash: data redirected to a socket
// and not yet read goes with the map. Until then the connections bypass
// took on take the normal path. Cut short (the daemon killed), the next
// Open adopts what is left and Settle calls this again.
func (m *Manager) retireBypass() {
	m.mu.Lock()
	defer m.mu.Unlock()
	bp := m.bp
	if bp == nil || m.bpRetiring || m.closed {
		return
	}
	ids, err := bp.Labels()
	if err != nil {
		m.log.Warn("bypass labels", "err", err)
		return
	}
	if len(ids) > 0 {
		return
	}
	bp.Detach()
	m.bpRetiring = true
	if m.removeBypassLocked(bp, true) {
		return
	}
	go func() {
		t := time.NewTicker(retireBypassEvery)
		defer t.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-t.C:
			}
			m.mu.Lock()
			if m.bp != bp || !m.bpRetiring || m.removeBypassLocked(bp, false) {
				m.mu.Unlock()
				return
			}
			m.mu.Unlock()
		}
	}()
}

// removeBypassLocked removes bp's state if no socket is left in it, and
// reports whether it did; announce logs that it waits, which the retiring
// loop does not repeat at each tick (a connection may last for days).
func (m *Manager) removeBypassLocked(bp *bypass.Bypass, announce bool) bool {
	n, err := bp.Sockets()
	if err != nil {
		m.log.Warn("bypass sockets", "err", err)
		return false
	}
	if n > 0 {
		if announce {
			m.log.Info("bypass off for every label; its state goes once its connections have closed", "sockets", n)
		}
		return false
	}
	m.retireCounters(func(id uint32) (Counters, error) {
		b, err := bp.Counters(id)
		return Counters{Bytes: b.Bytes, Messages: b.Messages, Connections: b.Connections, Passed: b.Passed, BusyPoll: b.BusyPoll}, err
	})
	bp.Close()
	m.bp, m.bpRetiring = nil, false
	if err := bypass.Remove(m.dir); err != nil {
		m.log.Warn("bypass state not removed", "err", err)
		return true
	}
	m.log.Info("bypass state removed: no label has bypass", "dir", m.dir)
	return true
}

// retireCounters adds what read says of each label to m.retired, before
// the state read reads from is removed. m.mu is held.
func (m *Manager) retireCounters(read func(id uint32) (Counters, error)) {
	names, err := m.d.Labels()
	if err != nil {
		m.log.Warn("counters of removed policy state not kept", "err", err)
		return
	}
	for _, name := range names {
		id, ok, err := m.d.LabelID(name)
		if err != nil || !ok {
			continue
		}
		c, err := read(id)
		if err != nil {
			m.log.Warn("counters of removed policy state not kept", "label", name, "err", err)
			continue
		}
		if c == (Counters{}) {
			continue
		}
		if m.retired == nil {
			m.retired = make(map[string]Counters)
		}
		m.retired[name] = m.retired[name].add(c)
	}
}

// add returns the sum of a and b.
func (a Counters) add(b Counters) Counters {
	return Counters{
		Bytes:       a.Bytes + b.Bytes,
		Messages:    a.Messages + b.Messages,
		Connections: a.Connections + b.Connections,
		Passed:      a.Passed + b.Passed,
		BusyPoll:    a.BusyPoll + b.BusyPoll,
		KernelBytes: a.KernelBytes + b.KernelBytes,
	}
}

// kernelIdle removes the kernel engine's state once no splice runs with
// it and no connection it spliced is left.
func (m *Manager) kernelIdle() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ks == nil || m.ksStarting > 0 || m.ks.Busy() || m.splices.Kernel() {
		return
	}
	ks := m.ks
	m.retireCounters(func(id uint32) (Counters, error) {
		b, n, err := ks.Counters(id)
		return Counters{Bytes: b, KernelBytes: b, Messages: n}, err
	})
	if err := m.ks.Close(); err != nil {
		m.log.Warn("kernel splice state not removed", "err", err)
	}
	m.ks = nil
	m.log.Info("kernel splice state removed: no label uses the engine", "dir", m.dir)
}

// StartSplice makes the manager proxy label's connections to upstream
// ("host:port", or "host:same" for the port the client dialled), moving
// bytes with engine: settings.Userspace, splice(2) in userspace (in a
// worker process with Options.Workers), or settings.Kernel, the in-kernel
// engine (internal/kernelsplice), within Options.SpliceLimit bytes queued
// per direction, whose proxy runs in this process. It creates the label's
// listening sockets (MPTCP off) and passes each to register, which should
// register it for the label with the dispatcher. The proxy runs until
// StopSplice, Close, or ctx ends (see splice.Set.Start). If the kernel
// engine cannot run here, the label is spliced in userspace and Status
// says why.
func (m *Manager) StartSplice(ctx context.Context, label, upstream string, engine settings.Engine, register func(*net.TCPListener) error) error {
	if _, err := settings.ParseEngine(string(engine)); err != nil {
		return fmt.Errorf("splice %s: %w", label, err)
	}
	if _, err := settings.ParseUpstream(upstream); err != nil {
		return fmt.Errorf("splice %s: %w", label, err)
	}
	id, err := m.d.KeepLabel(label)
	if err != nil {
		return fmt.Errorf("splice %s: %w", label, err)
	}
	why := "the default engine; the in-kernel engine is an opt-in (engine kernel)"
	var kernel splice.Kernel
	if engine == settings.Kernel {
		m.mu.Lock()
		if m.ks == nil && !m.closed {
			m.ks, err = kernelsplice.Open(m.dir, m.opts.SpliceLimit, m.kernelIdle)
			if err == nil {
				m.log.Info("kernel splice state created", "dir", m.dir)
			}
		}
		ks := m.ks
		if ks != nil {
			m.ksStarting++
			defer func() {
				m.mu.Lock()
				m.ksStarting--
				m.mu.Unlock()
				m.kernelIdle()
			}()
		}
		m.mu.Unlock()
		if ks == nil {
			why = fmt.Sprintf("the in-kernel engine is unavailable here: %v", err)
			m.log.Warn("kernel splice unavailable; splicing in userspace", "label", label, "reason", err)
		} else {
			kernel = func(ctx context.Context, a, b *net.TCPConn, d splice.Dirs) error {
				return ks.Pair(ctx, id, a, b, kernelsplice.Hooks{Log: d.Log, Moved: d.Moved, Track: d.Track})
			}
		}
	}
	if err := m.splices.Start(ctx, label, upstream, why, kernel, register); err != nil {
		if rerr := m.release(label); rerr != nil {
			m.log.Warn("label not released", "label", label, "err", rerr)
		}
		return err
	}
	return nil
}

// StopSplice stops label's proxy (see splice.Set.Stop): new connections
// are refused, those open run to their end.
func (m *Manager) StopSplice(label string) error {
	if err := m.splices.Stop(label); err != nil {
		return err
	}
	m.kernelIdle()
	return m.release(label)
}

// Counters returns the policy counters of every label that has policy
// state, keyed by label.
func (m *Manager) Counters() (map[string]Counters, error) {
	names, err := m.d.Labels()
	if err != nil {
		return nil, err
	}
	ids := make(map[string]uint32, len(names))
	for _, name := range names {
		id, ok, err := m.d.LabelID(name)
		if err != nil {
			return nil, err
		}
		if ok {
			ids[name] = id
		}
	}
	kernel, err := m.kernelCounters(ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Counters)
	for name := range ids {
		c := kernel[name]
		u := m.splices.Counters(name)
		c.Bytes += u.Bytes
		c.Connections += u.Connections
		if c != (Counters{}) {
			out[name] = c
		}
	}
	return out, nil
}

// kernelCounters reads, for each label of ids, what bypass and the kernel
// engine counted, with what their removed state had counted. It holds m.mu
// throughout, so that no removal closes their maps while it reads them.
func (m *Manager) kernelCounters(ids map[string]uint32) (map[string]Counters, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]Counters, len(ids))
	for name, id := range ids {
		c := m.retired[name]
		if m.bp != nil {
			b, err := m.bp.Counters(id)
			if err != nil {
				return nil, fmt.Errorf("counters of %s: %w", name, err)
			}
			c = c.add(Counters{Bytes: b.Bytes, Messages: b.Messages, Connections: b.Connections, Passed: b.Passed, BusyPoll: b.BusyPoll})
		}
		if m.ks != nil {
			kb, km, err := m.ks.Counters(id)
			if err != nil {
				return nil, fmt.Errorf("counters of %s: %w", name, err)
			}
			c = c.add(Counters{Bytes: kb, KernelBytes: kb, Messages: km})
		}
		out[name] = c
	}
	return out, nil
}

// Status says, for each label with a policy, what is in force: "bypass",
// "splice to UPSTREAM (ENGINE...)", or why the policy is not accelerated.
func (m *Manager) Status() (map[string]string, error) {
	names, err := m.d.Labels()
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	ids := make(map[string]uint32, len(names))
	for _, name := range names {
		if id, ok, err := m.d.LabelID(name); err == nil && ok {
			ids[name] = id
		}
	}
	out := make(map[string]string)
	// Under m.mu, so that no removal closes bypass's maps meanwhile.
	m.mu.Lock()
	if bp := m.bp; bp != nil && !m.bpRetiring {
		state := bp.State()
		for name, id := range ids {
			on, err := bp.On(id)
			if err != nil {
				m.mu.Unlock()
				return nil, fmt.Errorf("policy %s: %w", name, err)
			}
			if on {
				out[name] = state
			}
		}
	}
	m.mu.Unlock()
	for name, st := range m.splices.Status() {
		out[name] = st
	}
	return out, nil
}

// Splices is the set of splice proxies the manager runs.
func (m *Manager) Splices() *splice.Set { return m.splices }
