package bypass

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/cgroup"
)

// Names of the pins bypass keeps in the dispatcher's state directory beside
// its maps (bpffs refuses dots in names). The maps are those of
// bpf/bypass.c, all named sy_p_*.
const (
	sockopsLinkPin = "sy_p_sockops_link"
	// bypassMapPin holds the sockets bypass redirects between: while it
	// is pinned, bypass state exists in the directory.
	bypassMapPin = "sy_p_bypass"
)

// tracingLinks are the fentry programs and the pins of their links.
var tracingLinks = []struct{ prog, pin string }{
	{"sy_p_recvmsg", "sy_p_recv_link"},
	{"sy_p_recvmsgx", "sy_p_recvx_link"},
	{"sy_p_spliceread", "sy_p_splrd_link"},
}

// Options configure Open.
type Options struct {
	// Cgroup is the cgroup v2 directory whose sockets bypass applies to.
	// Default: the cgroup v2 root, found in /proc/self/mountinfo.
	Cgroup string
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// TrustReaders lets bypass redirect where the kernel cannot show how
	// receivers read (no fentry): the operator vouches that no service of
	// a bypass label, nor any local client of one, reads its socket with
	// splice(2), which never sees redirected data. Default false: there,
	// bypass stays off and State says why.
	TrustReaders bool
	// NetNSCookie is the cookie of the dispatcher's network namespace:
	// only server sockets of that namespace serve its labels.
	NetNSCookie uint64
}

// Counters are one label's bypass counters since the bypass state was
// created.
type Counters struct {
	// Bytes of the messages redirected.
	Bytes uint64
	// Messages: sendmsg calls redirected.
	Messages uint64
	// Connections that bypass took on.
	Connections uint64
	// Passed counts messages that took the normal path: the peer was
	// remote, not yet known, or bypass was switched off.
	Passed uint64
	// BusyPoll counts connections bypass left alone because an end
	// busy-polls (SO_BUSY_POLL, or net.core.busy_read when the socket was
	// made): bypassed sockets read without busy polling, which across CPUs
	// is slower than the normal path with it.
	BusyPoll uint64
}

// Bypass is the bypass policy's kernel state in one dispatcher's state
// directory. Its methods are safe for concurrent use.
type Bypass struct {
	dir  string
	log  *slog.Logger
	opts Options
	maps bypassMaps

	mu       sync.Mutex
	sockops  link.Link
	msgProg  *ebpf.Program
	why      string // non-empty: bypass cannot work, and why
	note     string
	busyWhy  string
	guard    uint32
	busyPoll int // last busy polling state written, -1 none
	closed   bool
	stopc    chan struct{}
}

// Pinned reports whether dir holds bypass state: its sockhash, with the
// sockets it redirects between.
func Pinned(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, bypassMapPin))
	return err == nil
}

// Open loads the bypass programs against the dispatcher's pinned maps in
// dir, creating bypass's maps (sy_p_*) beside them or adopting those an
// earlier Open pinned, and attaches them. A program that cannot load or
// attach does not fail Open: bypass then leaves connections alone, and
// State says why.
func Open(dir string, opts Options) (*Bypass, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Bypass{dir: dir, log: opts.Logger, opts: opts, busyPoll: -1}
	spec, err := loadSpec()
	if err != nil {
		return nil, err
	}
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}, MapReplacements: map[string]*ebpf.Map{}}
	// Bypass's maps pinned by an older build with another layout are
	// migrated first; what cannot be (sockets, socket storage) is
	// refused. The dispatcher's maps, which the spec shares (lookup.h),
	// are the dispatcher's to migrate.
	migrated, err := dispatch.MigratePinned(dir, ownMaps(spec))
	if err != nil {
		return nil, fmt.Errorf("bypass state: %w: remove the sy_p_* pins to start over", err)
	}
	for _, name := range migrated {
		b.log.Info("migrated map to this build's layout", "map", name, "dir", dir)
	}
	// The dispatcher's config, which the programs read as a global.
	if err := dispatch.ConfigReplacement(dir, spec, copts.MapReplacements); err != nil {
		return nil, fmt.Errorf("bypass state: %w", err)
	}
	for _, m := range copts.MapReplacements {
		defer m.Close() // the programs hold their own references
	}
	if err := spec.LoadAndAssign(&b.maps, copts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("bypass state %s: %w: remove the sy_p_* pins to start over", dir, err)
		}
		return nil, fmt.Errorf("bypass maps load: %w", err)
	}
	// Only what is this Open's to say: the pinned programs may be
	// running on this config, and its guard and busy polling state stay
	// in force until attach and checkBusyPoll settle them.
	if err := b.editConfig(func(c *bypassSyP_cfg) { c.NetnsCookie = opts.NetNSCookie }); err != nil {
		b.maps.Close()
		return nil, err
	}
	b.attach(spec, copts)
	b.checkBusyPoll()
	b.stopc = make(chan struct{})
	go b.watchBusyPoll()
	return b, nil
}

func loadSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadBypass()
	if err != nil {
		return nil, fmt.Errorf("bypass spec load: %w", err)
	}
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") { // data sections (sy_config: dispatch/config.go)
			continue
		}
		ms.Pinning = ebpf.PinByName
	}
	return spec, nil
}

// ownMaps is a spec of bypass's maps (sy_p_*) of spec only, without the
// dispatcher's maps that its programs share.
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
		return nil, fmt.Errorf("program %s load: not in the object", name)
	}
	return p, nil
}

// attach loads the sockops and SK_MSG programs and attaches them: the
// SK_MSG program to sy_p_bypass (the attachment lives as long as the map),
// the sockops program to the cgroup through a link pinned in the state
// directory, so that bypass outlives the daemon.
func (b *Bypass) attach(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) {
	fail := func(err error) {
		b.guard = guardOff
		b.writeGuard()
		b.why = err.Error()
		b.log.Warn("bypass unavailable; connections take the normal path", "reason", err)
	}
	msg, err := loadProgram(spec, opts, "sy_p_msg")
	if err != nil {
		fail(err)
		return
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: b.maps.SyP_bypass.FD(), Program: msg, Attach: ebpf.AttachSkMsgVerdict}); err != nil {
		msg.Close()
		fail(fmt.Errorf("attach sk_msg program: %w", err))
		return
	}
	b.msgProg = msg
	// The fentry programs tell how receivers read. Without them, bypass
	// redirects only if the operator vouches that no receiver uses
	// splice(2) (Options.TrustReaders); otherwise it stays off, safely.
	b.guard = guardTrace
	for _, t := range tracingLinks {
		if err := attachTracing(spec, opts, t.prog, filepath.Join(b.dir, t.pin)); err != nil {
			var errno unix.Errno
			if errors.As(err, &errno) {
				err = fmt.Errorf("this kernel cannot load fentry programs (%s: %w)", t.prog, errno)
			}
			if b.opts.TrustReaders {
				b.guard = guardTrust
				b.note = "unguarded, trusting that receivers never read with splice(2): " + err.Error()
			} else {
				b.guard = guardOff
				b.why = "cannot tell how receivers read (" + err.Error() + "); a receiver using splice(2) would lose redirected data, so bypass stays off: set TrustReaders if no service or client of a bypass label reads with splice(2), or use a kernel with fentry (CONFIG_FUNCTION_TRACER)"
			}
			b.log.Warn("bypass guard unavailable", "reason", err, "trust_readers", b.opts.TrustReaders)
			break
		}
	}
	if err := b.writeGuard(); err != nil {
		fail(err)
		return
	}
	ops, err := loadProgram(spec, opts, "sy_p_sockops")
	if err != nil {
		fail(err)
		return
	}
	defer ops.Close()
	cg := b.opts.Cgroup
	if cg == "" {
		if cg, err = cgroup.Root(); err != nil {
			fail(err)
			return
		}
	}
	pin := filepath.Join(b.dir, sockopsLinkPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if same, _ := sameCgroup(l, cg); same {
			if err := l.Update(ops); err != nil {
				l.Close()
				fail(fmt.Errorf("replace sockops program: %w", err))
				return
			}
			b.sockops = l
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
		b.log.Warn("sockops link not pinned: bypass stops with this process", "error", err)
	}
	b.sockops = l
}

// Values of sy_p_cfg.guard, as SY_P_GUARD_* in bpf/bypass.h.
const (
	guardOff   = 0
	guardTrace = 1
	guardTrust = 2
)

func (b *Bypass) writeGuard() error {
	return b.editConfig(func(c *bypassSyP_cfg) { c.Guard = b.guard })
}

// editConfig changes sy_p_config[0] with edit, leaving the fields edit
// does not set as they are: the programs read it while it changes.
func (b *Bypass) editConfig(edit func(*bypassSyP_cfg)) error {
	var cfg bypassSyP_cfg
	if err := b.maps.SyP_config.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("bypass config read: %w", err)
	}
	edit(&cfg)
	if err := b.maps.SyP_config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("bypass config write: %w", err)
	}
	return nil
}

// attachTracing attaches an fentry program and pins its link at pin,
// replacing the link pinned there before (attach first, so there is no gap).
func attachTracing(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, name, pin string) error {
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
	st, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return cg.CgroupId == statIno(st), nil
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
func (b *Bypass) checkBusyPoll() {
	on, why := busyPollOn()
	state := 0
	if on {
		state = 1
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || state == b.busyPoll {
		return
	}
	if err := b.editConfig(func(c *bypassSyP_cfg) { c.BusyPoll = uint32(state) }); err != nil {
		b.log.Warn("bypass config write", "error", err)
		return
	}
	b.busyPoll = state
	if on {
		b.busyWhy = "paused while busy polling is on (" + why + "): epoll then busy-polls every socket, but bypassed data passes no NAPI instance, so busy polling cannot see it and receivers sleep, which made cross-CPU latency worse than the normal path; set it to 0 to resume"
		b.log.Warn("bypass paused", "reason", b.busyWhy)
	} else {
		b.busyWhy = ""
	}
}

func (b *Bypass) watchBusyPoll() {
	for {
		select {
		case <-b.stopc:
			return
		case <-time.After(2 * time.Second):
			b.checkBusyPoll()
		}
	}
}

// modeBypass is SY_P_BYPASS of bpf/bypass.h.
const modeBypass = 1

// Set switches bypass on or off for the label with id. On: new
// connections between two local sockets skip the TCP/IP stack. Off: the
// open ones take the normal path from their next message on, after what
// was already redirected, so nothing is lost or reordered. Connections
// open when bypass is switched on keep the normal path.
func (b *Bypass) Set(id uint32, on bool) error {
	var p bypassSyP_label
	if err := b.maps.SyP_policy.Lookup(id, &p); err != nil {
		return fmt.Errorf("bypass read: %w", err)
	}
	if on {
		p.Mode |= modeBypass
	} else {
		p.Mode &^= modeBypass
	}
	if err := b.maps.SyP_policy.Put(id, &p); err != nil {
		return fmt.Errorf("bypass write: %w", err)
	}
	return nil
}

// On reports whether bypass is on for the label with id.
func (b *Bypass) On(id uint32) (bool, error) {
	var p bypassSyP_label
	if err := b.maps.SyP_policy.Lookup(id, &p); err != nil {
		return false, fmt.Errorf("bypass read: %w", err)
	}
	return p.Mode&modeBypass != 0, nil
}

// Labels returns the ids of the labels bypass is on for.
func (b *Bypass) Labels() ([]uint32, error) {
	var ids []uint32
	var id uint32
	var p bypassSyP_label
	it := b.maps.SyP_policy.Iterate()
	for it.Next(&id, &p) {
		if p.Mode&modeBypass != 0 {
			ids = append(ids, id)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bypass read: %w", err)
	}
	return ids, nil
}

// Counters returns the bypass counters of the label with id.
func (b *Bypass) Counters(id uint32) (Counters, error) {
	var per []bypassSyP_counts
	if err := b.maps.SyP_stats.Lookup(id, &per); err != nil {
		return Counters{}, fmt.Errorf("bypass counters read: %w", err)
	}
	var c Counters
	for _, s := range per {
		c.Bytes += s.Bytes
		c.Messages += s.Messages
		c.Connections += s.Connections
		c.Passed += s.Passed
		c.BusyPoll += s.BusyPoll
	}
	return c, nil
}

// State says what a label with bypass on gets: "bypass", or why it is not
// accelerated.
func (b *Bypass) State() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.why != "":
		return "bypass (not accelerated: " + b.why + ")"
	case b.busyWhy != "":
		return "bypass (not accelerated: " + b.busyWhy + ")"
	case b.note != "":
		return "bypass (" + b.note + ")"
	}
	return "bypass"
}

// Unavailable says why bypass cannot redirect here, or "".
func (b *Bypass) Unavailable() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.why
}

// Detach stops bypass taking on new connections: the sockops program's
// link is unpinned and closed. The connections bypass took on keep their
// sockets in sy_p_bypass until they close.
func (b *Bypass) Detach() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sockops != nil {
		b.sockops.Unpin()
		b.sockops.Close()
		b.sockops = nil
	} else if l, err := link.LoadPinnedLink(filepath.Join(b.dir, sockopsLinkPin), nil); err == nil {
		l.Unpin()
		l.Close()
	}
}

// Sockets returns how many sockets are in sy_p_bypass: bypass state must
// stay while any is, as data redirected to a socket waits in a queue of
// its own that goes with the map.
func (b *Bypass) Sockets() (int, error) {
	var key bypassSyP_tuple
	n := 0
	var err error
	for err = b.maps.SyP_bypass.NextKey(nil, &key); err == nil; err = b.maps.SyP_bypass.NextKey(&key, &key) {
		n++
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return n, fmt.Errorf("bypass sockets: %w", err)
	}
	return n, nil
}

// Close releases the handles; pinned state stays, and bypass with it.
func (b *Bypass) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.stopc)
	if b.sockops != nil {
		b.sockops.Close()
	}
	if b.msgProg != nil {
		b.msgProg.Close()
	}
	b.mu.Unlock()
	return b.maps.Close()
}

// Remove takes bypass's state out of dir: the sockops link first (no new
// connection joins), the fentry links and maps, sy_p_bypass last, so that
// a Remove cut short leaves state that Pinned still finds and a later
// Remove finishes. The caller makes sure no socket is in sy_p_bypass
// (Sockets), or those connections lose what was redirected to them and
// not yet read.
func Remove(dir string) error {
	names, err := pins(dir)
	if err != nil {
		return err
	}
	var errs []error
	rm := func(name string) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	rm(sockopsLinkPin)
	for _, name := range names {
		if name != sockopsLinkPin && name != bypassMapPin {
			rm(name)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bypass state: %w", err)
	}
	rm(bypassMapPin)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bypass state: %w", err)
	}
	return nil
}

// Pins are the names of bypass's pins in dir.
func pins(dir string) ([]string, error) {
	spec, err := loadSpec()
	if err != nil {
		return nil, err
	}
	var names []string
	for name := range ownMaps(spec).Maps {
		names = append(names, name)
	}
	names = append(names, sockopsLinkPin)
	for _, t := range tracingLinks {
		names = append(names, t.pin)
	}
	return names, nil
}
