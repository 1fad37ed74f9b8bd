package dispatch

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// maxBindings is what sy_bindings holds.
const maxBindings = 1 << 20

// Bindings returns every binding, sorted.
func (d *Dispatcher) Bindings() ([]binding.Binding, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return nil, err
	}
	out := make([]binding.Binding, 0, len(m.bindings))
	for k, l := range m.bindings {
		out = append(out, binding.Binding{Label: l, Protocol: k.Protocol, Prefix: k.Prefix, Ports: k.Ports})
	}
	SortBindings(out)
	return out, nil
}

// SortBindings orders bindings by protocol, family, prefix, ports, label.
func SortBindings(bs []binding.Binding) {
	slices.SortFunc(bs, func(a, b binding.Binding) int {
		if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
			return c
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Ports.Lo, b.Ports.Lo); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Ports.Hi, b.Ports.Hi); c != 0 {
			return c
		}
		return cmp.Compare(a.Label, b.Label)
	})
}

// read returns a current model under a shared lock, repairing the state
// under an exclusive one if needed. The caller holds d.mu.
func (d *Dispatcher) read() (*model, error) {
	unlock, err := d.lock(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	m, err := d.refresh(false)
	unlock()
	if err != errNeedExclusive {
		return m, err
	}
	unlock, err = d.lock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return d.refresh(true)
}

// AddBindings adds bindings in one atomic change. Bindings that exist already
// with the same label are left as they are and not reported as added. A
// binding that would make the choice of socket ambiguous, or that gives an
// existing (protocol, prefix, ports) another label, is refused with
// ErrConflict naming the binding in the way; then nothing changes.
func (d *Dispatcher) AddBindings(bs ...binding.Binding) (added []binding.Binding, err error) {
	for _, b := range bs {
		if err := b.Validate(); err != nil {
			return nil, err
		}
	}
	err = d.change(func(cur map[binding.Key]string) (map[binding.Key]string, error) {
		next := maps.Clone(cur)
		for _, b := range bs {
			if l, ok := next[b.Key()]; ok {
				if l == b.Label {
					continue
				}
				return nil, fmt.Errorf("bind %s: %w: %s is bound to label %s; unbind it first", b, ErrConflict, b.Key(), l)
			}
			next[b.Key()] = b.Label
			added = append(added, b)
		}
		return next, nil
	})
	if err != nil {
		return nil, err
	}
	return added, nil
}

// RemoveBindings removes bindings in one atomic change. Each must exist with
// the given label, or nothing changes and the error wraps ErrNotFound.
func (d *Dispatcher) RemoveBindings(bs ...binding.Binding) error {
	return d.change(func(cur map[binding.Key]string) (map[binding.Key]string, error) {
		next := maps.Clone(cur)
		for _, b := range bs {
			l, ok := next[b.Key()]
			if !ok {
				return nil, fmt.Errorf("unbind %s: %w: no such binding", b, ErrNotFound)
			}
			if l != b.Label {
				return nil, fmt.Errorf("unbind %s: %w: %s is bound to label %s, not %s", b, ErrNotFound, b.Key(), l, b.Label)
			}
			delete(next, b.Key())
		}
		return next, nil
	})
}

// ReplaceBindings makes the bindings equal to bs in one atomic change, and
// returns what was added and removed (a binding whose label changes is in
// both). With dryRun it only computes the difference.
func (d *Dispatcher) ReplaceBindings(bs []binding.Binding, dryRun bool) (added, removed []binding.Binding, err error) {
	next := make(map[binding.Key]string, len(bs))
	for _, b := range bs {
		if err := b.Validate(); err != nil {
			return nil, nil, err
		}
		if l, ok := next[b.Key()]; ok && l != b.Label {
			return nil, nil, fmt.Errorf("%w: %s is given to labels %s and %s", ErrConflict, b.Key(), l, b.Label)
		}
		next[b.Key()] = b.Label
	}
	err = d.change(func(cur map[binding.Key]string) (map[binding.Key]string, error) {
		for k, l := range cur {
			if nl, ok := next[k]; !ok || nl != l {
				removed = append(removed, binding.Binding{Label: l, Protocol: k.Protocol, Prefix: k.Prefix, Ports: k.Ports})
			}
		}
		for k, l := range next {
			if ol, ok := cur[k]; !ok || ol != l {
				added = append(added, binding.Binding{Label: l, Protocol: k.Protocol, Prefix: k.Prefix, Ports: k.Ports})
			}
		}
		if dryRun {
			return cur, nil
		}
		return next, nil
	})
	if err != nil {
		return nil, nil, err
	}
	SortBindings(added)
	SortBindings(removed)
	return added, removed, nil
}

// checkGroup refuses port sets of one (protocol, prefix) that overlap
// without nesting.
func checkGroup(gk groupKey, ports map[binding.Ports]string) error {
	ps := slices.Collect(maps.Keys(ports))
	slices.SortFunc(ps, func(a, b binding.Ports) int {
		if c := cmp.Compare(a.Lo, b.Lo); c != 0 {
			return c
		}
		return cmp.Compare(b.Hi, a.Hi)
	})
	// In laminar order every range either nests in an open one or starts
	// after it ends; a stack of open ranges finds any that do neither.
	var open []binding.Ports
	for _, p := range ps {
		for len(open) > 0 && open[len(open)-1].Hi < p.Lo {
			open = open[:len(open)-1]
		}
		if n := len(open); n > 0 && open[n-1].Hi < p.Hi {
			o := open[n-1]
			a := binding.Binding{Label: ports[o], Protocol: gk.proto, Prefix: gk.prefix, Ports: o}
			b := binding.Binding{Label: ports[p], Protocol: gk.proto, Prefix: gk.prefix, Ports: p}
			return fmt.Errorf("%w: %s and %s overlap partially, so which one wins would be ambiguous; make one range contain the other, or split them", ErrConflict, b, a)
		}
		open = append(open, p)
	}
	return nil
}

// change runs an edit of the binding set under the exclusive lock and makes
// the result visible atomically. edit gets the current bindings and returns
// the next ones (returning cur itself means no change).
func (d *Dispatcher) change(edit func(cur map[binding.Key]string) (map[binding.Key]string, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	unlock, err := d.lock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := d.refresh(true)
	if err != nil {
		return err
	}
	next, err := edit(m.bindings)
	if err != nil {
		return err
	}
	if len(next) > maxBindings {
		return fmt.Errorf("%w: %d bindings, at most %d", ErrCapacity, len(next), maxBindings)
	}

	// Which groups change, and how.
	touched := map[groupKey]bool{}
	for k, l := range next {
		if ol, ok := m.bindings[k]; !ok || ol != l {
			touched[groupKey{k.Protocol, k.Prefix}] = true
		}
	}
	for k := range m.bindings {
		if _, ok := next[k]; !ok {
			touched[groupKey{k.Protocol, k.Prefix}] = true
		}
	}
	if len(touched) == 0 {
		return nil
	}
	newPorts := map[groupKey]map[binding.Ports]string{}
	for gk := range touched {
		newPorts[gk] = map[binding.Ports]string{}
	}
	for k, l := range next {
		gk := groupKey{k.Protocol, k.Prefix}
		if touched[gk] {
			newPorts[gk][k.Ports] = l
		}
	}
	for gk, ports := range newPorts {
		if err := checkGroup(gk, ports); err != nil {
			return err
		}
	}

	// Labels that appear for the first time get ids.
	var newLabels []string
	for _, ports := range newPorts {
		for _, l := range ports {
			if _, ok := m.labels[l]; !ok && !slices.Contains(newLabels, l) {
				newLabels = append(newLabels, l)
			}
		}
	}
	if err := d.allocLabels(m, newLabels); err != nil {
		return err
	}

	changes := make([]groupChange, 0, len(touched))
	var slotsTaken []uint32
	fail := func(err error) error {
		for _, s := range slotsTaken {
			m.slots[s] = false
		}
		d.cache = nil
		return err
	}
	for gk, ports := range newPorts {
		c := groupChange{key: gk, old: m.groups[gk]}
		if len(ports) > 0 {
			g := &group{ports: ports}
			if err := m.compileGroup(g); err != nil {
				return fail(fmt.Errorf("%s %s: %w", gk.proto, gk.prefix, err))
			}
			if g.c.useTable() {
				if c.old != nil && c.old.slot != 0 {
					g.slot = c.old.slot
				} else {
					s, err := m.allocSlot()
					if err != nil {
						return fail(err)
					}
					g.slot = s
					slotsTaken = append(slotsTaken, s)
				}
			}
			c.new = g
		}
		if c.old != nil && c.new != nil && c.old.c.equal(&c.new.c) && c.old.slot == c.new.slot {
			m.groups[gk] = c.new
			continue
		}
		changes = append(changes, c)
	}

	var putKeys []dispatchSyBindingKey
	var putVals []uint32
	var delKeys []dispatchSyBindingKey
	for k, l := range next {
		if ol, ok := m.bindings[k]; !ok || ol != l {
			putKeys = append(putKeys, bindingMapKey(k))
			putVals = append(putVals, m.labels[l])
		}
	}
	for k := range m.bindings {
		if _, ok := next[k]; !ok {
			delKeys = append(delKeys, bindingMapKey(k))
		}
	}
	// Update the model, then the maps.
	for _, c := range changes {
		if c.old != nil {
			m.dropGroupStats(c.key)
			delete(m.groups, c.key)
		}
		if c.new != nil {
			m.addGroupStats(c.key)
			m.groups[c.key] = c.new
		}
	}
	m.bindings = next
	err = d.commit(m, changes, func() error {
		if err := batchPut(d.objs.SyBindings, putKeys, putVals); err != nil {
			return fmt.Errorf("record bindings: %w", err)
		}
		if err := batchDelete(d.objs.SyBindings, delKeys); err != nil {
			return fmt.Errorf("record bindings: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return d.gcLabels(m)
}
