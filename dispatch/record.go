package dispatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// The record is what a restarting process recovers the set in force from:
// the bindings and an opaque blob of label settings that the caller stores
// with them. It is kept twice, as generations 0 and 1, and sy_commit names
// the generation in force; doc.go argues why a change is all-or-nothing.
//
//   - sy_bindings (generation 0) and sy_bindings_b (generation 1): binding
//     key -> label id, a whole set each.
//   - sy_settings: (generation, chunk) -> settingsChunk bytes of that
//     generation's settings blob.
//   - sy_commit[0]: a commitVal.
//
// sy_bindings is the record of builds before the generations; when the
// others are missing, load creates them with generation 0 in force and a
// sync pending, so an upgrade keeps the set.

const (
	recordBMap  = "sy_bindings_b"
	settingsMap = "sy_settings"
	commitMap   = "sy_commit"

	// settingsChunk is the size of one value of sy_settings.
	settingsChunk = 4096
	// maxSettingsChunks bounds one generation's settings blob (16 MiB).
	maxSettingsChunks = 4096
)

// States of a commitVal.
const (
	commitIdle    = 0 // both generations hold the set in force
	commitBegun   = 1 // the other generation is being written: it is not in force
	commitFlipped = 2 // Gen was just switched: the old generation is being written
	commitSync    = 3 // the other generation is to be made equal to Gen (after an upgrade)
)

// commitVal is the value of sy_commit[0]. One store of it is the commit
// point of every change.
type commitVal struct {
	Gen   uint32 // the generation in force, 0 or 1
	State uint32
	// Settings holds, per generation, the length of its settings blob
	// plus one; 0: no settings recorded.
	Settings [2]uint32
}

// settingsKey is the key of sy_settings.
type settingsKey struct {
	Gen   uint32
	Chunk uint32
}

// errBadRecord says that the record cannot be read as it is.
var errBadRecord = errors.New("bad record")

// check refuses a commit record that no build wrote: a restarting process
// reads it, and the state directory is only as trustworthy as its owner.
func (c commitVal) check() error {
	if c.Gen > 1 {
		return fmt.Errorf("%w: generation %d in force", errBadRecord, c.Gen)
	}
	if c.State > commitSync {
		return fmt.Errorf("%w: commit state %d", errBadRecord, c.State)
	}
	for g, n := range c.Settings {
		if n > maxSettingsChunks*settingsChunk+1 {
			return fmt.Errorf("%w: settings of generation %d have %d bytes, at most %d", errBadRecord, g, n-1, maxSettingsChunks*settingsChunk)
		}
	}
	return nil
}

// record holds the maps of the record beside sy_bindings (d.objs).
type record struct {
	bindingsB *ebpf.Map
	settings  *ebpf.Map
	commit    *ebpf.Map // nil: a read-only dispatcher on state of an older build
}

func (r *record) close() {
	for _, m := range []*ebpf.Map{r.bindingsB, r.settings, r.commit} {
		if m != nil {
			m.Close()
		}
	}
}

func recordSpecs(bindings *ebpf.MapSpec) (bindingsB, settings, commit *ebpf.MapSpec) {
	bindingsB = bindings.Copy()
	bindingsB.Name = recordBMap
	bindingsB.Pinning = ebpf.PinByName
	settings = &ebpf.MapSpec{
		Name: settingsMap, Type: ebpf.Hash, KeySize: 8, ValueSize: settingsChunk,
		MaxEntries: 2 * maxSettingsChunks, Flags: bindings.Flags, Pinning: ebpf.PinByName,
	}
	commit = &ebpf.MapSpec{Name: commitMap, Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1}
	return bindingsB, settings, commit
}

// openRecord opens the record's maps, creating those that are missing
// unless the dispatcher is read-only. The caller holds the exclusive lock,
// or the shared one when read-only.
func (d *Dispatcher) openRecord(spec *ebpf.CollectionSpec) error {
	bs, ss, cs := recordSpecs(spec.Maps["sy_bindings"])
	commitPin := filepath.Join(d.dir, commitMap)
	if d.readOnly {
		m, err := ebpf.LoadPinnedMap(commitPin, &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			return nil // sy_bindings alone is the record
		}
		if err != nil {
			return fmt.Errorf("state %s: open %s: %w", d.dir, commitMap, err)
		}
		d.rec.commit = m
		for _, p := range []struct {
			name string
			to   **ebpf.Map
		}{{recordBMap, &d.rec.bindingsB}, {settingsMap, &d.rec.settings}} {
			m, err := ebpf.LoadPinnedMap(filepath.Join(d.dir, p.name), &ebpf.LoadPinOptions{ReadOnly: true})
			if err != nil {
				return fmt.Errorf("state %s: open %s: %w", d.dir, p.name, err)
			}
			*p.to = m
		}
		return nil
	}
	var err error
	opts := ebpf.MapOptions{PinPath: d.dir}
	if d.rec.bindingsB, err = ebpf.NewMapWithOptions(bs, opts); err != nil {
		return fmt.Errorf("state %s: %s: %w", d.dir, recordBMap, err)
	}
	if d.rec.settings, err = ebpf.NewMapWithOptions(ss, opts); err != nil {
		return fmt.Errorf("state %s: %s: %w", d.dir, settingsMap, err)
	}
	m, err := ebpf.LoadPinnedMap(commitPin, nil)
	if err == nil {
		d.rec.commit = m
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state %s: open %s: %w", d.dir, commitMap, err)
	}
	// State of an older build: sy_bindings is the set in force. The commit
	// record is complete before it is pinned, so a crash here leaves
	// either none (and this runs again) or one that asks for the sync.
	if m, err = ebpf.NewMap(cs); err != nil {
		return fmt.Errorf("state %s: create %s: %w", d.dir, commitMap, err)
	}
	if err := m.Put(uint32(0), &commitVal{State: commitSync}); err != nil {
		m.Close()
		return fmt.Errorf("state %s: init %s: %w", d.dir, commitMap, err)
	}
	if err := m.Pin(commitPin); err != nil {
		m.Close()
		return fmt.Errorf("state %s: pin %s: %w", d.dir, commitMap, err)
	}
	d.rec.commit = m
	var k dispatchSyBindingKey
	if err := d.objs.SyBindings.NextKey(nil, &k); err == nil {
		d.log.Info("the recorded binding set is now kept in two generations", "dir", d.dir)
	}
	return nil
}

// readCommit returns the commit record; without one, generation 0 in
// force and no settings.
func (d *Dispatcher) readCommit() (commitVal, error) {
	var c commitVal
	if d.rec.commit == nil {
		return c, nil
	}
	if err := d.rec.commit.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read %s: %w", commitMap, err)
	}
	if err := c.check(); err != nil {
		return c, fmt.Errorf("state %s: %w", d.dir, err)
	}
	return c, nil
}

func (d *Dispatcher) writeCommit(c commitVal) error {
	if err := d.rec.commit.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("write %s: %w", commitMap, err)
	}
	return nil
}

// bindingsInForce opens, with pin, the binding record of the generation in
// force in the state directory dir, for readers that do not open a
// Dispatcher.
func bindingsInForce(dir string, pin func(name string) (*ebpf.Map, error)) (*ebpf.Map, error) {
	if _, err := os.Stat(filepath.Join(dir, commitMap)); errors.Is(err, os.ErrNotExist) {
		return pin("sy_bindings") // state of a build without generations
	}
	cm, err := pin(commitMap)
	if err != nil {
		return nil, err
	}
	var c commitVal
	if err := cm.Lookup(uint32(0), &c); err != nil {
		return nil, fmt.Errorf("state %s: read %s: %w", dir, commitMap, err)
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("state %s: %w", dir, err)
	}
	if c.Gen == 1 {
		return pin(recordBMap)
	}
	return pin("sy_bindings")
}

// bindingsOf is the binding record of generation gen.
func (d *Dispatcher) bindingsOf(gen uint32) *ebpf.Map {
	if gen == 1 {
		return d.rec.bindingsB
	}
	return d.objs.SyBindings
}

// readSettings returns the settings blob of generation gen; ok is false if
// none is recorded.
func (d *Dispatcher) readSettings(c commitVal, gen uint32) (blob []byte, ok bool, err error) {
	n := c.Settings[gen]
	if n == 0 {
		return nil, false, nil
	}
	n--
	blob = make([]byte, n)
	var chunk [settingsChunk]byte
	for i := uint32(0); i*settingsChunk < n; i++ {
		if err := d.rec.settings.Lookup(&settingsKey{gen, i}, &chunk); err != nil {
			return nil, false, fmt.Errorf("read settings chunk %d of generation %d: %w", i, gen, err)
		}
		copy(blob[i*settingsChunk:], chunk[:])
	}
	return blob, true, nil
}

// writeSettings writes blob as generation gen's settings and returns the
// length to record in commitVal.Settings.
func (d *Dispatcher) writeSettings(gen uint32, blob []byte) (uint32, error) {
	if len(blob) > maxSettingsChunks*settingsChunk {
		return 0, fmt.Errorf("%w: label settings take %d bytes, at most %d", ErrCapacity, len(blob), maxSettingsChunks*settingsChunk)
	}
	n := (len(blob) + settingsChunk - 1) / settingsChunk
	keys := make([]settingsKey, n)
	vals := make([][settingsChunk]byte, n)
	for i := range n {
		keys[i] = settingsKey{gen, uint32(i)}
		copy(vals[i][:], blob[i*settingsChunk:])
	}
	if err := batchPut(d.rec.settings, keys, vals); err != nil {
		return 0, fmt.Errorf("record settings: %w", err)
	}
	return uint32(len(blob)) + 1, nil
}

// recordChange is what one change writes to a generation of the record:
// the bindings that changes add and remove, with label ids from ids, and
// delKeys, putKeys and putVals besides.
type recordChange struct {
	changes          []groupChange
	ids              map[string]uint32 // label ids of what changes add
	delKeys, putKeys []dispatchSyBindingKey
	putVals          []uint32
	settings         []byte // nil: unchanged
}

// writeRecord writes rc to generation gen; point names it for crashPoint.
// The keys of changes are written in bounded batches (at a million
// bindings they took 32 MB as one), every deletion before any put. It
// reads rc.ids, which nothing writes while a change is committed.
func (d *Dispatcher) writeRecord(gen uint32, rc *recordChange, point string) (settingsLen uint32, err error) {
	m := d.bindingsOf(gen)
	var keys []dispatchSyBindingKey
	var vals []uint32
	if len(rc.changes) > 0 {
		keys = make([]dispatchSyBindingKey, 0, batchEntries)
		vals = make([]uint32, 0, batchEntries)
	}
	put := func(add bool) error {
		var err error
		flush := func() {
			if add {
				err = batchPut(m, keys, vals)
			} else {
				err = batchDelete(m, keys)
			}
			keys, vals = keys[:0], vals[:0]
		}
		for _, c := range rc.changes {
			if (add && c.new == nil) || (!add && c.old == nil) {
				continue // it has nothing of the kind: no need to walk it
			}
			walkDiff(c.old.portList(), c.new.portList(), func(pl portLabel, a bool) {
				if a != add || err != nil {
					return
				}
				keys = append(keys, c.key.bindingKey(pl.ports))
				if add {
					vals = append(vals, rc.ids[pl.label])
				}
				if len(keys) == cap(keys) {
					flush()
				}
			})
			if err != nil {
				return err
			}
		}
		if len(keys) > 0 {
			flush()
		}
		return err
	}
	if err := put(false); err != nil {
		return 0, fmt.Errorf("record bindings: %w", err)
	}
	if err := batchDelete(m, rc.delKeys); err != nil {
		return 0, fmt.Errorf("record bindings: %w", err)
	}
	if err := d.crashPoint(point + "-deleted"); err != nil {
		return 0, err
	}
	if err := put(true); err != nil {
		return 0, fmt.Errorf("record bindings: %w", err)
	}
	if err := batchPut(m, rc.putKeys, rc.putVals); err != nil {
		return 0, fmt.Errorf("record bindings: %w", err)
	}
	if rc.settings == nil {
		return 0, nil
	}
	return d.writeSettings(gen, rc.settings)
}

// eachBinding calls fn for each entry of a binding record, reading in
// batches.
func eachBinding(m *ebpf.Map, fn func(k *dispatchSyBindingKey, id uint32) error) error {
	const batch = 4096
	keys := make([]dispatchSyBindingKey, batch)
	vals := make([]uint32, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if err := fn(&keys[i], vals[i]); err != nil {
				return err
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read bindings: %w", err)
		}
	}
}

// crashPoint lets a test stop a change at the named point, as a crash
// would, by setting d.crash to return errCrashPoint there. Normal builds
// never stop.
func (d *Dispatcher) crashPoint(name string) error {
	if d.crash == nil {
		return nil
	}
	d.crashMu.Lock()
	stop := d.crash(name)
	d.crashMu.Unlock()
	if !stop {
		return nil
	}
	return fmt.Errorf("%w at %s", errCrashPoint, name)
}

var errCrashPoint = errors.New("simulated crash")
