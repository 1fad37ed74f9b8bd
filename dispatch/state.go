package dispatch

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/safepath"
)

// DefaultRoot is where state is pinned unless Options.Root says otherwise.
const DefaultRoot = "/sys/fs/bpf/switchyard"

// layoutVersion numbers the layout of the pinned maps; sy_config records it
// when a build creates the state or attaches its program. A build refuses
// state of a newer layout. Migration does not go by this number: load compares the
// shape of each pinned map with this build's and migrates those that differ
// (see migrate.go). Layout 2 added the small sets to sy_config (small.go).
const layoutVersion = 2

const linkPin = "link"

// Options configure Open.
type Options struct {
	// Root is a directory on a bpf filesystem that holds one state
	// directory per network namespace. Default: DefaultRoot.
	Root string
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// ReadOnly opens existing state without replacing the attached
	// program; it fails if there is no state yet. A read-only dispatcher
	// writes nothing: it reads state left inconsistent by an interrupted
	// change as the recorded bindings say, without repairing it, and
	// refuses changes and Remove.
	ReadOnly bool
}

// Dispatcher owns the dispatch state of one network namespace: the pinned
// maps, the sk_lookup program and its link. Its methods are safe for
// concurrent use, also by other processes holding the same state, which they
// serialise with a lock on the state directory.
type Dispatcher struct {
	log      *slog.Logger
	ns       *netns.NS
	nsInode  uint64
	nsCookie uint64
	dir      string
	dirf     *os.File // held open for flock
	readOnly bool
	objs     dispatchObjects
	cfg      *ebpf.Map // sy_config (config.go)
	rec      record
	crash    func(point string) bool // see crashPoint
	crashMu  sync.Mutex              // a change calls crash from two goroutines
	link     link.Link

	// migrated holds maps made to this build's layout during Open; they
	// are pinned once the program that uses them is attached.
	migrated map[string]*ebpf.Map

	mu    sync.Mutex // guards the cache below, within this process
	cache *model
	// rest is what a change that returned at its commit point left to
	// do (see exclusive); set and taken under mu.
	rest func() error
	// unfinished counts rests that failed (see Unfinished).
	unfinished atomic.Uint64
}

// Unfinished returns how many changes of this Dispatcher returned at their
// commit point, in force, and then failed to write their old generations;
// each was left to the next operation to finish (see exclusive). Their
// callers were told of success: this is where a failure shows.
func (d *Dispatcher) Unfinished() uint64 { return d.unfinished.Load() }

// progHash identifies the program this build carries. The compatibility
// check relies on it, never on kernel program tags, whose definition changed.
// It is computed on first use, after the init of variant_upgradetest.go has
// set progVariant.
var progHash = sync.OnceValue(func() [32]byte {
	return sha256.Sum256(append(slices.Clip(_DispatchBytes), progVariant...))
})

// progVariant and patchProgram let a test build carry a different program
// (see variant_upgradetest.go); in a normal build they change nothing.
var (
	progVariant  = ""
	patchProgram = func(*ebpf.CollectionSpec) {}
)

// Open adopts the dispatch state of the network namespace at netnsPath (""
// for the caller's own), creating and attaching it if there is none. State
// left by an older build is adopted and its program replaced atomically.
func Open(netnsPath string, opts Options) (_ *Dispatcher, err error) {
	if opts.Root == "" {
		opts.Root = DefaultRoot
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	ns, err := netns.Open(netnsPath)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{log: log, ns: ns, readOnly: opts.ReadOnly}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.nsInode, err = ns.Inode(); err != nil {
		return nil, err
	}
	if d.nsCookie, err = ns.Cookie(); err != nil {
		return nil, err
	}
	if err := CheckBPFFS(opts.Root); err != nil {
		return nil, err
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(opts.Root, 0o755); err != nil {
			return nil, fmt.Errorf("state root: %w", err)
		}
	}
	// A bpffs mounted with default options is sticky and world-writable:
	// anyone may create entries in the root, so each one used is checked.
	if err := safepath.CheckStickyDir("bpffs state root", opts.Root); err != nil {
		if opts.ReadOnly && errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("state root %s: %w: no dispatcher has run here yet", opts.Root, ErrNotFound)
		}
		return nil, err
	}
	d.dir = StateDir(opts.Root, d.nsInode)

	if _, err := os.Lstat(d.dir); errors.Is(err, os.ErrNotExist) {
		if opts.ReadOnly {
			return nil, fmt.Errorf("state %s: %w: no dispatcher has run in this namespace yet", d.dir, ErrNotFound)
		}
		if err := d.create(opts.Root); err != nil {
			return nil, err
		}
	}

	if d.dirf, err = openStateDir(d.dir); err != nil {
		return nil, err
	}
	// A read-only dispatcher writes nothing, so a shared lock serves it:
	// readers (the CLI without a daemon) never wait for one another.
	how := unix.LOCK_EX
	if opts.ReadOnly {
		how = unix.LOCK_SH
	}
	unlock, err := d.lock(how)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if err := d.load(); err != nil {
		return nil, err
	}
	// Builds that do not know sy_noports and sy_noaddr (c0a1c49 and
	// older) change bindings without clearing their bits, so a bit this
	// build set before such a build ran may now refuse what it bound.
	// Clear bits say nothing: attach clears the maps before this build's
	// program replaces another's, and they are written from the bindings
	// once read.
	if err := d.attach(); err != nil {
		return nil, err
	}
	m, err := d.refresh(repairWrite)
	if err != nil {
		return nil, err
	}
	if !opts.ReadOnly {
		// The set in force, with no change under way.
		if err := d.writeWords(m, false, []int{0, 1, 2, 3}); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// openStateDir opens a namespace's state directory without following a
// symlink, and checks on the open descriptor that root (or this uid) owns
// it and no one else may write to it: in a sticky root another user may
// have made the name first.
func openStateDir(dir string) (*os.File, error) {
	if err := safepath.CheckDir("namespace state directory", dir); err != nil {
		return nil, fmt.Errorf("%w; remove it (it is not switchyard's) and start again", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("state open %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("state open %s: %w", dir, err)
	}
	if (st.Uid != 0 && int(st.Uid) != os.Geteuid()) || st.Mode&0o022 != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("namespace state directory %s: %w: it changed while it was checked; remove it and start again", dir, safepath.ErrUnsafe)
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// StateDir is the state directory of the namespace with the given inode.
func StateDir(root string, nsInode uint64) string {
	return filepath.Join(root, "netns-"+strconv.FormatUint(nsInode, 10))
}

// Dir is the state directory.
func (d *Dispatcher) Dir() string { return d.dir }

// NetNSCookie identifies the namespace the dispatcher serves.
func (d *Dispatcher) NetNSCookie() uint64 { return d.nsCookie }

// Close releases the dispatcher's handles. The pinned state, and with it
// dispatching, stays in place.
func (d *Dispatcher) Close() error {
	// Wait for the rest of a change that returned at its commit point.
	d.mu.Lock()
	defer d.mu.Unlock()
	d.close()
	return nil
}

func (d *Dispatcher) close() {
	closeAll(d.migrated)
	if d.link != nil {
		d.link.Close()
	}
	d.rec.close()
	d.objs.Close()
	if d.cfg != nil {
		d.cfg.Close()
	}
	if d.dirf != nil {
		d.dirf.Close()
	}
	if d.ns != nil {
		d.ns.Close()
	}
}

// Remove detaches the program and deletes the pinned state: dispatching in
// the namespace stops. The dispatcher is closed.
func (d *Dispatcher) Remove() error {
	if d.readOnly {
		return fmt.Errorf("remove state %s: %w", d.dir, errReadOnly)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	unlock, err := d.lock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	if d.link != nil {
		if err := d.link.Unpin(); err != nil {
			unlock()
			return fmt.Errorf("unpin link: %w", err)
		}
	}
	// Delete under the lock; closing the directory releases it.
	err = os.RemoveAll(d.dir)
	d.close()
	if err != nil {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

var errReadOnly = errors.New("the dispatcher was opened read-only")

// CheckBPFFS returns ErrNoBPFFS, with what to do about it, if dir (or its
// nearest existing parent) is not on a bpf filesystem.
func CheckBPFFS(dir string) error {
	p := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("%s: %w: mount one with 'mount -t bpf bpf %s' (systemd does this at /sys/fs/bpf on most hosts) or choose a directory on one with --bpffs", dir, ErrNoBPFFS, mountHint(dir))
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return fmt.Errorf("state root %s: %w", dir, err)
		}
		p = filepath.Dir(p)
	}
}

func mountHint(dir string) string {
	if dir == DefaultRoot {
		return "/sys/fs/bpf"
	}
	return dir
}

// MountBPFFS mounts a bpf filesystem at /sys/fs/bpf if dir would live there
// and none is mounted yet. It is for the daemon, which may have the privilege.
func MountBPFFS(dir string) error {
	if CheckBPFFS(dir) == nil {
		return nil
	}
	if dir != DefaultRoot && filepath.Dir(dir) != "/sys/fs/bpf" {
		return CheckBPFFS(dir)
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w (%w)", err, ErrNoBPFFS)
	}
	return nil
}

func (d *Dispatcher) lock(how int) (func(), error) {
	for {
		err := unix.Flock(int(d.dirf.Fd()), how)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock state %s: %w", d.dir, err)
		}
		return func() { unix.Flock(int(d.dirf.Fd()), unix.LOCK_UN) }, nil
	}
}

func loadSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadDispatch()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, ".") { // data sections (sy_config: config.go)
			continue
		}
		m.Pinning = ebpf.PinByName
	}
	patchProgram(spec)
	return spec, nil
}

// create builds the state directory under a temporary name and renames it
// into place, so others see either no state or complete state.
func (d *Dispatcher) create(root string) error {
	tmp, err := os.MkdirTemp(root, "new-") // bpffs refuses names with a dot
	if err != nil {
		return fmt.Errorf("state create: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op once renamed
	spec, err := loadSpec()
	if err != nil {
		return err
	}
	var maps dispatchMaps
	if err := spec.LoadAndAssign(&maps, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: tmp}}); err != nil {
		return fmt.Errorf("state create maps: %w", err)
	}
	defer maps.Close()
	if err := initIndex(maps.SyIndex); err != nil {
		return fmt.Errorf("state init index: %w", err)
	}
	cfg := configVal{Layout: layoutVersion}
	for i := range cfg.Small {
		cfg.Small[i].Flags = smallKnown | smallAll // no bindings: small
	}
	if err := createConfig(tmp, spec, &cfg); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o750); err != nil {
		return fmt.Errorf("state create: %w", err)
	}
	if err := os.Rename(tmp, d.dir); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			d.log.Debug("state created concurrently by another process", "dir", d.dir)
			return nil
		}
		return fmt.Errorf("state create: %w", err)
	}
	d.log.Info("created dispatch state", "dir", d.dir)
	return nil
}

// load opens the pinned maps and loads this build's program against them.
func (d *Dispatcher) load() error {
	spec, err := loadSpec()
	if err != nil {
		return err
	}
	cfgMap, err := ebpf.LoadPinnedMap(filepath.Join(d.dir, "sy_config"), nil)
	if err != nil {
		return fmt.Errorf("state %s: open config: %w", d.dir, err)
	}
	// As the build that left it wrote it, which may be shorter (layout
	// 1) or longer than this build's: the layout follows the generation.
	raw := make([]byte, cfgMap.ValueSize())
	err = cfgMap.Lookup(uint32(0), raw)
	cfgMap.Close()
	if err == nil && len(raw) < 8 {
		err = fmt.Errorf("value of %d bytes", len(raw))
	}
	if err != nil {
		return fmt.Errorf("state %s: read config: %w", d.dir, err)
	}
	if layout := binary.NativeEndian.Uint32(raw[4:8]); layout > layoutVersion {
		return fmt.Errorf("state %s has layout %d, this build knows up to %d: %w; run the newer build, or remove the state to start over", d.dir, layout, layoutVersion, ErrIncompatible)
	}
	old, err := incompatible(d.dir, spec)
	if err != nil {
		return err
	}
	defer closeAll(old)
	fresh, err := migrateMaps(spec, old)
	if err != nil {
		return fmt.Errorf("state %s: %w", d.dir, err)
	}
	d.migrated = fresh
	cfg, cfgMigrated, err := openConfig(d.dir, spec)
	if err != nil {
		return fmt.Errorf("state %s: %w", d.dir, err)
	}
	d.cfg = cfg
	repl := maps.Clone(fresh)
	repl[cfgSection] = cfg
	if cfgMigrated {
		// Pinned over the old one with the other migrated maps; d.cfg
		// stays open beside them (closeAll closes a clone).
		c, err := cfg.Clone()
		if err != nil {
			return err
		}
		d.migrated[cfgPin] = c
	}
	if err := spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: d.dir},
		MapReplacements: repl,
	}); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("state %s: %w: %w", d.dir, ErrIncompatible, err)
		}
		return fmt.Errorf("load program: %w", err)
	}
	for name := range fresh {
		d.log.Info("migrated map to this build's layout", "map", name, "dir", d.dir)
	}
	return d.openRecord(spec)
}

// attach makes sure this namespace runs the program, adopting a pinned link
// and replacing an older program in it atomically. A read-only dispatcher
// only adopts a pinned link that serves the namespace.
func (d *Dispatcher) attach() error {
	pin := filepath.Join(d.dir, linkPin)
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		if ok, why, other := d.linkServesNS(l); !ok {
			l.Close()
			if other {
				// A live namespace's state under this namespace's name:
				// adopting it would edit the other namespace's bindings.
				return fmt.Errorf("state %s: %w: %s; it belongs to that namespace's switchyard, not this one: remove or move it if that is wrong", d.dir, safepath.ErrUnsafe, why)
			}
			if d.readOnly {
				return fmt.Errorf("state %s: %s", d.dir, why)
			}
			d.log.Warn("pinned link is stale; attaching afresh", "dir", d.dir, "reason", why)
			os.Remove(pin)
			return d.attachNew(pin)
		}
		d.link = l
		if d.readOnly {
			return nil
		}
		var cfg configVal
		if err := d.cfg.Lookup(uint32(0), &cfg); err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if cfg.Prog == progHash() && len(d.migrated) == 0 {
			return nil
		}
		if err := d.clearWords(); err != nil {
			return err
		}
		if err := l.Update(d.objs.SyDispatch); err != nil {
			return fmt.Errorf("replace program: %w", err)
		}
		if err := d.pinMigrated(); err != nil {
			return err
		}
		if err := d.stampProgram(); err != nil {
			return err
		}
		d.log.Info("replaced dispatch program", "dir", d.dir)
		return nil
	case errors.Is(err, os.ErrNotExist):
		if d.readOnly {
			return fmt.Errorf("state %s: no program attached", d.dir)
		}
		return d.attachNew(pin)
	default:
		return fmt.Errorf("load pinned link: %w", err)
	}
}

// pinMigrated makes the maps migrated by load the pinned ones, now that the
// program using them runs.
func (d *Dispatcher) pinMigrated() error {
	if err := repin(d.dir, d.migrated); err != nil {
		return err
	}
	closeAll(d.migrated)
	d.migrated = nil
	return nil
}

func (d *Dispatcher) attachNew(pin string) error {
	if err := d.clearWords(); err != nil {
		return err
	}
	l, err := link.AttachNetNs(d.ns.FD(), d.objs.SyDispatch)
	if err != nil {
		return fmt.Errorf("attach sk_lookup: %w", err)
	}
	if err := d.pinMigrated(); err != nil {
		l.Close()
		return err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("pin link: %w", err)
	}
	d.link = l
	if err := d.stampProgram(); err != nil {
		return err
	}
	d.log.Info("attached dispatch program", "netns_inode", d.nsInode)
	return nil
}

// stampProgram records in sy_config that this build's program, and with it
// this build's layout, serves the state.
func (d *Dispatcher) stampProgram() error {
	return d.writeConfig(func(c *configVal) {
		c.Prog = progHash()
		c.Layout = layoutVersion
	})
}

// linkServesNS is how a state directory proves it belongs to this
// namespace: its pinned link is attached to it. A link whose namespace is
// gone reports inode 0 (the kernel's netns_bpf_link_fill_info gives 0 once
// the link's net is released): the state is stale and may be taken over, as
// when a new namespace reuses a dead one's inode. A link attached to
// another live namespace (other) must not be.
func (d *Dispatcher) linkServesNS(l link.Link) (ok bool, why string, other bool) {
	info, err := l.Info()
	if err != nil {
		return false, fmt.Sprintf("link info: %v", err), false
	}
	nsi := info.NetNs()
	if nsi == nil {
		return false, "pinned link is not a netns link", false
	}
	if ino := uint64(nsi.NetnsInode); ino != d.nsInode {
		if ino != 0 {
			return false, fmt.Sprintf("its pinned link serves network namespace inode %d, not this one's (%d)", ino, d.nsInode), true
		}
		return false, fmt.Sprintf("pinned link serves no namespace any more, not inode %d (namespace gone)", d.nsInode), false
	}
	return true, "", false
}

// Verify loads this build's programs and maps into the kernel without
// pinning or attaching anything, to check that the kernel accepts them.
func Verify() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}
	spec, err := loadSpec()
	if err != nil {
		return err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return fmt.Errorf("load programs: %w", err)
	}
	coll.Close()
	return nil
}
