package dispatch

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// allocLabels gives ids to labels that have none, recording them in
// sy_labels and zeroing their counters. Ids start at 1; 0 means no label.
func (d *Dispatcher) allocLabels(m *model, names []string) error {
	if len(names) == 0 {
		return nil
	}
	if len(m.labels)+len(names) >= maxLabels {
		return fmt.Errorf("%w: more than %d labels", ErrCapacity, maxLabels-1)
	}
	next := uint32(1)
	zero := make([]dispatchSyStats, runtime.NumCPU())
	if n, err := ebpf.PossibleCPU(); err == nil {
		zero = make([]dispatchSyStats, n)
	}
	for _, name := range names {
		for m.names[next] != "" {
			next++
		}
		if err := d.objs.SyCounters.Put(next, zero); err != nil {
			return fmt.Errorf("reset counters of label %s: %w", name, err)
		}
		k := labelKey(name)
		if err := d.objs.SyLabels.Put(&k, &dispatchSyLabelVal{Id: next}); err != nil {
			return fmt.Errorf("record label %s: %w", name, err)
		}
		m.labels[name] = next
		m.names[next] = name
	}
	return d.bumpSerial(m)
}

// bumpSerial tells other processes that the recorded state changed, and
// records in m that it holds the change.
func (d *Dispatcher) bumpSerial(m *model) error {
	return d.writeConfig(func(c *configVal) { c.Serial++; m.serial = c.Serial })
}

// gcLabels forgets labels that have neither bindings nor sockets, unless
// they are kept (KeepLabel).
func (d *Dispatcher) gcLabels(m *model) error {
	var gone []string
	for name, id := range m.labels {
		if m.protos[name] != nil || m.kept[name] || d.hasSocket(id) {
			continue
		}
		k := labelKey(name)
		if err := d.objs.SyLabels.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget label %s: %w", name, err)
		}
		gone = append(gone, name)
	}
	if len(gone) == 0 {
		return nil
	}
	for _, name := range gone {
		delete(m.names, m.labels[name])
		delete(m.labels, name)
	}
	return d.bumpSerial(m)
}

func (d *Dispatcher) hasSocket(id uint32) bool {
	for i := range uint32(4) {
		if _, ok := d.socketCookie(id*4 + i); ok {
			return true
		}
	}
	return false
}

func (d *Dispatcher) socketCookie(slot uint32) (uint64, bool) {
	var cookie uint64
	err := d.objs.SySockets.Lookup(slot, &cookie)
	return cookie, err == nil
}

// Labels returns the names of all known labels: those with bindings or a
// registered socket, and those kept by KeepLabel.
func (d *Dispatcher) Labels() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(m.labels))
	for name := range m.labels {
		out = append(out, name)
	}
	return out, nil
}

// exclusive runs fn, which changes the state, with a current model under the
// exclusive lock, repairing the state first if needed. A read-only
// dispatcher refuses. If fn leaves d.rest (a large change, returned at its
// commit point), exclusive returns at once and runs it, holding the locks
// until it is done.
func (d *Dispatcher) exclusive(fn func(m *model) error) error {
	if d.readOnly {
		return fmt.Errorf("state %s: %w", d.dir, errReadOnly)
	}
	d.mu.Lock()
	unlock, err := d.lock(unix.LOCK_EX)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	m, err := d.refresh(repairWrite)
	if err == nil {
		err = fn(m)
	}
	rest := d.rest
	if rest == nil {
		unlock()
		d.mu.Unlock()
		return err
	}
	// fn made a large change and returned at its commit point: the
	// change is in force, and its caller goes on while the rest of it
	// is done here, still under both locks, before any other operation
	// of this process or another. A failure there leaves the change in
	// force, unfinished, and the next operation finishes it.
	d.rest = nil
	go func() {
		if err := rest(); err != nil {
			d.unfinished.Add(1)
			d.log.Error("a change in force was not finished; the next operation finishes it", "err", err)
		}
		unlock()
		d.mu.Unlock()
		// The change's garbage (batches of a million writes) outlived
		// the caller's own collection: hand it back now that it is
		// done, rather than keep it resident until the next change.
		// After the locks: it takes a collection (50-270 ms at 175,000
		// bindings), which no operation need wait for.
		debug.FreeOSMemory()
	}()
	return err
}

// Settle returns once the rest of a large change that this process made
// (see exclusive) is done, at once if there is none: the rest holds d.mu
// until then. A caller that is about to allocate much (a large apply)
// waits here so that the rest's garbage and its own do not add up.
func (d *Dispatcher) Settle() {
	d.mu.Lock()
	d.mu.Unlock() //nolint:staticcheck // the lock is the wait
}

// view runs fn, which only reads, with a current model under the shared
// lock. It writes nothing, not even a repair (see refresh).
func (d *Dispatcher) view(fn func(m *model) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	unlock, err := d.lock(unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := d.refresh(repairSkip)
	if err != nil {
		return err
	}
	return fn(m)
}

// LabelID returns the number the programs know a label by. Programs of other
// packages that share the pinned maps (see bpf/lookup.h) key per-label state
// by it. ok is false for a label with neither bindings nor sockets, unless
// it is kept (KeepLabel).
func (d *Dispatcher) LabelID(name string) (id uint32, ok bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return 0, false, err
	}
	id, ok = m.labels[name]
	return id, ok, nil
}

// labelKept marks, in sy_labels, a label kept for its settings.
const labelKept = 1

// KeepLabel gives a label an id if it has none yet and keeps it, with its
// id, while it has neither bindings nor sockets, so that settings keyed by
// the id never pass to another label. ReleaseLabel undoes it.
func (d *Dispatcher) KeepLabel(name string) (uint32, error) {
	if err := binding.ValidateLabel(name); err != nil {
		return 0, err
	}
	var id uint32
	err := d.exclusive(func(m *model) error {
		if _, ok := m.labels[name]; !ok {
			if err := d.allocLabels(m, []string{name}); err != nil {
				return err
			}
		}
		id = m.labels[name]
		if m.kept[name] {
			return nil
		}
		k := labelKey(name)
		if err := d.objs.SyLabels.Put(&k, &dispatchSyLabelVal{Id: id, Flags: labelKept}); err != nil {
			return fmt.Errorf("keep label %s: %w", name, err)
		}
		m.kept[name] = true
		return d.bumpSerial(m)
	})
	return id, err
}

// ReleaseLabel lets a kept label go once it has neither bindings nor
// sockets.
func (d *Dispatcher) ReleaseLabel(name string) error {
	return d.exclusive(func(m *model) error {
		id, ok := m.labels[name]
		if !ok || !m.kept[name] {
			return nil
		}
		k := labelKey(name)
		if err := d.objs.SyLabels.Put(&k, &dispatchSyLabelVal{Id: id}); err != nil {
			return fmt.Errorf("release label %s: %w", name, err)
		}
		delete(m.kept, name)
		if err := d.bumpSerial(m); err != nil {
			return err
		}
		return d.gcLabels(m)
	})
}
