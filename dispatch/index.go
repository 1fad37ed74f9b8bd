package dispatch

import (
	"cmp"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// The prefix index (sy_index, see bpf/dispatch.h) lets the program resolve
// most prefixes from one array element instead of a filter word and a hash
// lookup. Each prefix has a first and a second bucket. What a bucket holds
// is a function of the set of prefixes alone, not of the order they came
// in, so a model rebuilt from the records (Open) agrees with the buckets an
// earlier process wrote: a bucket takes the first ixWays indexable prefixes
// of its own (whose first bucket it is) in key order, then, while slots are
// left, the prefixes whose second bucket it is and that did not fit in
// their first, in key order. A bucket is written whole.

const (
	ixBuckets = 3 << 16                        // SY_IX_BUCKETS
	ixWays    = len(dispatchSyIxBucket{}.Kind) // SY_IX_WAYS
	ixbValid  = 1                              // SY_IXB_VALID
	ixbThis   = 4                              // SY_IXB_THIS
	// ixbThisBuild marks a bucket this build wrote.
	ixbThisBuild = ixbValid | ixbThis
	ixbOverflow  = 2 // SY_IXB_OVERFLOW
	ixbSecond    = 8 // SY_IXB_SECOND
)

// A slot holds label ids in 16 bits: this fails to compile if they grow.
const _ = uint16(maxLabels - 1)

// ixEntry is a prefix in the list of its first bucket, with its group:
// a bucket's value reads the groups in it, which took a lookup in
// m.groups each, most of the time of bucketValues.
//
// The pointer comes first in both entries: after a groupKey (19 bytes)
// it was padded, and an entry took 40 bytes rather than 32 (the index
// of a million bindings, 5 MiB more).
type ixEntry struct {
	g  *group
	gk groupKey
	ok bool // it can take a slot
}

// ix2Entry is a prefix that can take a slot in the list of its second
// bucket, with its group.
type ix2Entry struct {
	g     *group
	first uint32 // its first bucket
	gk    groupKey
}

func (k groupKey) hash() uint64 {
	mk := k.mapKey(0)
	return ixHash(&mk)
}

// ixFirst and ixSecond are the Go twins of ix_first and ix_second in
// bpf/lookup.h.
func ixFirst(h uint64) uint32 { return uint32(uint64(hashBit(h)) * ixBuckets >> filterLog2) }
func ixSecond(h uint64) uint32 {
	return uint32(uint64(hashBit(h*0x94d049bb133111eb)) * ixBuckets >> filterLog2)
}

// bucket is the first index bucket of the key, within one generation.
func (k groupKey) bucket() uint32 { return ixFirst(k.hash()) }

// second is the second index bucket of the key.
func (k groupKey) second() uint32 { return ixSecond(k.hash()) }

// short reports whether the key's address has no bits past the first 64,
// which a slot holds.
func (k groupKey) short() bool {
	return !k.is6 || [8]byte(k.addr[8:]) == [8]byte{}
}

// indexable reports whether the program can resolve the ports of c from an
// index slot: at most one segment and no exact-port entries.
func (c *compiled) indexable() bool { return c.ports == nil && len(c.segs) <= 1 }

func compareGroupKeys(a, b groupKey) int {
	if c := cmp.Compare(a.listIndex(), b.listIndex()); c != 0 {
		return c
	}
	// As netip.Prefix.Compare within one family: length, then address.
	if c := cmp.Compare(a.bits, b.bits); c != 0 {
		return c
	}
	return compareAddr(a, b)
}

func compareEntry(e ixEntry, gk groupKey) int { return compareGroupKeys(e.gk, gk) }

func compareEntry2(e ix2Entry, gk groupKey) int { return compareGroupKeys(e.gk, gk) }

// The lists of the buckets are slices indexed by bucket, made at the first
// prefix: a map of them cost AddBindings more in lookups than the whole
// index's writes.
func (m *model) indexAdd(gk groupKey, g *group) {
	if m.ix == nil {
		m.ix = make([][]ixEntry, ixBuckets)
		m.ix2 = make([][]ix2Entry, ixBuckets)
	}
	h := gk.hash()
	b, b2 := ixFirst(h), ixSecond(h)
	ok := g.c.indexable() && gk.short()
	es := m.ix[b]
	i, _ := slices.BinarySearchFunc(es, gk, compareEntry)
	m.ix[b] = slices.Insert(es, i, ixEntry{g: g, gk: gk, ok: ok})
	if ok {
		ks := m.ix2[b2]
		i, _ := slices.BinarySearchFunc(ks, gk, compareEntry2)
		m.ix2[b2] = slices.Insert(ks, i, ix2Entry{g: g, first: b, gk: gk})
	}
}

// indexGrow makes room in the bucket lists for the prefixes that changes
// add, so that indexAdd need not regrow them one by one: at a million
// bindings the outgrown lists were 20 MB of garbage.
func (m *model) indexGrow(changes []groupChange) {
	if m.ix == nil {
		m.ix = make([][]ixEntry, ixBuckets)
		m.ix2 = make([][]ix2Entry, ixBuckets)
	}
	var n, n2 []int32
	for _, c := range changes {
		if c.new == nil || c.old != nil {
			continue // it adds no prefix
		}
		if n == nil {
			// Made at the first prefix added: a change of every
			// group's labels adds none.
			n, n2 = make([]int32, ixBuckets), make([]int32, ixBuckets)
		}
		h := c.key.hash()
		n[ixFirst(h)]++
		if c.new.c.indexable() && c.key.short() {
			n2[ixSecond(h)]++
		}
	}
	if n == nil {
		return
	}
	for b := range ixBuckets {
		if n[b] > 0 {
			m.ix[b] = slices.Grow(m.ix[b], int(n[b]))
		}
		if n2[b] > 0 {
			m.ix2[b] = slices.Grow(m.ix2[b], int(n2[b]))
		}
	}
}

func (m *model) indexDrop(gk groupKey) {
	if m.ix == nil {
		return
	}
	h := gk.hash()
	b, b2 := ixFirst(h), ixSecond(h)
	if i, ok := slices.BinarySearchFunc(m.ix[b], gk, compareEntry); ok {
		m.ix[b] = slices.Delete(m.ix[b], i, i+1)
	}
	if i, ok := slices.BinarySearchFunc(m.ix2[b2], gk, compareEntry2); ok {
		m.ix2[b2] = slices.Delete(m.ix2[b2], i, i+1)
	}
}

// list is the list of bucket b.
func (m *model) list(b uint32) []ixEntry {
	if m.ix == nil {
		return nil
	}
	return m.ix[b]
}

// spilled reports whether gk, which can take a slot, is in no slot of its
// first bucket b: ixWays of the bucket's indexable prefixes come before it.
func (m *model) spilled(gk groupKey, b uint32) bool {
	// Found in the list and counted up to ixWays only, so that a bucket
	// crowded on purpose costs its spilled prefixes no scan of it each.
	es := m.ix[b]
	if len(es) <= ixWays {
		return false
	}
	i, ok := slices.BinarySearchFunc(es, gk, compareEntry)
	if !ok || i < ixWays {
		return false
	}
	n := 0
	for _, e := range es[:i] {
		if e.ok {
			if n++; n == ixWays {
				return true
			}
		}
	}
	return false
}

// room is how many slots of bucket b its own prefixes leave.
func (m *model) room(b uint32) int {
	n := ixWays
	for _, e := range m.list(b) {
		if e.ok {
			if n--; n == 0 {
				return 0
			}
		}
	}
	return n
}

// spillers calls f with each prefix whose second bucket is b and that is in
// no slot of its first, and its group, in key order, while f returns true.
func (m *model) spillers(b uint32, f func(gk groupKey, g *group) bool) {
	if m.ix2 == nil {
		return
	}
	for _, e := range m.ix2[b] {
		if m.spilled(e.gk, e.first) && !f(e.gk, e.g) {
			return
		}
	}
}

// fits reports whether gk, spilled from its first bucket, takes a slot of
// its second, b.
func (m *model) fits(gk groupKey, b uint32) bool {
	room := m.room(b)
	if room == 0 {
		return false
	}
	fit := false
	m.spillers(b, func(s groupKey, _ *group) bool {
		if s == gk {
			fit = true
			return false
		}
		room--
		return room > 0
	})
	return fit
}

// ixSlot is one slot of a bucket, which dispatchSyIxBucket stores field by
// field.
type ixSlot struct {
	addr0, addr1            uint32
	plen, kind              uint8
	lo, hi, label, anyLabel uint16
}

func (v *dispatchSyIxBucket) set(k int, s ixSlot) {
	v.Addr0[k], v.Addr1[k], v.Plen[k], v.Kind[k] = s.addr0, s.addr1, s.plen, s.kind
	v.Lo[k], v.Hi[k], v.Label[k], v.AnyLabel[k] = s.lo, s.hi, s.label, s.anyLabel
}

func (v *dispatchSyIxBucket) get(k int) ixSlot {
	return ixSlot{v.Addr0[k], v.Addr1[k], v.Plen[k], v.Kind[k], v.Lo[k], v.Hi[k], v.Label[k], v.AnyLabel[k]}
}

// slot is the slot of group gk.
func (m *model) slot(gk groupKey) ixSlot { return ixSlotOf(gk, m.groups[gk]) }

// ixSlotOf is the slot of gk, whose group is g.
func ixSlotOf(gk groupKey, g *group) ixSlot {
	mk := gk.mapKey(0)
	s := ixSlot{
		addr0:    mk.Addr[0],
		addr1:    mk.Addr[1],
		plen:     mk.Plen,
		kind:     1 + mk.Proto*2 + mk.Family,
		lo:       1,
		anyLabel: uint16(g.c.anyLabel),
	}
	if len(g.c.segs) == 1 {
		sg := g.c.segs[0]
		s.lo, s.hi, s.label = sg.lo, sg.hi, uint16(sg.label)
	}
	return s
}

// indexBucket is the value of bucket b. A prefix of its own that is in
// neither of its buckets makes it say so, and the program looks such
// prefixes up in sy_prefixes.
func (m *model) indexBucket(b uint32) dispatchSyIxBucket {
	v := dispatchSyIxBucket{Flags: ixbThisBuild}
	n := 0
	for _, e := range m.list(b) {
		switch {
		case !e.ok:
			v.Flags |= ixbOverflow
		case n < ixWays:
			v.set(n, ixSlotOf(e.gk, e.g))
			n++
		default:
			v.Flags |= ixbSecond
			if !m.fits(e.gk, e.gk.second()) {
				v.Flags |= ixbOverflow
			}
		}
	}
	if n < ixWays {
		m.spillers(b, func(gk groupKey, g *group) bool {
			v.set(n, ixSlotOf(gk, g))
			n++
			return n < ixWays
		})
	}
	return v
}

// indexDirty is the buckets whose value changes may have changed, from the
// model after them: the first and second bucket of each changed prefix;
// the second buckets of the prefixes that may have moved in or out of the
// slots of a changed first bucket (with c changes in it, those ranked
// ixWays-c or later among its indexable prefixes); and the first buckets of
// the spilled prefixes of every second bucket whose room or spilled
// prefixes may have changed, whose overflow flag may have.
func (m *model) indexDirty(changes []groupChange) []uint32 {
	// A bit per bucket: a change of 100,000 prefixes names some 300,000
	// buckets, which a map takes long to gather.
	set := make([]uint64, ixBuckets/64)
	add := func(b uint32) { set[b/64] |= 1 << (b % 64) }
	perFirst := make([]int32, ixBuckets) // changes per first bucket
	var firsts []uint32
	addSecond := func(b uint32) {
		add(b)
		m.spillers(b, func(gk groupKey, _ *group) bool {
			add(gk.bucket())
			return true
		})
	}
	for _, c := range changes {
		h := c.key.hash()
		if b := ixFirst(h); perFirst[b] == 0 {
			firsts = append(firsts, b)
		}
		perFirst[ixFirst(h)]++
		addSecond(ixSecond(h))
	}
	for _, b := range firsts {
		n := int(perFirst[b])
		// Its room for others' prefixes may have changed.
		addSecond(b)
		r := 0
		for _, e := range m.list(b) {
			if !e.ok {
				continue
			}
			if r >= ixWays-n {
				addSecond(e.gk.second())
			}
			r++
		}
	}
	var out []uint32
	for i, w := range set {
		for ; w != 0; w &= w - 1 {
			out = append(out, uint32(i*64+bits.TrailingZeros64(w)))
		}
	}
	return out
}

// initIndex marks every bucket of a new, empty state's index valid and
// empty, so the program trusts it (and the empty filter) from the start.
func initIndex(m *ebpf.Map) error {
	keys := make([]uint32, 2*ixBuckets)
	vals := make([]dispatchSyIxBucket, 2*ixBuckets)
	for i := range keys {
		keys[i] = uint32(i)
		vals[i].Flags = ixbThisBuild
	}
	return batchPut(m, keys, vals)
}

// buildIndex writes this build's index and filter into state a build with
// another (or none) left, through the generation switch like any change: the
// program ignores the buckets until they are valid. The dirty mark makes a
// crash meanwhile repaired by the next Open. The caller has found the data
// path whole (m.dataOK, no change interrupted), so only what is derived from
// the groups (prefix length lists, filter words, index buckets) is written:
// at a million bindings reading and rewriting the prefix entries took
// hundreds of MiB for nothing.
func (d *Dispatcher) buildIndex(m *model) error {
	d.log.Info("building the prefix index of this build", "dir", d.dir)
	if err := d.writeConfig(func(c *configVal) { c.Dirty = 1; c.Serial++ }); err != nil {
		return err
	}
	if !m.dataOK || m.rec.State == commitBegun {
		return d.rewrite(m) // not reached: refresh recovers such state first
	}
	lists, words, buckets := allDerived()
	if err := d.writeGenerations(m, nil, lists, words, buckets); err != nil {
		return err
	}
	m.indexOK = true
	return d.writeConfig(func(c *configVal) { c.Dirty = 0; c.Serial++; m.serial = c.Serial })
}

// allDerived names every prefix length list, filter word and index bucket.
func allDerived() (lists []int, words, buckets []uint32) {
	words = make([]uint32, filterWords)
	for i := range words {
		words[i] = uint32(i)
	}
	return []int{0, 1, 2, 3}, words, allBuckets()
}

// allBuckets names every index bucket.
func allBuckets() []uint32 {
	buckets := make([]uint32, ixBuckets)
	for i := range buckets {
		buckets[i] = uint32(i)
	}
	return buckets
}

// noportWords is SY_NOPORT_WORDS.
const noportWords = 65536 / 64

// portUse counts the bindings of one (protocol, family) by port set, for
// sy_noports, and by the address blocks and port bits they cover, for
// sy_blocks.
type portUse struct {
	any    int
	single map[uint16]int
	ranges map[binding.Ports]int
	// served counts the (prefix, port set) pairs of prefixes within one
	// address block that serve a port of a bit of its word, keyed
	// block<<7 | bit (bit everyBit: they serve every bit). Prefixes wider
	// than a block are counted once each in wide, by bit, and applied to
	// the blocks they cover as the words are made, so that a wide prefix
	// with many port sets costs each change one count, not one per block;
	// everywhere counts, by bit, IPv6 prefixes shorter than /16, which
	// cover every block.
	served     map[uint32]int32
	wide       map[netip.Prefix]*bitCounts
	everywhere bitCounts
	// spread is how many leading 32-bit values the prefixes of wide
	// cover in all, block by block: what making the words costs them.
	spread int
}

// maxSpread bounds the work of making a list's words for prefixes wider
// than a block: IPv4's cannot pass it (16 lengths of at most 65,536
// blocks), IPv6's (/16 to /31, blocks by a hash of 32 bits) can, and past
// it their bits go into every word, as IPv6 prefixes shorter than /16 do.
const maxSpread = 1 << 21

// bitCounts counts port sets by the bits of sy_blocks' words they serve
// (everyBit: every bit), and in all.
type bitCounts struct {
	bits [everyBit + 1]int32
	sets int32
}

func (c *bitCounts) add(bits []uint32, n int) {
	for _, b := range bits {
		c.bits[b] += int32(n)
	}
	c.sets += int32(n)
}

// mask is the bits of a word that the port sets c counts serve.
func (c *bitCounts) mask() uint64 {
	if c.bits[everyBit] > 0 {
		return ^uint64(0)
	}
	var m uint64
	for b, n := range c.bits[:everyBit] {
		if n > 0 {
			m |= 1 << b
		}
	}
	return m
}

func (u *portUse) add(p binding.Ports, n int) {
	switch {
	case p.IsAny():
		u.any += n
	case p.Single():
		if u.single == nil {
			u.single = map[uint16]int{}
		}
		if u.single[p.Lo] += n; u.single[p.Lo] <= 0 {
			delete(u.single, p.Lo)
		}
	default:
		if u.ranges == nil {
			u.ranges = map[binding.Ports]int{}
		}
		if u.ranges[p] += n; u.ranges[p] <= 0 {
			delete(u.ranges, p)
		}
	}
}

// noport is the value of sy_noports for u: a bit set for each port no
// binding covers.
func (u *portUse) noport() []uint64 {
	w := make([]uint64, noportWords)
	if u.any > 0 {
		return w
	}
	for i := range w {
		w[i] = ^uint64(0)
	}
	clear := func(p uint16) { w[p/64] &^= 1 << (p % 64) }
	for p := range u.single {
		clear(p)
	}
	for r := range u.ranges {
		for p := int(r.Lo); p <= int(r.Hi); p++ {
			clear(uint16(p))
		}
	}
	return w
}

// blockWords is SY_BLOCKS, the words of sy_blocks per (protocol, family);
// blockRange is SY_BLOCK_RANGE; everyBit marks a count of every bit.
const (
	blockWords = 65536
	blockRange = 16
	everyBit   = 64
)

// portBit is the Go twin of sy_port_bit in bpf/lookup.h: the bit of a word
// of sy_blocks for port.
func portBit(port uint16) uint32 {
	return (uint32(port) * 0x9e3779b1) >> 26
}

// portBits appends to bits the bits of sy_blocks' words that ports serve,
// or everyBit for every port and ranges of more than blockRange ports.
func portBits(bits []uint32, ports binding.Ports) []uint32 {
	if ports.IsAny() || int(ports.Hi)-int(ports.Lo) >= blockRange {
		return append(bits, everyBit)
	}
	for p := int(ports.Lo); p <= int(ports.Hi); p++ {
		if b := portBit(uint16(p)); !slices.Contains(bits, b) {
			bits = append(bits, b)
		}
	}
	return bits
}

// addrBlock is the Go twin of sy_block in bpf/lookup.h, from the
// leading 32 bits of an address as a number.
func addrBlock(lead uint32, is4 bool) uint16 {
	if is4 {
		return uint16(lead >> 16)
	}
	return uint16((lead * 0x9e3779b1) >> 16)
}

// blockBits is how long a prefix of the family must be to lie in one block
// of sy_blocks.
func blockBits(is4 bool) int {
	if is4 {
		return 16
	}
	return 32
}

// leadWord is the leading 32 bits of a as a number.
func leadWord(a netip.Addr) uint32 {
	if a.Is4() {
		b := a.As4()
		return binary.BigEndian.Uint32(b[:])
	}
	b := a.As16()
	return binary.BigEndian.Uint32(b[:4])
}

// addServed counts n more (or, negative, fewer) bindings of prefix p and
// ports.
func (u *portUse) addServed(p netip.Prefix, ports binding.Ports, n int) {
	var buf [blockRange]uint32
	bits := portBits(buf[:0], ports)
	p = p.Masked()
	a := p.Addr()
	switch {
	case !a.Is4() && p.Bits() < 16:
		u.everywhere.add(bits, n)
	case p.Bits() < blockBits(a.Is4()):
		if u.wide == nil {
			u.wide = map[netip.Prefix]*bitCounts{}
		}
		c := u.wide[p]
		if c == nil {
			c = new(bitCounts)
			u.wide[p] = c
			u.spread += 1 << (blockBits(a.Is4()) - p.Bits())
		}
		if c.add(bits, n); c.sets <= 0 {
			delete(u.wide, p)
			u.spread -= 1 << (blockBits(a.Is4()) - p.Bits())
		}
	default:
		if u.served == nil {
			u.served = map[uint32]int32{}
		}
		block := uint32(addrBlock(leadWord(a), a.Is4()))
		for _, b := range bits {
			k := block<<7 | b
			if u.served[k] += int32(n); u.served[k] <= 0 {
				delete(u.served, k)
			}
		}
	}
}

// blocks is the value of sy_blocks for u: in each block's word, a bit set
// for each port bit no binding covering the block serves.
func (u *portUse) blocks() []uint64 {
	everywhere := u.everywhere.mask()
	if u.spread > maxSpread {
		for _, c := range u.wide {
			everywhere |= c.mask()
		}
	}
	all := ^everywhere
	w := make([]uint64, blockWords)
	for i := range w {
		w[i] = all
	}
	for k, n := range u.served {
		if n <= 0 {
			continue
		}
		if b := k & 127; b == everyBit {
			w[k>>7] = 0
		} else {
			w[k>>7] &^= 1 << b
		}
	}
	if u.spread > maxSpread {
		return w
	}
	// A prefix wider than a block, in every block it covers: the
	// leading 32-bit values it covers, one block's worth apart.
	for p, c := range u.wide {
		m := c.mask()
		if m == 0 {
			continue
		}
		is4 := p.Addr().Is4()
		lead, step := leadWord(p.Addr()), uint32(1)<<(32-blockBits(is4))
		for i := range uint32(1) << (blockBits(is4) - p.Bits()) {
			w[addrBlock(lead+i*step, is4)] &^= m
		}
	}
	return w
}
