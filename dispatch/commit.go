package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// A change of bindings is made visible atomically with two generations of
// data-path entries. The program reads sy_config.gen once per lookup and only
// entries of that generation. A change is written to the inactive generation,
// the generation is flipped, and once no program can still be reading the old
// one (an RCU grace period), the same change is written to it. Lookups thus
// see the state before or after a change, never a mix.

// groupChange is one (protocol, prefix) whose entries change.
type groupChange struct {
	key      groupKey
	old, new *group // nil when absent before or after
}

func (g *group) val(gen uint32) dispatchSyPrefixVal {
	v := dispatchSyPrefixVal{AnyLabel: g.c.anyLabel}
	if g.c.ports != nil {
		v.Flags |= 1 // SY_PV_PORTS
	}
	if g.c.bounds {
		v.Flags |= 2 // SY_PV_BOUNDS
	}
	if g.c.useTable() {
		v.Table = gen*tablesPerGen + g.slot
	} else {
		v.Nseg = uint8(len(g.c.segs))
		for i, s := range g.c.segs {
			v.Segs[i] = dispatchSySeg{Lo: s.lo, Hi: s.hi, Label: s.label}
		}
	}
	return v
}

func (g *group) table() *dispatchSyTable {
	t := &dispatchSyTable{Nseg: uint32(len(g.c.segs))}
	for i, s := range g.c.segs {
		t.Segs[i] = dispatchSySeg{Lo: s.lo, Hi: s.hi, Label: s.label}
	}
	return t
}

// genWriter batches the writes of one generation.
type genWriter struct {
	prefixKeys []dispatchSyPrefixKey
	prefixVals []dispatchSyPrefixVal
	prefixDel  []dispatchSyPrefixKey
	portKeys   []dispatchSyPortKey
	portVals   []uint32
	portDel    []dispatchSyPortKey
	tableKeys  []uint32
	tableVals  []dispatchSyTable
}

// Bounds of one batch of a genWriter's write: a change of any size is
// written in batches of a few MiB (a million bindings' prefix entries
// alone took 30 MB as one batch).
const (
	batchEntries = 1 << 14 // prefix or port entries
	batchTables  = 256     // port tables, 2 KiB each
)

// reset empties w, keeping its arrays.
func (w *genWriter) reset() {
	w.prefixKeys, w.prefixVals, w.prefixDel = w.prefixKeys[:0], w.prefixVals[:0], w.prefixDel[:0]
	w.portKeys, w.portVals, w.portDel = w.portKeys[:0], w.portVals[:0], w.portDel[:0]
	w.tableKeys, w.tableVals = w.tableKeys[:0], w.tableVals[:0]
}

// full reports whether w holds a batch.
func (w *genWriter) full() bool {
	return len(w.prefixKeys)+len(w.prefixDel) >= batchEntries || len(w.portKeys)+len(w.portDel) >= batchEntries ||
		len(w.tableKeys) >= batchTables
}

// write writes changes to generation gen in bounded batches, every
// deletion before any put, so that the generation holds no more entries
// than flush allows.
func (w *genWriter) write(d *Dispatcher, gen uint32, changes []groupChange) error {
	if n := min(len(changes), batchEntries); cap(w.prefixKeys) < n {
		// A batch's prefix entries at their size, rather than grown to
		// it (3 MiB of garbage in a large change).
		w.prefixKeys = make([]dispatchSyPrefixKey, 0, n)
		w.prefixVals = make([]dispatchSyPrefixVal, 0, n)
	}
	w.reset()
	for _, part := range []func(gen uint32, c groupChange){w.deletions, w.puts} {
		for _, c := range changes {
			part(gen, c)
			if w.full() {
				if err := w.flush(d); err != nil {
					return err
				}
				w.reset()
			}
		}
		if err := w.flush(d); err != nil {
			return err
		}
		w.reset()
	}
	return nil
}

// deletions adds the deletions of one change.
func (w *genWriter) deletions(gen uint32, c groupChange) {
	mk := c.key.mapKey(gen)
	var oldPorts, newPorts map[uint16]uint32
	if c.old != nil {
		oldPorts = c.old.c.ports
	}
	if c.new == nil {
		w.prefixDel = append(w.prefixDel, mk)
	} else {
		newPorts = c.new.c.ports
	}
	for p := range oldPorts {
		if _, ok := newPorts[p]; !ok {
			w.portDel = append(w.portDel, dispatchSyPortKey{Prefix: mk, Port: p})
		}
	}
}

// puts adds the puts of one change.
func (w *genWriter) puts(gen uint32, c groupChange) {
	if c.new == nil {
		return
	}
	mk := c.key.mapKey(gen)
	var oldPorts map[uint16]uint32
	if c.old != nil {
		oldPorts = c.old.c.ports
	}
	if c.new.c.useTable() {
		w.tableKeys = append(w.tableKeys, gen*tablesPerGen+c.new.slot)
		w.tableVals = append(w.tableVals, *c.new.table())
	}
	w.prefixKeys = append(w.prefixKeys, mk)
	w.prefixVals = append(w.prefixVals, c.new.val(gen))
	for p, l := range c.new.c.ports {
		if ol, ok := oldPorts[p]; ok && ol == l {
			continue
		}
		w.portKeys = append(w.portKeys, dispatchSyPortKey{Prefix: mk, Port: p})
		w.portVals = append(w.portVals, l)
	}
}

// flush writes in an order that is safe even though nothing reads this
// generation: deletions first, so that the generation never holds more
// entries than the larger of the sets before and after the change (each
// map holds two generations: a set of half its capacity fits, and so does
// any change of it), then tables and ports before the prefix entries that
// refer to them.
func (w *genWriter) flush(d *Dispatcher) error {
	if err := batchDelete(d.objs.SyPrefixes, w.prefixDel); err != nil {
		return fmt.Errorf("delete prefixes: %w", err)
	}
	if err := batchDelete(d.objs.SyPorts, w.portDel); err != nil {
		return fmt.Errorf("delete ports: %w", err)
	}
	if err := batchPut(d.objs.SyTables, w.tableKeys, w.tableVals); err != nil {
		return fmt.Errorf("write port tables: %w", err)
	}
	if err := batchPut(d.objs.SyPorts, w.portKeys, w.portVals); err != nil {
		return fmt.Errorf("write ports: %w", err)
	}
	if err := batchPut(d.objs.SyPrefixes, w.prefixKeys, w.prefixVals); err != nil {
		return fmt.Errorf("write prefixes: %w", err)
	}
	return nil
}

func batchPut[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	for len(keys) > 0 {
		n := min(len(keys), 16384)
		if _, err := m.BatchUpdate(keys[:n], vals[:n], nil); err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("%w: map %s is full: %w", ErrCapacity, mapName(m), err)
			}
			return err
		}
		keys, vals = keys[n:], vals[n:]
	}
	return nil
}

func batchDelete[K any](m *ebpf.Map, keys []K) error {
	for len(keys) > 0 {
		n := min(len(keys), 16384)
		if _, err := m.BatchDelete(keys[:n], nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil {
		return info.Name
	}
	return "?"
}

// writeLists writes what a change needs beyond the groups in generation gen:
// the prefix length lists, filter words, index buckets and the port and
// address maps of the lists it touches.
// bvals holds the values of buckets, the same in either generation; nil:
// they are computed from m a part at a time (see writeBuckets).
func (d *Dispatcher) writeLists(m *model, gen uint32, lists []int, words, buckets []uint32, bvals []dispatchSyIxBucket) error {
	keys := make([]uint32, 0, len(lists))
	vals := make([]dispatchSyPlenList, 0, len(lists))
	for _, li := range lists {
		keys = append(keys, gen*4+uint32(li))
		vals = append(vals, m.plenList(li))
	}
	// Filter words are written whole, bits set and cleared at once, then
	// the lists. No lookup reads gen meanwhile (see writeDataGen), so
	// the order is not seen by the program.
	fkeys := make([]uint32, 0, len(words))
	fvals := make([]uint64, 0, len(words))
	for _, w := range words {
		fkeys = append(fkeys, gen*filterWords+w)
		fvals = append(fvals, m.filterWord(w))
	}
	if err := batchPut(d.objs.SyFilter, fkeys, fvals); err != nil {
		return fmt.Errorf("write filter: %w", err)
	}
	if err := d.writeBuckets(m, gen, buckets, bvals); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	if err := d.writeWords(m, gen != m.gen, lists); err != nil {
		return err
	}
	if err := batchPut(d.objs.SyPlens, keys, vals); err != nil {
		return fmt.Errorf("write prefix lengths: %w", err)
	}
	if err := d.writeSmall(m, gen, lists); err != nil {
		return fmt.Errorf("write small sets: %w", err)
	}
	return nil
}

// writeEither writes the words of lists in mp, sy_noports, which holds for
// either generation the program may read (words gives a
// list's words after the change). Before the flip (while the program may
// read the generation before the change) a bit stays set only if it is set
// now and the change leaves it set; after it, the words say what the
// change leaves.
func (d *Dispatcher) writeEither(mp *ebpf.Map, beforeFlip bool, lists []int, words func(li int) []uint64) error {
	if len(lists) == 0 {
		return nil
	}
	// An array map holds every key, and a key it did not return reads
	// as 0 here, which only clears bits: the safe side.
	var now map[uint32]uint64
	if beforeFlip {
		var err error
		if now, err = readAll[uint32, uint64](mp); err != nil {
			return err
		}
	}
	n := int(mp.MaxEntries()) / 4
	keys := make([]uint32, 0, len(lists)*n)
	vals := make([]uint64, 0, len(lists)*n)
	for _, li := range lists {
		base := uint32(li * n)
		for i, w := range words(li) {
			if now != nil {
				w &= now[base+uint32(i)]
			}
			keys = append(keys, base+uint32(i))
			vals = append(vals, w)
		}
	}
	return batchPut(mp, keys, vals)
}

// clearWords clears every word of sy_noports, sy_blocks and sy_noaddr
// (which only older builds' programs read): a clear bit says nothing, so
// the program then looks every address and port up.
func (d *Dispatcher) clearWords() error {
	for _, mp := range []*ebpf.Map{d.objs.SyNoports, d.objs.SyNoaddr} {
		n := int(mp.MaxEntries())
		keys := make([]uint32, n)
		for i := range keys {
			keys[i] = uint32(i)
		}
		if err := batchPut(mp, keys, make([]uint64, n)); err != nil {
			return fmt.Errorf("clear %s: %w", mapName(mp), err)
		}
	}
	mem, err := d.blockMemory()
	if err != nil {
		return err
	}
	if _, err := mem.WriteAt(make([]byte, mem.Size()), 0); err != nil {
		return fmt.Errorf("clear sy_blocks: %w", err)
	}
	return nil
}

// blockMemory is sy_blocks mapped into memory, where the words of a list
// are read and written without a system call each.
func (d *Dispatcher) blockMemory() (*ebpf.Memory, error) {
	mem, err := d.objs.SyBlocks.Memory()
	if err != nil {
		return nil, fmt.Errorf("map sy_blocks: %w", err)
	}
	return mem, nil
}

// writeWords writes the words of lists in sy_noports and sy_blocks from m,
// as writeEither says.
func (d *Dispatcher) writeWords(m *model, beforeFlip bool, lists []int) error {
	if err := d.writeEither(d.objs.SyNoports, beforeFlip, lists, func(li int) []uint64 { return m.use[li].noport() }); err != nil {
		return fmt.Errorf("write port map: %w", err)
	}
	if err := d.writeBlocks(m, beforeFlip, lists); err != nil {
		return fmt.Errorf("write block map: %w", err)
	}
	return nil
}

// writeBlocks writes the words of lists in sy_blocks as writeEither says,
// each word that changes with one aligned 8-byte store, so the program
// reads a word either before or after it.
func (d *Dispatcher) writeBlocks(m *model, beforeFlip bool, lists []int) error {
	if len(lists) == 0 {
		return nil
	}
	mem, err := d.blockMemory()
	if err != nil {
		return err
	}
	now := make([]byte, 8*blockWords)
	var word [8]byte
	for _, li := range lists {
		base := int64(li) * int64(len(now))
		if _, err := mem.ReadAt(now, base); err != nil {
			return err
		}
		for i, w := range m.use[li].blocks() {
			cur := binary.NativeEndian.Uint64(now[8*i:])
			if beforeFlip {
				w &= cur
			}
			if w == cur {
				continue
			}
			binary.NativeEndian.PutUint64(word[:], w)
			if _, err := mem.WriteAt(word[:], base+int64(8*i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Dispatcher) writeConfig(mut func(*configVal)) error {
	var cfg configVal
	if err := d.cfg.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	mut(&cfg)
	if err := d.cfg.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// waitReaders returns once every program run that might have read the
// previous generation has finished: sk_lookup programs run inside RCU
// read-side sections, and membarrier(MEMBARRIER_CMD_GLOBAL) waits for an RCU
// grace period.
func (d *Dispatcher) waitReaders() {
	const membarrierCmdGlobal = 1
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		// nohz_full kernels refuse it; a grace period is far shorter.
		d.log.Debug("membarrier unavailable, waiting instead", "err", errno)
		time.Sleep(50 * time.Millisecond)
	}
}

// commit makes a change of groups visible atomically and records it, with
// the settings of rc if any, in the generation of the record not in force,
// which it then puts in force with one store (see doc.go for the order and
// what a crash at each point leaves). update brings m to the state after
// the change; commit runs it while the kernel writes that generation, and
// before anything else reads m. On an error m may or may not have been
// updated, and is dropped.
//
// commit returns at the commit point, with the change in force, and
// returns the rest of the change, step 4 of doc.go: the caller runs it,
// still holding the locks, before any other operation. Its error is
// ErrUnfinished (or a simulated crash): the change stays in force.
//
// The record and the data path are written side by side, twice: the
// record's next generation beside the groups of the data path's next
// generation (read by nothing until the flip) and beside the model's
// update and then the rest of that data generation, and in rest the
// record's old generation beside the data path's old one. The writes of
// a step are joined before the next step, so a write that fails or
// crashes has the others of its step finished or stopped by the time
// commit (or rest) returns.
func (d *Dispatcher) commit(m *model, changes []groupChange, rc *recordChange, update func()) (rest func() error, err error) {
	defer func() {
		if err != nil {
			// The cache no longer matches the maps. The next operation
			// rebuilds it and, seeing the dirty mark and the commit
			// state, recovers the set in force from the record.
			d.cache = nil
		}
	}()
	c, err := d.readCommit()
	if err != nil {
		return nil, err
	}
	if c.State == commitSync {
		// The other generation holds what an interrupted change or an
		// older build left: make it whole first.
		if c, err = d.syncRecord(m, c); err != nil {
			return nil, err
		}
	}
	if c.State != commitIdle {
		return nil, fmt.Errorf("state %s: %w: the record is mid-change (state %d)", d.dir, errBadRecord, c.State)
	}
	c.State = commitBegun
	if err := d.writeCommit(c); err != nil {
		return nil, err
	}
	if err := d.crashPoint("begun"); err != nil {
		return nil, err
	}
	if err := d.writeConfig(func(c *configVal) { c.Dirty = 1; c.Serial++ }); err != nil {
		return nil, err
	}
	if err := d.crashPoint("dirty"); err != nil {
		return nil, err
	}
	old, next := c.Gen, c.Gen^1
	// Before the commit point: the record's next generation, beside the
	// groups of the data path's next generation, beside the model's update
	// and then the rest of the data path's next generation, which reads
	// the model after the change. A failure of any leaves {old, begun},
	// the old set in force; the next operation rewrites the data path from
	// it (see readModel).
	dataNext := m.gen ^ 1
	dc := &dataChange{changes: changes}
	joinRecord := d.goWriteRecord(next, rc, "record-next")
	groups := make(chan error, 1)
	go func() { groups <- d.writeDataGroups(dc, dataNext) }()
	update()
	dc.lists, dc.words, dc.buckets = touched(m, changes)
	dc.bucketValues(m)
	derr := d.writeDataLists(m, dc, dataNext)
	if derr == nil {
		derr = d.crashPoint("data-next-written")
	}
	gerr := <-groups
	n, rerr := joinRecord()
	if err := errors.Join(rerr, gerr, derr); err != nil {
		return nil, err
	}
	if err := d.crashPoint("record-next"); err != nil {
		return nil, err
	}
	// The commit point.
	c.Gen, c.State = next, commitFlipped
	if rc.settings != nil {
		c.Settings[next] = n
	}
	if err := d.writeCommit(c); err != nil {
		return nil, err
	}
	if err := d.crashPoint("flipped"); err != nil {
		return nil, err
	}
	if err := d.flipData(m); err != nil {
		// The program still reads the old data generation, and the
		// record's old generation is still whole: put it back in force.
		// The next operation makes the data path equal to it again.
		c.Gen, c.State = old, commitBegun
		if werr := d.writeCommit(c); werr != nil {
			return nil, errors.Join(err, werr)
		}
		return nil, err
	}
	if err := d.crashPoint("data-next"); err != nil {
		return nil, err
	}
	return func() (err error) {
		defer func() {
			if err != nil {
				d.cache = nil
			}
		}()
		d.waitReaders()
		// The record's old generation beside the data path's old one.
		// The new set is in force from here on; a failure leaves it so,
		// and the next operation finishes the change as after a crash.
		joinRecord := d.goWriteRecord(old, rc, "record-old")
		derr := d.writeDataGen(m, dc, m.gen)
		if derr == nil {
			derr = d.crashPoint("data-path")
		}
		n, rerr := joinRecord()
		if err := errors.Join(derr, rerr); err != nil {
			return unfinished(err)
		}
		m.gen = next
		for _, c := range changes {
			if c.old != nil && c.old.slot != 0 && (c.new == nil || c.new.slot != c.old.slot) {
				m.slots[c.old.slot] = false
			}
		}
		if err := d.crashPoint("record-old"); err != nil {
			return err
		}
		if rc.settings != nil {
			c.Settings[old] = n
		}
		c.State = commitIdle
		if err := d.writeCommit(c); err != nil {
			return unfinished(err)
		}
		if err := d.crashPoint("idle"); err != nil {
			return err
		}
		return unfinished(d.writeConfig(func(c *configVal) { c.Dirty = 0; m.serial = c.Serial }))
	}, nil
}

// unfinished marks err, from a step of a change after the program reads its
// generation, with ErrUnfinished: the change is in force, for traffic and
// for a restarted process, whatever failed after. A simulated crash stays
// as it is, as a real one would.
func unfinished(err error) error {
	if err == nil || errors.Is(err, errCrashPoint) {
		return err
	}
	return fmt.Errorf("%w (the next change finishes it): %w", ErrUnfinished, err)
}

// goWriteRecord starts writeRecord(gen, rc, point) and returns a function
// that waits for it and returns what it returned. Every path of the caller
// calls that function before it returns, so no write outlives the change.
func (d *Dispatcher) goWriteRecord(gen uint32, rc *recordChange, point string) func() (uint32, error) {
	type written struct {
		n   uint32
		err error
	}
	done := make(chan written, 1)
	go func() {
		n, err := d.writeRecord(gen, rc, point)
		done <- written{n, err}
	}()
	return func() (uint32, error) {
		w := <-done
		return w.n, w.err
	}
}

// dataChange is a change of groups as the data path's two generations are
// written with it: the groups, the prefix length lists, filter words and
// index buckets it touches, and the buckets' values, which read the model
// after the change.
type dataChange struct {
	changes []groupChange
	lists   []int
	words   []uint32
	buckets []uint32
	bvals   []dispatchSyIxBucket
	w       genWriter // serves both generations
}

// touched lists the prefix length lists, filter words and index buckets
// that changes touch; m must be the model after the change.
func touched(m *model, changes []groupChange) (lists []int, words, buckets []uint32) {
	// Bit sets, not maps: a change of a million bindings names some
	// 300,000 filter words.
	var listSet [4]bool
	wordSet := make([]uint64, filterWords/64)
	for _, c := range changes {
		listSet[c.key.listIndex()] = true
		w := c.key.bit() / 64
		wordSet[w/64] |= 1 << (w % 64)
	}
	for li, ok := range listSet {
		if ok {
			lists = append(lists, li)
		}
	}
	n := 0
	for _, set := range wordSet {
		n += bits.OnesCount64(set)
	}
	words = make([]uint32, 0, n)
	for i, set := range wordSet {
		for ; set != 0; set &= set - 1 {
			words = append(words, uint32(i*64+bits.TrailingZeros64(set)))
		}
	}
	if len(changes) >= ixBuckets {
		// Each change names two buckets: all but some 2% of them are
		// dirty, and finding which took a quarter of a second at a
		// million bindings. Every bucket is written, from m.
		return lists, words, allBuckets()
	}
	return lists, words, m.indexDirty(changes)
}

// newDataChange prepares the writes of changes and of lists, words and
// buckets; m must be the model after the change.
func newDataChange(m *model, changes []groupChange, lists []int, words, buckets []uint32) *dataChange {
	dc := &dataChange{changes: changes, lists: lists, words: words, buckets: buckets}
	dc.bucketValues(m)
	return dc
}

// bucketValues computes the values of dc's buckets from m, the model after
// the change. A bucket's value reads every group in it: it is computed
// once for both generations, unless there are more than heldBuckets of
// them; then writeBuckets computes them for each generation as it writes
// them, a part at a time.
func (dc *dataChange) bucketValues(m *model) {
	if len(dc.buckets) > heldBuckets {
		return
	}
	dc.bvals = make([]dispatchSyIxBucket, len(dc.buckets))
	indexBuckets(m, dc.buckets, dc.bvals)
}

// heldBuckets is the most index bucket values a change holds for both of
// its generations (2 MiB). A change of a million bindings names every
// bucket: held, their values took 24 MiB from before the commit point to
// the end of the change, at the daemon's peak; computed again for the
// second generation, they cost their CPU time again (see indexBuckets),
// after the reply.
const heldBuckets = 4 * minPart

// indexBuckets sets vals[i] to the value of buckets[i] in m. Many buckets
// are computed in parts side by side: at a million bindings they take a
// fifth of a second of the caller's, which the record's goroutine may
// still share. indexBucket only reads m.
func indexBuckets(m *model, buckets []uint32, vals []dispatchSyIxBucket) {
	inParts(len(buckets), partsOf(len(buckets)), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			vals[i] = m.indexBucket(buckets[i])
		}
	})
}

// writeBuckets writes buckets of generation gen: with their values vals,
// or if vals is nil, computed from m heldBuckets at a time.
func (d *Dispatcher) writeBuckets(m *model, gen uint32, buckets []uint32, vals []dispatchSyIxBucket) error {
	compute := vals == nil
	part := len(buckets)
	if compute {
		part = min(part, heldBuckets)
		vals = make([]dispatchSyIxBucket, part)
	}
	keys := make([]uint32, part)
	for lo := 0; lo < len(buckets); lo += part {
		bs := buckets[lo:min(lo+part, len(buckets))]
		for i, b := range bs {
			keys[i] = gen*ixBuckets + b
		}
		if compute {
			indexBuckets(m, bs, vals[:len(bs)])
		}
		if err := batchPut(d.objs.SyIndex, keys[:len(bs)], vals[:len(bs)]); err != nil {
			return err
		}
	}
	return nil
}

// writeDataGen writes dc to the data path's generation gen, which no
// program reads meanwhile: before the flip the one m.gen does not name,
// after it (and waitReaders) the one it names until the change ends.
func (d *Dispatcher) writeDataGen(m *model, dc *dataChange, gen uint32) error {
	if err := d.writeDataGroups(dc, gen); err != nil {
		return err
	}
	return d.writeDataLists(m, dc, gen)
}

// writeDataGroups writes the groups of dc to the data path's generation
// gen; they read only dc.
func (d *Dispatcher) writeDataGroups(dc *dataChange, gen uint32) error {
	if err := dc.w.write(d, gen, dc.changes); err != nil {
		return err
	}
	return d.crashPoint("data-groups")
}

// writeDataLists writes what dc needs beyond its groups to the data path's
// generation gen, from m, the model after the change.
func (d *Dispatcher) writeDataLists(m *model, dc *dataChange, gen uint32) error {
	return d.writeLists(m, gen, dc.lists, dc.words, dc.buckets, dc.bvals)
}

// flipData switches the program to the data generation m.gen does not
// name, which holds the change. m.gen names the old one until both are
// written.
func (d *Dispatcher) flipData(m *model) error {
	next := m.gen ^ 1
	return d.writeConfig(func(c *configVal) { c.Gen = next })
}

// writeGenerations writes changes to both generations of the data path
// (see eachGeneration).
func (d *Dispatcher) writeGenerations(m *model, changes []groupChange, lists []int, words, buckets []uint32) error {
	dc := newDataChange(m, changes, lists, words, buckets)
	return d.eachGeneration(m, func(gen uint32) error { return d.writeDataGen(m, dc, gen) })
}

// eachGeneration runs write on the data generation no program reads,
// switches the program to it, waits until no program reads the other, runs
// write on that one too, and then names the first in m.
func (d *Dispatcher) eachGeneration(m *model, write func(gen uint32) error) error {
	if err := write(m.gen ^ 1); err != nil {
		return err
	}
	if err := d.flipData(m); err != nil {
		return err
	}
	if err := d.crashPoint("data-next"); err != nil {
		return err
	}
	d.waitReaders()
	if err := write(m.gen); err != nil {
		return err
	}
	m.gen ^= 1
	return nil
}

// readAll reads a hash map whole, in batches.
func readAll[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	const batch = 4096
	keys := make([]K, batch)
	vals := make([]V, batch)
	out := make(map[K]V)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
