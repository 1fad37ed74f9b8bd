package dispatch

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Recovery writes the data path from the model of the set in force, one
// generation at a time, and holds no more of it than a batch beside the
// model: each generation's entries are read from the kernel in batches and
// compared with the model as they come, entries the model does not have
// are deleted and those that differ put, and only if fewer entries matched
// than the model has are the model's entries put again, in batches. At a
// million bindings reading both generations of sy_prefixes into maps, as
// recovery did, took over 400 MiB of the daemon's 256 MiB.

// recoverBatch is how many entries recovery reads, or writes, at once.
const recoverBatch = batchEntries

// mapBatch collects deletions and puts of one hash map and writes them,
// the deletions first, whenever recoverBatch of them are waiting and at
// flush.
type mapBatch[K, V any] struct {
	m    *ebpf.Map
	del  []K
	keys []K
	vals []V
}

func (b *mapBatch[K, V]) delete(k K) error {
	b.del = append(b.del, k)
	return b.full()
}

func (b *mapBatch[K, V]) put(k K, v V) error {
	b.keys, b.vals = append(b.keys, k), append(b.vals, v)
	return b.full()
}

func (b *mapBatch[K, V]) full() error {
	if len(b.del)+len(b.keys) < recoverBatch {
		return nil
	}
	return b.flush()
}

func (b *mapBatch[K, V]) flush() error {
	if err := batchDelete(b.m, b.del); err != nil {
		return err
	}
	if err := batchPut(b.m, b.keys, b.vals); err != nil {
		return err
	}
	b.del, b.keys, b.vals = b.del[:0], b.keys[:0], b.vals[:0]
	return nil
}

// rewrite makes both generations of the data path equal to m, deleting
// whatever else they hold: first the one the program does not read, then,
// once the program reads that one and no longer the other, the other. It
// repairs state left by an interrupted change; a crash during it leaves
// the program reading a whole generation of m or of the set it read
// before, and the dirty mark set, so the next Open runs it again.
func (d *Dispatcher) rewrite(m *model) error {
	for i := range m.slots {
		m.slots[i] = i == 0
	}
	for _, g := range m.groups {
		g.slot = 0
		if g.c.useTable() {
			s, err := m.allocSlot()
			if err != nil {
				return err
			}
			g.slot = s
		}
	}
	if err := d.eachGeneration(m, func(gen uint32) error { return d.rewriteGen(m, gen) }); err != nil {
		return err
	}
	m.indexOK = true
	return d.writeConfig(func(c *configVal) { c.Dirty = 0; c.Serial++; m.serial = c.Serial })
}

// rewriteGen makes the data path's generation gen, which no program reads
// meanwhile, equal to m: exact ports, port tables and prefix entries, then
// what is derived from the groups (prefix length lists, filter words,
// index buckets, and the address and port words as writeWords says).
func (d *Dispatcher) rewriteGen(m *model, gen uint32) error {
	if err := d.rewritePorts(m, gen); err != nil {
		return fmt.Errorf("rewrite ports: %w", err)
	}
	if err := d.crashPoint("recover-ports"); err != nil {
		return err
	}
	if err := d.rewriteTables(m, gen); err != nil {
		return fmt.Errorf("rewrite port tables: %w", err)
	}
	if err := d.rewritePrefixes(m, gen); err != nil {
		return fmt.Errorf("rewrite prefixes: %w", err)
	}
	if err := d.crashPoint("recover-prefixes"); err != nil {
		return err
	}
	if err := d.rewriteIndex(m, gen); err != nil {
		return err
	}
	lists, words, _ := allDerived()
	return d.writeLists(m, gen, lists, words, nil, nil)
}

// rewritePrefixes makes generation gen of sy_prefixes equal to m.
func (d *Dispatcher) rewritePrefixes(m *model, gen uint32) error {
	var match int
	b := mapBatch[dispatchSyPrefixKey, dispatchSyPrefixVal]{m: d.objs.SyPrefixes}
	// An entry deleted or put while the map is read is in a bucket the
	// read has passed (a put here replaces an entry, in its bucket), so
	// the read neither misses nor repeats an entry for it.
	err := eachEntry(d.objs.SyPrefixes, func(k *dispatchSyPrefixKey, v *dispatchSyPrefixVal) error {
		if uint32(k.Gen) != gen {
			return nil
		}
		gk := groupKeyOf(k)
		g := m.groups[gk]
		switch {
		case g == nil || gk.mapKey(gen) != *k:
			return b.delete(*k)
		case g.val(gen) != *v:
			match++
			return b.put(*k, g.val(gen))
		}
		match++
		return nil
	})
	if err == nil {
		err = b.flush()
	}
	if err != nil || match == len(m.groups) {
		return err
	}
	// Some of m's entries are missing: put them all, in batches. Every
	// key that is not m's is gone, so the generation holds no more
	// entries than m has.
	for gk, g := range m.groups {
		if err := b.put(gk.mapKey(gen), g.val(gen)); err != nil {
			return err
		}
	}
	return b.flush()
}

// rewritePorts makes generation gen of sy_ports equal to m.
func (d *Dispatcher) rewritePorts(m *model, gen uint32) error {
	want := 0
	for _, g := range m.groups {
		want += len(g.c.ports)
	}
	var match int
	b := mapBatch[dispatchSyPortKey, uint32]{m: d.objs.SyPorts}
	err := eachEntry(d.objs.SyPorts, func(k *dispatchSyPortKey, v *uint32) error {
		if uint32(k.Prefix.Gen) != gen {
			return nil
		}
		gk := groupKeyOf(&k.Prefix)
		g := m.groups[gk]
		l, ok := uint32(0), false
		if g != nil && gk.mapKey(gen) == k.Prefix && k.Pad == 0 {
			l, ok = g.c.ports[k.Port]
		}
		switch {
		case !ok:
			return b.delete(*k)
		case l != *v:
			match++
			return b.put(*k, l)
		}
		match++
		return nil
	})
	if err == nil {
		err = b.flush()
	}
	if err != nil || match == want {
		return err
	}
	for gk, g := range m.groups {
		if g.c.ports == nil {
			continue
		}
		mk := gk.mapKey(gen)
		for p, l := range g.c.ports {
			if err := b.put(dispatchSyPortKey{Prefix: mk, Port: p}, l); err != nil {
				return err
			}
		}
	}
	return b.flush()
}

// rewriteTables writes the port table of each group of m that has one to
// generation gen. Tables no group names are left as they are: nothing
// reads them.
func (d *Dispatcher) rewriteTables(m *model, gen uint32) error {
	var keys []uint32
	var vals []dispatchSyTable
	for _, g := range m.groups {
		if !g.c.useTable() {
			continue
		}
		keys, vals = append(keys, gen*tablesPerGen+g.slot), append(vals, *g.table())
		if len(keys) >= batchTables {
			if err := batchPut(d.objs.SyTables, keys, vals); err != nil {
				return err
			}
			keys, vals = keys[:0], vals[:0]
		}
	}
	return batchPut(d.objs.SyTables, keys, vals)
}

// rewriteIndex writes every index bucket of generation gen from m, a part
// at a time (see writeBuckets).
func (d *Dispatcher) rewriteIndex(m *model, gen uint32) error {
	if err := d.writeBuckets(m, gen, allBuckets(), nil); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

// groupKeyOf is the group whose entry in sy_prefixes has key k, of either
// generation. A key no group has (a protocol or family no build writes)
// gives a groupKey whose mapKey is not k.
func groupKeyOf(k *dispatchSyPrefixKey) groupKey {
	gk := groupKey{proto: binding.TCP, bits: k.Plen, is6: k.Family != 0}
	if k.Proto == 1 {
		gk.proto = binding.UDP
	}
	if gk.is6 {
		for i, w := range k.Addr {
			putWord(gk.addr[4*i:], w)
		}
	} else {
		gk.addr[10], gk.addr[11] = 0xff, 0xff
		putWord(gk.addr[12:], k.Addr[0])
	}
	return gk
}

// eachEntry calls fn for each entry of a hash map, reading it in batches.
func eachEntry[K, V any](m *ebpf.Map, fn func(k *K, v *V) error) error {
	const batch = 4096
	keys := make([]K, batch)
	vals := make([]V, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if err := fn(&keys[i], &vals[i]); err != nil {
				return err
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", mapName(m), err)
		}
	}
}

// syncRecord makes the record's generation not in force equal to the one
// in force, which m holds, and marks the record idle. It finishes or undoes
// an interrupted change (see doc.go). Like rewrite, it reads the stale
// generation in batches and compares it with m: keys m does not hold are
// deleted and labels that differ put (then the crash point "sync-deleted"),
// and, if fewer bindings matched than m has, m's bindings are put again in
// batches, then the settings of the generation in force.
func (d *Dispatcher) syncRecord(m *model, c commitVal) (commitVal, error) {
	to := d.bindingsOf(c.Gen ^ 1)
	var match int
	b := mapBatch[dispatchSyBindingKey, uint32]{m: to}
	err := eachEntry(to, func(k *dispatchSyBindingKey, v *uint32) error {
		gk := groupKeyOf(&dispatchSyPrefixKey{Proto: k.Proto, Family: k.Family, Plen: k.Plen, Addr: k.Addr})
		p := binding.Ports{Lo: k.Lo, Hi: k.Hi}
		id, ok := uint32(0), false
		if g := m.groups[gk]; g != nil && gk.bindingKey(p) == *k {
			if i, found := slices.BinarySearchFunc(g.ports, p, func(pl portLabel, p binding.Ports) int { return comparePorts(pl.ports, p) }); found {
				id, ok = m.labels[g.ports[i].label]
			}
		}
		switch {
		case !ok:
			return b.delete(*k)
		case id != *v:
			match++
			return b.put(*k, id)
		}
		match++
		return nil
	})
	if err == nil {
		err = b.flush()
	}
	if err != nil {
		return c, fmt.Errorf("record bindings: %w", err)
	}
	if err := d.crashPoint("sync-deleted"); err != nil {
		return c, err
	}
	if match != m.count {
		for gk, g := range m.groups {
			for _, pl := range g.ports {
				if err := b.put(gk.bindingKey(pl.ports), m.labels[pl.label]); err != nil {
					return c, fmt.Errorf("record bindings: %w", err)
				}
			}
		}
		if err := b.flush(); err != nil {
			return c, fmt.Errorf("record bindings: %w", err)
		}
	}
	blob, ok, err := d.readSettings(c, c.Gen)
	if err != nil {
		return c, err
	}
	if ok {
		if _, err := d.writeSettings(c.Gen^1, blob); err != nil {
			return c, err
		}
	}
	c.Settings[c.Gen^1] = c.Settings[c.Gen]
	c.State = commitIdle
	return c, d.writeCommit(c)
}
