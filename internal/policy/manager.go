package policy

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/cgroup"
)

// Sentinel errors that callers branch on with errors.Is.
var (
	// ErrUnavailable: the kernel path of a policy cannot be used here
	// (a program did not load or attach); Status says why.
	ErrUnavailable = errors.New("policy unavailable")
	// ErrNotFound: no such label or splice.
	ErrNotFound = errors.New("not found")
	// ErrExists: the label already has a splice running.
	ErrExists = errors.New("already exists")
)

// Names of the pins this package adds to the dispatcher's state directory
// (bpffs refuses dots in names).
const sockopsLinkPin = "sy_p_sockops_link"

// DefaultSpliceLimit is the default of Options.SpliceLimit.
const DefaultSpliceLimit = 1 << 20

// DefaultSpliceBuffer is the default of Options.SpliceBuffer.
const DefaultSpliceBuffer = 1 << 20

// Engine picks how the splice proxy moves bytes.
type Engine string

const (
	// EngineSplice moves bytes with splice(2) through a pipe in
	// userspace: bounded by the pipe and the socket buffers. The default:
	// under a sender faster than the kernel path, the kernel path either
	// queues without limit (4 GB in 4 s at 3.7 Gbit/s, where this engine
	// moved 5.4-10 Gbit/s holding under 5 MiB) or, bounded, falls back to
	// userspace for almost every byte (see scripts/bench-policy.sh).
	EngineSplice Engine = "splice"
	// EngineSockmap redirects in the kernel (SK_SKB stream verdict), with
	// a bound (Options.SpliceLimit) on the bytes queued between the two
	// sockets; a direction that exceeds it falls back to userspace
	// (read/write: the data then sits in the psock's queue, which
	// splice(2) cannot read) for good. Cheapest for connections slower
	// than the kernel's redirect worker. Experimental: on Linux 6.18 one
	// 1 GiB transfer kept in the kernel (unbounded limit) arrived with 5
	// segments duplicated, once in about 80 runs of TestSpliceIntegrity;
	// switchyardd never uses it.
	EngineSockmap Engine = "sockmap"
)

// Options configure Open.
type Options struct {
	// Cgroup is the cgroup v2 directory whose sockets bypass applies to.
	// Default: the cgroup v2 root, found in /proc/self/mountinfo.
	Cgroup string
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// NetNS is the path of the network namespace the splice proxy makes
	// its sockets in (listeners and upstream connections). Default: the
	// caller's.
	NetNS string
	// SpliceEngine: default EngineSplice.
	SpliceEngine Engine
	// TrustReaders lets bypass redirect where the kernel cannot show how
	// receivers read (no fentry): the operator vouches that no service of
	// a bypass label, nor any local client of one, reads its socket with
	// splice(2), which never sees redirected data. Default false: there,
	// bypass stays off and Status says why.
	TrustReaders bool
	// SpliceBuffer is SO_RCVBUF and SO_SNDBUF of the splice proxy's
	// sockets (the kernel doubles it for its overhead), which bounds the
	// bytes a slow receiver can make the proxy hold: per direction at most
	// about 2*SpliceBuffer received, the pipe (1 MiB) or SpliceLimit in
	// flight, and 2*SpliceBuffer to send. Default DefaultSpliceBuffer;
	// negative leaves the kernel's autotuning alone (unbounded up to the
	// tcp_rmem/tcp_wmem sysctls).
	SpliceBuffer int
	// Workers, if set, runs splice proxies in worker processes that
	// outlive the manager (see WorkerOptions). Open fills its defaults.
	Workers *WorkerOptions
	// SpliceLimit bounds, per direction of a kernel-spliced connection,
	// the bytes queued between the sockets. Default DefaultSpliceLimit.
	SpliceLimit uint32
}

// Counters are one label's policy counters since its state was created.
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
	// busy-polls (SO_BUSY_POLL, or net.core.busy_read when the socket was
	// made): bypassed sockets read without busy polling, which across CPUs
	// is slower than the normal path with it.
	BusyPoll uint64 `json:"busy_poll"`
}

// Manager applies connection policies to the labels of one dispatcher. Its
// methods are safe for concurrent use.
type Manager struct {
	d    *dispatch.Dispatcher
	log  *slog.Logger
	opts Options
	dir  string
	maps policyMaps

	mu         sync.Mutex
	sockops    link.Link
	msgProg    *ebpf.Program
	skbProg    *ebpf.Program
	bypassWhy  string // non-empty: bypass cannot work, and why
	bypassNote string
	busyWhy    string
	guard      uint32
	spliceWhy  string // non-empty: the kernel splice path cannot work
	splices    map[string]splicer
	retired    map[string][]splicer // stopped splices, for their counters
	found      []*worker            // splice workers found at Open, not yet adopted
	closed     bool
	busyPoll   int // last busy polling state written, -1 none
	stopc      chan struct{}
}

// busyPollSysctl, when non-zero, makes epoll busy-poll for every socket,
// whatever the socket's own setting. Busy polling in read (SO_BUSY_POLL,
// or net.core.busy_read, which a socket takes as its own setting when it
// is made) is per socket: the sockops program leaves such sockets alone
// (Counters.BusyPoll), so it needs no pause.
const busyPollSysctl = "/proc/sys/net/core/busy_poll"

// busyPollOn reports whether host-wide busy polling is on, and what the
// sysctl says.
func busyPollOn() (bool, string) {
	b, err := os.ReadFile(busyPollSysctl)
	if err != nil {
		return false, ""
	}
	if v := strings.TrimSpace(string(b)); v != "0" && v != "" {
		return true, "net.core.busy_poll=" + v
	}
	return false, ""
}

// checkBusyPoll pauses bypass while host-wide busy polling is on (see
// sy_p_cfg).
func (m *Manager) checkBusyPoll() {
	on, why := busyPollOn()
	state := 0
	if on {
		state = 1
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || state == m.busyPoll {
		return
	}
	if err := m.editConfig(func(c *policySyP_cfg) { c.BusyPoll = uint32(state) }); err != nil {
		m.log.Warn("policy config write", "error", err)
		return
	}
	m.busyPoll = state
	if on {
		m.busyWhy = "paused while busy polling is on (" + why + "): epoll then busy-polls every socket, but bypassed data passes no NAPI instance, so busy polling cannot see it and receivers sleep, which made cross-CPU latency worse than the normal path; set it to 0 to resume"
		m.log.Warn("bypass paused", "reason", m.busyWhy)
	} else {
		m.busyWhy = ""
	}
}

func (m *Manager) watchBusyPoll() {
	for {
		select {
		case <-m.stopc:
			return
		case <-time.After(2 * time.Second):
			m.checkBusyPoll()
		}
	}
}

// Open loads the policy programs against the dispatcher's pinned maps,
// creating this package's maps (sy_p_*) beside them on first use, and
// attaches them. A program that cannot load or attach does not fail Open:
// that policy then works unaccelerated (splice) or not at all (bypass), and
// Status says why. Pinned state of an earlier Open is adopted.
func Open(d *dispatch.Dispatcher, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.SpliceEngine == "" {
		opts.SpliceEngine = EngineSplice
	}
	if opts.SpliceEngine != EngineSplice && opts.SpliceEngine != EngineSockmap {
		return nil, fmt.Errorf("splice engine %q: unknown; use %q or %q", opts.SpliceEngine, EngineSplice, EngineSockmap)
	}
	if opts.SpliceBuffer == 0 {
		opts.SpliceBuffer = DefaultSpliceBuffer
	}
	if opts.SpliceLimit == 0 {
		opts.SpliceLimit = DefaultSpliceLimit
	}
	m := &Manager{d: d, log: opts.Logger, opts: opts, dir: d.Dir(), splices: make(map[string]splicer), retired: make(map[string][]splicer)}
	spec, err := loadSpec()
	if err != nil {
		return nil, err
	}
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: m.dir}}
	// This package's maps pinned by an older build with another layout
	// are migrated first; what cannot be (sockets, socket storage) is
	// refused. The dispatcher's maps, which the spec shares (lookup.h),
	// are the dispatcher's to migrate.
	migrated, err := dispatch.MigratePinned(m.dir, ownMaps(spec))
	if err != nil {
		return nil, fmt.Errorf("policy state: %w: remove the sy_p_* pins to start over", err)
	}
	for _, name := range migrated {
		m.log.Info("migrated map to this build's layout", "map", name, "dir", m.dir)
	}
	if err := spec.LoadAndAssign(&m.maps, copts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("policy state %s: %w: remove the sy_p_* pins to start over", m.dir, err)
		}
		return nil, fmt.Errorf("policy maps load: %w", err)
	}
	// Only what is this Open's to say: the pinned programs may be
	// running on this config, and its guard and busy polling state stay
	// in force until attachBypass and checkBusyPoll settle them.
	if err := m.editConfig(func(c *policySyP_cfg) {
		c.NetnsCookie = d.NetNSCookie()
		c.SpliceLimit = opts.SpliceLimit
	}); err != nil {
		m.maps.Close()
		return nil, err
	}
	if wo := opts.Workers; wo != nil {
		if len(wo.Command) == 0 {
			wo.Command = []string{"/proc/self/exe", "splice-worker"}
		}
		if wo.Build == "" {
			if wo.Build, err = buildID(); err != nil {
				m.maps.Close()
				return nil, err
			}
		}
		if err := m.findWorkers(); err != nil {
			m.maps.Close()
			return nil, err
		}
	}
	m.attachBypass(spec, copts)
	m.busyPoll = -1
	m.checkBusyPoll()
	m.stopc = make(chan struct{})
	go m.watchBusyPoll()
	if opts.SpliceEngine == EngineSockmap {
		m.attachSplice(spec, copts)
	} else {
		m.spliceWhy = "the default engine: the kernel path (SpliceEngine sockmap) is slower under load here, queueing without limit or falling back to userspace once bounded"
	}
	return m, nil
}

func loadSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadPolicy()
	if err != nil {
		return nil, fmt.Errorf("policy spec load: %w", err)
	}
	for name, ms := range spec.Maps {
		if name == ".rodata" || name == ".bss" || name == ".data" {
			continue
		}
		ms.Pinning = ebpf.PinByName
	}
	return spec, nil
}

// ownMaps is a spec of this package's maps (sy_p_*) of spec only, without
// the dispatcher's maps that its programs share.
func ownMaps(spec *ebpf.CollectionSpec) *ebpf.CollectionSpec {
	own := &ebpf.CollectionSpec{Maps: make(map[string]*ebpf.MapSpec)}
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, "sy_p_") {
			own.Maps[name] = ms
		}
	}
	return own
}

// loadProgram loads one program of the spec against the pinned maps.
func loadProgram(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, name string) (*ebpf.Program, error) {
	s := spec.Copy()
	for n := range s.Programs {
		if n != name {
			delete(s.Programs, n)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(s, *opts)
	if err != nil {
		return nil, fmt.Errorf("program %s load: %w", name, err)
	}
	defer coll.Close()
	p := coll.DetachProgram(name)
	if p == nil {
		return nil, fmt.Errorf("program %s load: %w", name, ErrNotFound)
	}
	return p, nil
}

// attachBypass loads the sockops and SK_MSG programs and attaches them: the
// SK_MSG program to sy_p_bypass (the attachment lives as long as the map),
// the sockops program to the cgroup through a link pinned in the state
// directory, so that bypass outlives the daemon.
func (m *Manager) attachBypass(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) {
	fail := func(err error) {
		m.guard = guardOff
		m.writeGuard()
		m.bypassWhy = err.Error()
		m.log.Warn("bypass unavailable; connections take the normal path", "reason", err)
	}
	msg, err := loadProgram(spec, opts, "sy_p_msg")
	if err != nil {
		fail(err)
		return
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.maps.SyP_bypass.FD(), Program: msg, Attach: ebpf.AttachSkMsgVerdict}); err != nil {
		msg.Close()
		fail(fmt.Errorf("attach sk_msg program: %w", err))
		return
	}
	m.msgProg = msg
	// The fentry programs tell how receivers read. Without them, bypass
	// redirects only if the operator vouches that no receiver uses
	// splice(2) (Options.TrustReaders); otherwise it stays off, safely.
	m.guard = guardTrace
	for _, t := range []struct{ prog, pin string }{
		{"sy_p_recvmsg", "sy_p_recv_link"},
		{"sy_p_recvmsgx", "sy_p_recvx_link"},
		{"sy_p_spliceread", "sy_p_splrd_link"},
	} {
		if err := m.attachTracing(spec, opts, t.prog, filepath.Join(m.dir, t.pin)); err != nil {
			var errno unix.Errno
			if errors.As(err, &errno) {
				err = fmt.Errorf("this kernel cannot load fentry programs (%s: %w)", t.prog, errno)
			}
			if m.opts.TrustReaders {
				m.guard = guardTrust
				m.bypassNote = "unguarded, trusting that receivers never read with splice(2): " + err.Error()
			} else {
				m.guard = guardOff
				m.bypassWhy = "cannot tell how receivers read (" + err.Error() + "); a receiver using splice(2) would lose redirected data, so bypass stays off: set TrustReaders if no service or client of a bypass label reads with splice(2), or use a kernel with fentry (CONFIG_FUNCTION_TRACER)"
			}
			m.log.Warn("bypass guard unavailable", "reason", err, "trust_readers", m.opts.TrustReaders)
			break
		}
	}
	if err := m.writeGuard(); err != nil {
		fail(err)
		return
	}
	ops, err := loadProgram(spec, opts, "sy_p_sockops")
	if err != nil {
		fail(err)
		return
	}
	defer ops.Close()
	cg := m.opts.Cgroup
	if cg == "" {
		if cg, err = cgroup.Root(); err != nil {
			fail(err)
			return
		}
	}
	pin := filepath.Join(m.dir, sockopsLinkPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if same, _ := sameCgroup(l, cg); same {
			if err := l.Update(ops); err != nil {
				l.Close()
				fail(fmt.Errorf("replace sockops program: %w", err))
				return
			}
			m.sockops = l
			return
		}
		// Another cgroup was configured before: move.
		l.Unpin()
		l.Close()
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupSockOps, Program: ops})
	if err != nil {
		fail(fmt.Errorf("attach sockops program to cgroup %s: %w; pass a cgroup v2 directory", cg, err))
		return
	}
	if err := l.Pin(pin); err != nil {
		m.log.Warn("sockops link not pinned: bypass stops with this process", "error", err)
	}
	m.sockops = l
}

// Values of sy_p_cfg.guard, as SY_P_GUARD_* in bpf/policy.h.
const (
	guardOff   = 0
	guardTrace = 1
	guardTrust = 2
)

func (m *Manager) writeGuard() error {
	return m.editConfig(func(c *policySyP_cfg) { c.Guard = m.guard })
}

// editConfig changes sy_p_config[0] with edit, leaving the fields edit
// does not set as they are: the programs read it while it changes.
func (m *Manager) editConfig(edit func(*policySyP_cfg)) error {
	var cfg policySyP_cfg
	if err := m.maps.SyP_config.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("policy config read: %w", err)
	}
	edit(&cfg)
	if err := m.maps.SyP_config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("policy config write: %w", err)
	}
	return nil
}

// attachTracing attaches an fentry program and pins its link at pin,
// replacing the link pinned there before (attach first, so there is no gap).
func (m *Manager) attachTracing(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, name, pin string) error {
	p, err := loadProgram(spec, opts, name)
	if err != nil {
		return err
	}
	defer p.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: p})
	if err != nil {
		return fmt.Errorf("attach %s: %w", name, err)
	}
	defer l.Close()
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		old.Unpin()
		old.Close()
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin %s: %w", name, err)
	}
	return nil
}

// sameCgroup reports whether l is attached to the cgroup at path.
func sameCgroup(l link.Link, path string) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, err
	}
	cg := info.Cgroup()
	if cg == nil {
		return false, nil
	}
	id, err := cgroupID(path)
	if err != nil {
		return false, err
	}
	return cg.CgroupId == id, nil
}

func (m *Manager) attachSplice(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) {
	p, err := loadProgram(spec, opts, "sy_p_splice")
	if err == nil {
		err = link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.maps.SyP_pairs.FD(), Program: p, Attach: ebpf.AttachSkSKBStreamVerdict})
		if err != nil {
			p.Close()
			err = fmt.Errorf("attach sk_skb program: %w", err)
		}
	}
	if err != nil {
		m.spliceWhy = err.Error()
		m.log.Warn("kernel splice unavailable; splicing in userspace", "reason", err)
		return
	}
	m.skbProg = p
}

// Close stops the splice proxies that run in this process, closing their
// connections, and releases the manager's handles. Splice workers
// (Options.Workers) run on with their connections, and pinned state stays:
// bypass keeps working, and the next Open adopts both.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.stopc)
	// Proxies in this process end with it; workers run on, for the next
	// manager to adopt.
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
	if m.sockops != nil {
		m.sockops.Close()
	}
	if m.msgProg != nil {
		m.msgProg.Close()
	}
	if m.skbProg != nil {
		m.skbProg.Close()
	}
	return m.maps.Close()
}

// setMode changes the policy bits of a label.
func (m *Manager) setMode(label string, set, clear uint32) error {
	id, err := m.d.KeepLabel(label)
	if err != nil {
		return fmt.Errorf("policy %s: %w", label, err)
	}
	var p policySyP_label
	if err := m.maps.SyP_policy.Lookup(id, &p); err != nil {
		return fmt.Errorf("policy %s read: %w", label, err)
	}
	p.Mode = p.Mode&^clear | set
	if err := m.maps.SyP_policy.Put(id, &p); err != nil {
		return fmt.Errorf("policy %s write: %w", label, err)
	}
	if p.Mode == 0 {
		m.mu.Lock()
		_, spliced := m.splices[label]
		m.mu.Unlock()
		if !spliced {
			return m.d.ReleaseLabel(label)
		}
	}
	return nil
}

// SetBypass switches bypass on or off for a label's connections. On: new
// connections between two local sockets skip the TCP/IP stack (if the
// kernel path is unavailable, the policy is recorded, connections take the
// normal path, and Status says why). Off: the
// open ones take the normal path from their next message on, after what was
// already redirected, so nothing is lost or reordered. Connections open
// when bypass is switched on keep the normal path.
func (m *Manager) SetBypass(label string, on bool) error {
	if on {
		m.mu.Lock()
		why := m.bypassWhy
		m.mu.Unlock()
		if why != "" {
			m.log.Warn("bypass set but not accelerated", "label", label, "reason", why)
		}
		return m.setMode(label, SyPBypass, 0)
	}
	return m.setMode(label, 0, SyPBypass)
}

// SyPBypass is SY_P_BYPASS of bpf/policy.h.
const SyPBypass = 1

// Counters returns the policy counters of every label that has policy
// state, keyed by label.
func (m *Manager) Counters() (map[string]Counters, error) {
	names, err := m.d.Labels()
	if err != nil {
		return nil, err
	}
	out := make(map[string]Counters)
	for _, name := range names {
		id, ok, err := m.d.LabelID(name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		var per []policySyP_counts
		if err := m.maps.SyP_stats.Lookup(id, &per); err != nil {
			return nil, fmt.Errorf("counters of %s read: %w", name, err)
		}
		var c Counters
		for _, s := range per {
			c.Bytes += s.Bytes
			c.Messages += s.Messages
			c.Connections += s.Connections
			c.Passed += s.Passed
			c.BusyPoll += s.BusyPoll
		}
		m.mu.Lock()
		running := append([]splicer{m.splices[name]}, m.retired[name]...)
		m.mu.Unlock()
		for _, p := range running {
			if p != nil {
				u := p.counters()
				c.Bytes += u.Bytes
				c.Connections += u.Connections
			}
		}
		if c != (Counters{}) {
			out[name] = c
		}
	}
	return out, nil
}

// Status says, for each label with a policy, what is in force: "bypass",
// "splice (ENGINE) to UPSTREAM", or why the policy is not accelerated.
func (m *Manager) Status() (map[string]string, error) {
	names, err := m.d.Labels()
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make(map[string]string)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, name := range names {
		id, ok, err := m.d.LabelID(name)
		if err != nil || !ok {
			continue
		}
		var p policySyP_label
		if err := m.maps.SyP_policy.Lookup(id, &p); err != nil {
			return nil, fmt.Errorf("policy %s read: %w", name, err)
		}
		if p.Mode&SyPBypass != 0 {
			if m.bypassWhy != "" {
				out[name] = "bypass (not accelerated: " + m.bypassWhy + ")"
			} else if m.busyWhy != "" {
				out[name] = "bypass (not accelerated: " + m.busyWhy + ")"
			} else if m.bypassNote != "" {
				out[name] = "bypass (" + m.bypassNote + ")"
			} else {
				out[name] = "bypass"
			}
		}
	}
	for name, p := range m.splices {
		out[name] = p.status()
	}
	return out, nil
}

// cgroupID is the id of the cgroup at path (its inode number on cgroup2).
func cgroupID(path string) (uint64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return statIno(st), nil
}
