package dispatch

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// The prefix index (sy_index, see bpf/dispatch.h) lets the program resolve
// most prefixes from one array element instead of a filter word and a hash
// lookup. A bucket is written whole from the groups whose keys fall in it,
// like a filter word.

const (
	ixLog2    = 16 // SY_IX_LOG2
	ixBuckets = 1 << ixLog2
	ixWays    = len(dispatchSyIxBucket{}.Slots) // SY_IX_WAYS
	ixbValid  = 1                               // SY_IXB_VALID
	ixbThis   = 4                               // SY_IXB_THIS
	// ixbThisBuild marks a bucket this build wrote.
	ixbThisBuild = ixbValid | ixbThis
	ixbOverflow  = 2 // SY_IXB_OVERFLOW
)

// bucket is the index bucket of the key, within one generation.
func (k groupKey) bucket() uint32 { return k.bit() >> (filterLog2 - ixLog2) }

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

func (m *model) indexAdd(gk groupKey) {
	b := gk.bucket()
	ks := m.ix[b]
	i, _ := slices.BinarySearchFunc(ks, gk, compareGroupKeys)
	m.ix[b] = slices.Insert(ks, i, gk)
}

func (m *model) indexDrop(gk groupKey) {
	b := gk.bucket()
	ks := m.ix[b]
	if i, ok := slices.BinarySearchFunc(ks, gk, compareGroupKeys); ok {
		ks = slices.Delete(ks, i, i+1)
	}
	if len(ks) == 0 {
		delete(m.ix, b)
		return
	}
	m.ix[b] = ks
}

// indexBucket is the value of bucket b: the first indexable groups of the
// bucket in key order take the slots; if any group is left out, the bucket
// says so, and the program looks such prefixes up in sy_prefixes.
func (m *model) indexBucket(b uint32) dispatchSyIxBucket {
	v := dispatchSyIxBucket{Flags: ixbThisBuild}
	n := 0
	for _, gk := range m.ix[b] {
		g := m.groups[gk]
		if n == ixWays || !g.c.indexable() {
			v.Flags |= ixbOverflow
			continue
		}
		mk := gk.mapKey(0)
		s := dispatchSyIxSlot{
			Addr:     mk.Addr,
			Plen:     mk.Plen,
			Kind:     1 + mk.Proto*2 + mk.Family,
			Lo:       1,
			AnyLabel: g.c.anyLabel,
		}
		if len(g.c.segs) == 1 {
			sg := g.c.segs[0]
			s.Lo, s.Hi, s.Label = sg.lo, sg.hi, sg.label
		}
		v.Slots[n] = s
		n++
	}
	return v
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
// crash meanwhile repaired by the next Open.
func (d *Dispatcher) buildIndex(m *model) error {
	d.log.Info("building the prefix index of this build", "dir", d.dir)
	if err := d.writeConfig(func(c *dispatchSyCfg) { c.Dirty = 1; c.Serial++ }); err != nil {
		return err
	}
	return d.rewrite(m)
}

// noportWords is SY_NOPORT_WORDS.
const noportWords = 65536 / 64

// portUse counts the bindings of one (protocol, family) by port set, for
// sy_noports, and its prefixes by the address blocks they cover, for
// sy_noaddr.
type portUse struct {
	any    int
	single map[uint16]int
	ranges map[binding.Ports]int
	blocks *[noaddrBlocks]int32 // prefixes that cover each block
	all    int                  // IPv6 prefixes shorter than /16, which cover every block
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

// noaddrWords is SY_NOADDR_WORDS; noaddrBlocks the blocks it has bits for.
const (
	noaddrWords  = 65536 / 64
	noaddrBlocks = noaddrWords * 64
)

// noaddrBlock is the Go twin of sy_noaddr_block in bpf/lookup.h, from the
// leading 32 bits of an address as a number.
func noaddrBlock(lead uint32, is4 bool) uint16 {
	if is4 {
		return uint16(lead >> 16)
	}
	return uint16((lead * 0x9e3779b1) >> 16)
}

// blockBits is how long a prefix of the family must be to lie in one block
// of sy_noaddr.
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

// addPrefix counts n more (or, negative, fewer) groups of prefix p. A
// prefix wider than a block is counted in every block it covers, once
// here, so that noaddr is one pass over the blocks whatever the prefixes.
func (u *portUse) addPrefix(p netip.Prefix, n int) {
	p = p.Masked()
	a := p.Addr()
	if !a.Is4() && p.Bits() < 16 {
		u.all += n
		return
	}
	if u.blocks == nil {
		u.blocks = new([noaddrBlocks]int32)
	}
	lead := leadWord(a)
	if p.Bits() >= blockBits(a.Is4()) {
		u.blocks[noaddrBlock(lead, a.Is4())] += int32(n)
		return
	}
	// The leading 32-bit values p covers, one block's worth apart.
	step := uint32(1) << (32 - blockBits(a.Is4()))
	for i := range uint32(1) << (blockBits(a.Is4()) - p.Bits()) {
		u.blocks[noaddrBlock(lead+i*step, a.Is4())] += int32(n)
	}
}

// noaddr is the value of sy_noaddr for u: a bit set for each address block
// no prefix covers. IPv6 prefixes shorter than /16 cover every block.
func (u *portUse) noaddr() []uint64 {
	w := make([]uint64, noaddrWords)
	if u.all > 0 {
		return w
	}
	for b := range noaddrBlocks {
		if u.blocks == nil || u.blocks[b] <= 0 {
			w[b/64] |= 1 << (b % 64)
		}
	}
	return w
}
