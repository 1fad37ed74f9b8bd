package dispatch

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// maxBindings is what sy_bindings holds.
const maxBindings = 1 << 20

// largeChange is the number of changed groups from which a change's
// garbage is worth a collection.
const largeChange = 1 << 16

// Bindings returns every binding, sorted.
func (d *Dispatcher) Bindings() ([]binding.Binding, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return nil, err
	}
	keys := make([]groupKey, 0, len(m.groups))
	for gk := range m.groups {
		keys = append(keys, gk)
	}
	slices.SortFunc(keys, compareDisplay)
	out := make([]binding.Binding, 0, m.count)
	for _, gk := range keys {
		for _, pl := range m.groups[gk].ports {
			out = append(out, binding.Binding{Label: pl.label, Protocol: gk.proto, Prefix: gk.prefix(), Ports: pl.ports})
		}
	}
	return out, nil
}

// partsOf is how many parts work on n items is split into: one per CPU
// if there are enough for each to be worth a goroutine.
func partsOf(n int) int {
	if n < 2*minPart {
		return 1
	}
	return max(1, min(runtime.GOMAXPROCS(0), n/minPart))
}

// minPart is the fewest items (groups, index buckets) worked on apart
// from others.
const minPart = 4096

// inParts calls fn(p, lo, hi) for each of parts consecutive parts [lo, hi)
// of n items, side by side, and returns when every call has.
func inParts(n, parts int, fn func(p, lo, hi int)) {
	if parts <= 1 {
		fn(0, 0, n)
		return
	}
	var wg sync.WaitGroup
	for p := range parts {
		wg.Go(func() { fn(p, p*n/parts, (p+1)*n/parts) })
	}
	wg.Wait()
}

// compareDisplay orders groups as binding.Compare orders their bindings:
// by address, prefix length, then protocol. A group's bindings, sorted by
// port set, are then in binding.Compare's order too (no two share a port
// set), so a listing sorts groups rather than bindings: a third as many,
// and cheaper to compare.
func compareDisplay(a, b groupKey) int {
	return compareDisplayKeys(a.displayKey(), b.displayKey())
}

// displayKey is a group key as numbers in compareDisplay's order: the
// family, the address, the prefix length, the protocol.
type displayKey struct {
	hi, lo uint64 // the address
	tail   uint32 // is6, then prefix length, then protocol
}

func (gk groupKey) displayKey() displayKey {
	var is6 uint32
	if gk.is6 {
		is6 = 1
	}
	return displayKey{
		hi:   binary.BigEndian.Uint64(gk.addr[:8]),
		lo:   binary.BigEndian.Uint64(gk.addr[8:]),
		tail: is6<<24 | uint32(gk.bits)<<8 | uint32(gk.proto),
	}
}

func compareDisplayKeys(a, b displayKey) int {
	if c := cmp.Compare(a.tail>>24, b.tail>>24); c != 0 {
		return c
	}
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.tail, b.tail)
}

// read returns a current model under a shared lock, repairing the state
// under an exclusive one if needed. The caller holds d.mu.
func (d *Dispatcher) read() (*model, error) {
	unlock, err := d.lock(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	m, err := d.refresh(repairRefuse)
	unlock()
	if err != errNeedExclusive {
		return m, err
	}
	unlock, err = d.lock(unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return d.refresh(repairWrite)
}

// updates holds the next bindings of the groups an edit changes, each
// group once; an empty list removes the group. A list rather than a map:
// for a change of every group of a million bindings (a relabel), growing
// a map of them allocated 47 MB, where the list takes 19 MB, allocated
// once at its size.
type updates []groupUpdate

// groupUpdate is the next bindings of one group.
type groupUpdate struct {
	key   groupKey
	ports []portLabel
}

// nextPorts is what an edit that looks its groups up builds its updates
// in: the next bindings by group.
type nextPorts map[groupKey][]portLabel

// updates lists u.
func (u nextPorts) updates() updates {
	out := make(updates, 0, len(u))
	for gk, ps := range u {
		out = append(out, groupUpdate{gk, ps})
	}
	return out
}

// portsOf returns the bindings a group will have: the update's if the edit
// touched it already, else a copy of the current ones.
func (u nextPorts) portsOf(m *model, gk groupKey) []portLabel {
	if ps, ok := u[gk]; ok {
		return ps
	}
	if g := m.groups[gk]; g != nil {
		return slices.Clone(g.ports)
	}
	return nil
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
	err = d.changeBindings(func(m *model) (updates, error) {
		// Sized for a group each, as most large additions are.
		added = make([]binding.Binding, 0, len(bs))
		u := make(nextPorts, len(bs))
		find := portFinder[groupKey]{}
		for _, b := range bs {
			gk := keyOf(b.Protocol, b.Prefix)
			ps := u.portsOf(m, gk)
			if i := find.find(gk, ps, b.Ports); i >= 0 {
				if ps[i].label == b.Label {
					continue
				}
				return nil, fmt.Errorf("bind %s: %w: %s is bound to label %s; unbind it first", b, ErrConflict, b.Key(), ps[i].label)
			}
			u[gk] = append(ps, portLabel{b.Ports, b.Label})
			added = append(added, b)
		}
		return u.updates(), nil
	})
	if err != nil {
		return nil, err
	}
	return added, nil
}

// RemoveBindings removes bindings in one atomic change. Each must exist with
// the given label, or nothing changes and the error wraps ErrNotFound.
func (d *Dispatcher) RemoveBindings(bs ...binding.Binding) error {
	return d.changeBindings(func(m *model) (updates, error) {
		// The bindings each group loses, by their index in its list,
		// which stays as it is until all are found.
		gone := map[groupKey]map[int]bool{}
		find := portFinder[groupKey]{}
		for _, b := range bs {
			gk := keyOf(b.Protocol, b.Prefix)
			ps := m.groups[gk].portList()
			i := find.find(gk, ps, b.Ports)
			if i < 0 || gone[gk][i] {
				return nil, fmt.Errorf("unbind %s: %w: no such binding", b, ErrNotFound)
			}
			if ps[i].label != b.Label {
				return nil, fmt.Errorf("unbind %s: %w: %s is bound to label %s, not %s", b, ErrNotFound, b.Key(), ps[i].label, b.Label)
			}
			if gone[gk] == nil {
				gone[gk] = map[int]bool{}
			}
			gone[gk][i] = true
		}
		u := make(updates, 0, len(gone))
		for gk, idx := range gone {
			ps := m.groups[gk].ports
			left := make([]portLabel, 0, len(ps)-len(idx))
			for i, pl := range ps {
				if !idx[i] {
					left = append(left, pl)
				}
			}
			u = append(u, groupUpdate{gk, left})
		}
		return u, nil
	})
}

// ReplaceBindings makes the bindings equal to bs in one atomic change, and
// returns what was added and removed (a binding whose label changes is in
// both). With dryRun it only computes the difference and writes nothing,
// not even a repair of state left inconsistent by an interrupted change.
func (d *Dispatcher) ReplaceBindings(bs []binding.Binding, dryRun bool) (added, removed []binding.Binding, err error) {
	return d.Replace(bs, nil, dryRun)
}

// Replace makes the bindings equal to bs and the recorded settings equal to
// settings (nil: unchanged), in one atomic change, as ReplaceBindings does.
// A restarted process finds both of before or both of after (see
// Settings).
func (d *Dispatcher) Replace(bs []binding.Binding, settings []byte, dryRun bool) (added, removed []binding.Binding, err error) {
	diff, err := d.ReplaceSeq(len(bs), binding.List(bs).All, settings, dryRun)
	if err != nil {
		return nil, nil, err
	}
	na, nr := diff.Len()
	if na > 0 {
		added = make([]binding.Binding, 0, na)
		for b := range diff.Added {
			added = append(added, *b)
		}
	}
	if nr > 0 {
		removed = make([]binding.Binding, 0, nr)
		for b := range diff.Removed {
			removed = append(removed, *b)
		}
	}
	return added, removed, nil
}

// ReplaceSeq is Replace for the n bindings that all yields, and returns
// the difference as a Diff rather than as lists: at a million bindings
// neither the request nor the reply need then be held as a list of
// bindings (64 MB each). It calls all twice, and it must yield the same
// bindings both times; the *Binding it yields may be reused.
func (d *Dispatcher) ReplaceSeq(n int, all func(yield func(*binding.Binding) bool), settings []byte, dryRun bool) (*Diff, error) {
	// The next bindings by group: keys[i] has lists[i]. One map lookup a
	// binding, and a second for each new group; the first pass counts,
	// so that each group's list is allocated once, at its size.
	// Sized for two bindings a group, typical of large sets, so that
	// neither regrows more than once; or for as many groups as the set in
	// force if it has about as many (a change of its labels, say): at a
	// million bindings in 393,216 groups, the map of a hint of half a
	// million took 25 MiB, of as many as the groups 13 MiB.
	hint := n / 2
	if g := d.cachedGroups(); g >= n/8 {
		hint = min(hint, g)
	}
	pos := make(map[groupKey]int32, hint)
	keys := make([]groupKey, 0, hint)
	counts := make([]int32, 0, hint)
	gi := make([]int32, 0, n)
	var err error
	for b := range all {
		if err = b.Validate(); err != nil {
			break
		}
		gk := keyOf(b.Protocol, b.Prefix)
		i, ok := pos[gk]
		if !ok {
			i = int32(len(keys))
			pos[gk] = i
			keys = append(keys, gk)
			counts = append(counts, 0)
		}
		gi = append(gi, i)
		counts[i]++
	}
	if err != nil {
		return nil, err
	}
	lists := make([][]portLabel, len(keys))
	for i, n := range counts {
		lists[i] = make([]portLabel, 0, n)
	}
	counts = nil
	k, more := 0, false
	find := portFinder[int32]{}
	for b := range all {
		if k == len(gi) {
			more = true
			break
		}
		i := gi[k]
		k++
		ps := lists[i]
		if j := find.find(i, ps, b.Ports); j >= 0 {
			if ps[j].label != b.Label {
				err = fmt.Errorf("%w: %s is given to labels %s and %s", ErrConflict, b.Key(), ps[j].label, b.Label)
				break
			}
			continue
		}
		lists[i] = append(ps, portLabel{b.Ports, b.Label})
	}
	if err == nil && (more || k != len(gi)) {
		// all yielded another number of bindings than the first time.
		err = errors.New("replace: the bindings changed while they were read")
	}
	if err != nil {
		return nil, err
	}
	gi, all = nil, nil // read whole: the caller's bindings may go
	for _, ps := range lists {
		sortPorts(ps)
	}
	if len(keys) >= largeChange {
		// The caller's bindings (at a million, a request of 12 MB) and
		// the group of each binding (4 MB) are garbage now: a
		// collection lets the edit's updates reuse them. The daemon's
		// collector is off during a large apply, and a relabel of a
		// million bindings peaked here with them.
		runtime.GC()
	}
	// The groups that change, as the change leaves them; listed in
	// display order once the change is made, each with what it adds and
	// removes.
	var diff *Diff
	edit := func(m *model) (updates, error) {
		if pos == nil {
			return nil, errors.New("replace: the change was computed twice")
		}
		// The groups that change, a bit each, so that their list is
		// allocated once, at its size.
		changed := make([]uint64, (len(keys)+63)/64)
		nChanged := 0
		kept := 0 // groups of m that the new set has too
		for i, gk := range keys {
			var old []portLabel
			if g := m.groups[gk]; g != nil {
				old = g.ports
				kept++
			}
			if !slices.Equal(old, lists[i]) {
				changed[i/64] |= 1 << (i % 64)
				nChanged++
			}
		}
		u := make(updates, 0, nChanged+len(m.groups)-kept)
		for i, gk := range keys {
			if changed[i/64]&(1<<(i%64)) != 0 {
				u = append(u, groupUpdate{gk, lists[i]})
			}
		}
		if kept < len(m.groups) {
			for gk := range m.groups {
				if _, ok := pos[gk]; !ok {
					u = append(u, groupUpdate{gk, nil})
				}
			}
		}
		// u holds what the change needs; the grouping (tens of MiB at a
		// million bindings) is garbage from here on. edit runs once.
		pos, keys, lists = nil, nil, nil
		if dryRun {
			// Nothing is applied: what would change is what u says.
			changes := make([]groupChange, 0, len(u))
			for _, up := range u {
				c := groupChange{key: up.key, old: m.groups[up.key]}
				if len(up.ports) > 0 {
					sortPorts(up.ports)
					c.new = &group{ports: up.ports}
				}
				changes = append(changes, c)
			}
			diff = newDiff(changes)
		}
		return u, nil
	}
	if dryRun {
		err = d.view(func(m *model) error {
			_, err := edit(m)
			return err
		})
	} else {
		err = d.exclusive(func(m *model) error {
			var err error
			diff, err = d.apply(m, edit, settings)
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	if diff == nil {
		diff = newDiff(nil)
	}
	return diff, nil
}

// cachedGroups returns how many groups the model this process holds has; 0
// if it holds none.
func (d *Dispatcher) cachedGroups() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cache == nil {
		return 0
	}
	return len(d.cache.groups)
}

// Diff is what a change of bindings adds and removes, listed on demand in
// binding.Compare's order. It refers to groups of the model, whose port
// lists no change edits in place, so it stays valid after later changes.
type Diff struct {
	changes       []groupChange
	order         []int32 // changes' indices in display order
	nAdd, nRemove int
}

// newDiff puts changes in display order and counts what they add and
// remove. It only reads changes, which the rest of their commit may read
// meanwhile (see Dispatcher.exclusive).
func newDiff(changes []groupChange) *Diff {
	d := &Diff{changes: changes, order: displayOrder(changes)}
	for _, c := range changes {
		walkDiff(c.old.portList(), c.new.portList(), func(_ portLabel, add bool) {
			if add {
				d.nAdd++
			} else {
				d.nRemove++
			}
		})
	}
	return d
}

// displayOrder is the indices of changes in compareDisplay's order of
// their keys. It sorts the keys as numbers beside their indices: sorting
// the indices with compareDisplay, which reads each key through them,
// took a quarter of a second at a million bindings.
func displayOrder(changes []groupChange) []int32 {
	// A displayKey's fields and the index, without the padding of a
	// displayKey inside a struct: 24 bytes rather than 32, 9 MiB at a
	// million bindings.
	type sortKey struct {
		hi, lo uint64
		tail   uint32
		i      int32
	}
	ks := make([]sortKey, len(changes))
	for i, c := range changes {
		k := c.key.displayKey()
		ks[i] = sortKey{k.hi, k.lo, k.tail, int32(i)}
	}
	slices.SortFunc(ks, func(a, b sortKey) int {
		return compareDisplayKeys(displayKey{a.hi, a.lo, a.tail}, displayKey{b.hi, b.lo, b.tail})
	})
	order := make([]int32, len(ks))
	for i, k := range ks {
		order[i] = k.i
	}
	return order
}

// Len returns how many bindings d adds and removes.
func (d *Diff) Len() (added, removed int) { return d.nAdd, d.nRemove }

// Added yields the bindings d adds, in binding.Compare's order. The
// *Binding it yields is reused.
func (d *Diff) Added(yield func(*binding.Binding) bool) { d.each(true, yield) }

// Removed yields the bindings d removes, as Added does.
func (d *Diff) Removed(yield func(*binding.Binding) bool) { d.each(false, yield) }

func (d *Diff) each(add bool, yield func(*binding.Binding) bool) {
	var b binding.Binding
	for _, i := range d.order {
		c := &d.changes[i]
		stop := false
		b.Protocol, b.Prefix = c.key.proto, c.key.prefix()
		walkDiff(c.old.portList(), c.new.portList(), func(pl portLabel, a bool) {
			if a != add || stop {
				return
			}
			b.Label, b.Ports = pl.label, pl.ports
			stop = !yield(&b)
		})
		if stop {
			return
		}
	}
}

// portList is g's bindings; none for a nil group.
func (g *group) portList() []portLabel {
	if g == nil {
		return nil
	}
	return g.ports
}

// walkDiff calls fn, in port order, for each binding of nw that old does
// not hold (add) and each of old that nw does not (not add); both lists
// are sorted. A binding whose label changes is removed and added.
func walkDiff(old, nw []portLabel, fn func(pl portLabel, add bool)) {
	i, j := 0, 0
	for i < len(old) || j < len(nw) {
		switch {
		case j == len(nw) || (i < len(old) && comparePorts(old[i].ports, nw[j].ports) < 0):
			fn(old[i], false)
			i++
		case i == len(old) || comparePorts(old[i].ports, nw[j].ports) > 0:
			fn(nw[j], true)
			j++
		default:
			if old[i].label != nw[j].label {
				fn(old[i], false)
				fn(nw[j], true)
			}
			i++
			j++
		}
	}
}

// checkGroup refuses port sets of one (protocol, prefix) that overlap
// without nesting.
func checkGroup(gk groupKey, ports []portLabel) error {
	// Only two ranges can overlap partially: a single port lies inside or
	// outside any range, and every port holds every range. Most groups
	// have at most one range, and are done without a copy.
	ranges := 0
	for _, p := range ports {
		if p.ports.Lo != p.ports.Hi && !p.ports.IsAny() {
			ranges++
		}
	}
	if ranges < 2 {
		return nil
	}
	ps := slices.Clone(ports)
	slices.SortFunc(ps, func(a, b portLabel) int {
		if c := cmp.Compare(a.ports.Lo, b.ports.Lo); c != 0 {
			return c
		}
		return cmp.Compare(b.ports.Hi, a.ports.Hi)
	})
	// In laminar order every range either nests in an open one or starts
	// after it ends; a stack of open ranges finds any that do neither.
	var open []portLabel
	for _, p := range ps {
		for len(open) > 0 && open[len(open)-1].ports.Hi < p.ports.Lo {
			open = open[:len(open)-1]
		}
		if n := len(open); n > 0 && open[n-1].ports.Hi < p.ports.Hi {
			o := open[n-1]
			a := binding.Binding{Label: o.label, Protocol: gk.proto, Prefix: gk.prefix(), Ports: o.ports}
			b := binding.Binding{Label: p.label, Protocol: gk.proto, Prefix: gk.prefix(), Ports: p.ports}
			return fmt.Errorf("%w: %s and %s overlap partially, so which one wins would be ambiguous; make one range contain the other, or split them", ErrConflict, b, a)
		}
		open = append(open, p)
	}
	return nil
}

func (d *Dispatcher) changeBindings(edit func(m *model) (updates, error)) error {
	return d.change(edit, nil)
}

// change runs an edit of the binding set, and a change of the recorded
// settings (nil: none), under the exclusive lock and makes the result
// visible and recorded atomically. edit returns the next bindings of the
// groups it changes (nil: no change).
func (d *Dispatcher) change(edit func(m *model) (updates, error), settings []byte) error {
	return d.exclusive(func(m *model) error {
		_, err := d.apply(m, edit, settings)
		return err
	})
}

// SetSettings records settings, an opaque blob of the caller's, in one
// atomic change that leaves the bindings as they are.
func (d *Dispatcher) SetSettings(settings []byte) error {
	if settings == nil {
		settings = []byte{}
	}
	return d.change(func(*model) (updates, error) { return nil, nil }, settings)
}

// Settings returns the settings recorded with the bindings in force; ok is
// false if none were ever recorded (state of an older build).
func (d *Dispatcher) Settings() (settings []byte, ok bool, err error) {
	err = d.view(func(*model) error {
		c, err := d.readCommit()
		if err != nil {
			return err
		}
		settings, ok, err = d.readSettings(c, c.Gen)
		return err
	})
	return settings, ok, err
}

// apply carries out change under the lock, and returns what it changed of
// the bindings (nil if nothing). A large change returns at its commit
// point, in force, and leaves the rest of it to d.rest (see exclusive).
func (d *Dispatcher) apply(m *model, edit func(m *model) (updates, error), settings []byte) (*Diff, error) {
	u, err := edit(m)
	if err != nil || (len(u) == 0 && settings == nil) {
		return nil, err
	}
	if len(u) >= largeChange {
		// What the edit read a large change from (at a million
		// bindings, Replace's grouping: 50 MB) is garbage now: a
		// collection here lets the groups below reuse it. Without it,
		// a change of every group (a million bindings relabelled)
		// peaked 30 MiB higher (330 MiB, from 298), the collector
		// being off during a large apply.
		runtime.GC()
	}
	// The groups of u, each with its next bindings as a group, so that a
	// large change is checked and compiled in parts side by side: at a
	// million bindings the loops below took 0.3 s of one CPU while the
	// other had nothing to do.
	changes := make([]groupChange, 0, len(u))
	replaced := 0 // groups the change replaces or removes
	for _, up := range u {
		c := groupChange{key: up.key, old: m.groups[up.key]}
		if len(up.ports) > 0 {
			c.new = &group{ports: slices.Clip(up.ports)}
		}
		if c.old != nil {
			replaced++
		}
		changes = append(changes, c)
	}
	u = nil
	if len(changes) >= largeChange {
		// The edit's updates (19 MB) are garbage now too, and the
		// change allocates about as much again. A collection here lets
		// that reuse this memory rather than add to it, whatever the
		// caller's collector settings (the daemon turns it off during
		// a large apply).
		runtime.GC()
	}
	type checked struct {
		count  int
		labels []string
		err    error
	}
	res := make([]checked, partsOf(len(changes)))
	inParts(len(changes), len(res), func(p, lo, hi int) {
		r := &res[p]
		seen := map[string]bool{}
		for _, c := range changes[lo:hi] {
			ps := c.new.portList()
			sortPorts(ps)
			r.count += len(ps) - len(c.old.portList())
			if err := checkGroup(c.key, ps); err != nil {
				r.err = err
				return
			}
			for _, pl := range ps {
				if _, ok := m.labels[pl.label]; !ok && !seen[pl.label] {
					seen[pl.label] = true
					r.labels = append(r.labels, pl.label)
				}
			}
		}
	})
	count := m.count
	var newLabels []string
	seen := map[string]bool{}
	for _, r := range res {
		if r.err != nil {
			return nil, r.err
		}
		count += r.count
		for _, l := range r.labels {
			if !seen[l] {
				seen[l] = true
				newLabels = append(newLabels, l)
			}
		}
	}
	if count > maxBindings {
		return nil, fmt.Errorf("%w: %d bindings, at most %d", ErrCapacity, count, maxBindings)
	}
	if err := d.allocLabels(m, newLabels); err != nil {
		return nil, err
	}

	// m is d.cache, and may hold table slots taken below: drop it, and the
	// next operation rebuilds it from the maps.
	fail := func(err error) error {
		d.cache = nil
		return err
	}
	// Each group is compiled in its part (compileGroup only reads m);
	// table slots are then taken in one pass. A group whose bindings do
	// not change is left out.
	errs := make([]error, len(res))
	unchanged := make([]bool, len(changes))
	inParts(len(changes), len(res), func(p, lo, hi int) {
		for i := lo; i < hi; i++ {
			c := &changes[i]
			if slices.Equal(c.old.portList(), c.new.portList()) {
				unchanged[i] = true
				continue
			}
			if c.new == nil {
				continue
			}
			if err := m.compileGroup(c.new); err != nil {
				errs[p] = fmt.Errorf("%s %s: %w", c.key.proto, c.key.prefix(), err)
				return
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			return nil, fail(err)
		}
	}
	n := 0
	for i, c := range changes {
		if unchanged[i] {
			continue
		}
		if g := c.new; g != nil && g.c.useTable() {
			if c.old != nil && c.old.slot != 0 {
				g.slot = c.old.slot
			} else {
				s, err := m.allocSlot()
				if err != nil {
					return nil, fail(err)
				}
				g.slot = s
			}
		}
		changes[n] = c
		n++
	}
	clear(changes[n:])
	changes = changes[:n:n]
	// The diff is sorted into display order beside the commit, which
	// does not write what it reads (the changes and their port lists);
	// a large change's sort took a fifth of a second of the commit's
	// CPU before the reply.
	diffc := make(chan *Diff, 1)
	if len(changes) >= largeChange {
		go func() {
			diff := newDiff(changes)
			if replaced >= largeChange {
				// The sort's keys (9 MiB at a million bindings) are
				// garbage now, beside what the commit has left so
				// far, while the groups before and after the change
				// are held until its end. Collected here, beside the
				// commit, rather than after its commit point, they
				// no longer add to the peak of a change of every
				// group of a million bindings (a relabel).
				runtime.GC()
			}
			diffc <- diff
		}()
	} else {
		diffc <- newDiff(changes)
	}
	// The model takes the change while the kernel writes the record
	// (commit runs this beside that write): both take long at a million
	// bindings, and neither reads what the other writes.
	update := func() {
		grow := 0
		for _, c := range changes {
			if c.old == nil {
				grow++
			}
		}
		if grow > len(m.groups) {
			// Sized once rather than doubled again and again (at a
			// million bindings the growing map left 20 MB of garbage).
			groups := make(map[groupKey]*group, len(m.groups)+grow)
			maps.Copy(groups, m.groups)
			m.groups = groups
		}
		m.applyChanges(changes)
		// From here on the old groups are read for their bindings and
		// exact ports (the diff, the rest of the change), not for
		// their segments: at a million bindings relabelled, 7 MiB
		// held until the end of the change, the daemon's peak.
		for _, c := range changes {
			if c.old != nil {
				c.old.c.segs = nil
			}
		}
	}
	rest, err := d.commit(m, changes, &recordChange{changes: changes, ids: m.labels, settings: settings}, update)
	diff := <-diffc
	if err != nil {
		return nil, err
	}
	finish := func() error {
		if err := rest(); err != nil {
			return err
		}
		return unfinished(d.gcLabels(m))
	}
	if len(changes) >= largeChange {
		// The change is in force and recorded: the caller need not wait
		// for the old generations (a second at a million bindings).
		d.rest = finish
		return diff, nil
	}
	if err := finish(); err != nil {
		return nil, err
	}
	return diff, nil
}

// BindingCounts returns how many bindings each label has, without listing
// them.
func (d *Dispatcher) BindingCounts() (map[string]int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(m.protos))
	for label, pr := range m.protos {
		out[label] = pr[0] + pr[1]
	}
	return out, nil
}
