package dispatch

import (
	"cmp"
	"slices"
)

// Small sets. A (protocol, family) list of at most smallMax bindings is
// written whole into sy_config, in order of precedence, beside the
// generation the program reads there first: the program scans it and
// reads nothing else, where a lookup through the prefix entries reads the
// address and port maps and the prefix lengths, hashes a key per prefix
// length and probes the index. The prefix entries are written as for any
// set (explain reads them). A generation's small sets are written with
// the rest of it (writeLists), so they always agree with its prefix
// entries.

// smallMax is SY_SMALL_MAX.
const smallMax = 8

// smallTrack is how many groups a list may have for the model to keep their
// keys (smallKeys); beyond it the list's small set is found by a scan of
// every group, should the list ever shrink to smallMax bindings again.
const smallTrack = 1024

const (
	smallKnown = 1 // SY_SMALL_KNOWN
	smallAll   = 2 // SY_SMALL_ALL
)

// trackSmall keeps m.listBindings and m.smallKeys as group gk (of n
// bindings) is added (add) or dropped.
func (m *model) trackSmall(gk groupKey, n int, add bool) {
	li := gk.listIndex()
	keys := m.smallKeys[li]
	if !add {
		m.listBindings[li] -= n
		if keys != nil {
			delete(keys, gk)
		}
		if m.listBindings[li] == 0 {
			// Empty again: the keys are known (none).
			m.smallKeys[li] = map[groupKey]bool{}
		}
		return
	}
	m.listBindings[li] += n
	if keys == nil {
		return
	}
	if len(keys) >= smallTrack {
		m.smallKeys[li] = nil
		return
	}
	keys[gk] = true
}

// smallSet is the small set of list li in m: every binding if there are at
// most smallMax, none otherwise.
func (m *model) smallSet(li int) dispatchSySmall {
	l := dispatchSySmall{Flags: smallKnown}
	if m.listBindings[li] > smallMax {
		return l
	}
	type ent struct {
		gk groupKey
		pl portLabel
	}
	var ents []ent
	add := func(gk groupKey) {
		for _, pl := range m.groups[gk].ports {
			ents = append(ents, ent{gk, pl})
		}
	}
	if keys := m.smallKeys[li]; keys != nil {
		for gk := range keys {
			add(gk)
		}
	} else {
		for gk := range m.groups {
			if gk.listIndex() == li {
				add(gk)
			}
		}
	}
	if len(ents) > smallMax {
		return l // not reached: listBindings counts them
	}
	// The most specific first: the longest prefix, then the narrowest
	// port set. Ties do not match the same traffic (a prefix holds one
	// binding per port set; port sets of a prefix nest or are disjoint);
	// the rest of the order only makes the element the same every time.
	slices.SortFunc(ents, func(a, b ent) int {
		if c := cmp.Compare(b.gk.bits, a.gk.bits); c != 0 {
			return c
		}
		if c := cmp.Compare(a.pl.ports.Hi-a.pl.ports.Lo, b.pl.ports.Hi-b.pl.ports.Lo); c != 0 {
			return c
		}
		if c := compareGroupKeys(a.gk, b.gk); c != 0 {
			return c
		}
		return comparePorts(a.pl.ports, b.pl.ports)
	})
	for i, e := range ents {
		s := &l.Ent[i]
		var mask [16]byte
		bits := int(e.gk.bits)
		if !e.gk.is6 {
			bits += 96
		}
		for b := 0; b < bits; b++ {
			mask[b/8] |= 0x80 >> (b % 8)
		}
		s.Mask = addrWords(mask, !e.gk.is6)
		s.Addr = addrWords(e.gk.addr, !e.gk.is6)
		for w := range s.Addr {
			s.Addr[w] &= s.Mask[w]
		}
		s.Lo, s.Hi = e.pl.ports.Lo, e.pl.ports.Hi
		s.Label = m.labels[e.pl.label]
	}
	l.Count = uint32(len(ents))
	l.Flags |= smallAll
	return l
}

// smallOK reports whether every list of generation gen in cfg has a small
// set written by a build that writes them.
func smallOK(cfg *configVal, gen uint32) bool {
	for li := range 4 {
		if cfg.Small[gen*4+uint32(li)].Flags&smallKnown == 0 {
			return false
		}
	}
	return true
}

// writeSmall writes the small sets of lists in generation gen, which no
// program reads (see writeLists). The element is rewritten whole, but the
// bytes a program may read meanwhile (the generation and its small sets)
// are written as they were.
func (d *Dispatcher) writeSmall(m *model, gen uint32, lists []int) error {
	if len(lists) == 0 {
		return nil
	}
	return d.writeConfig(func(c *configVal) {
		for _, li := range lists {
			c.Small[gen*4+uint32(li)] = m.smallSet(li)
		}
	})
}

// buildSmall writes the small sets of both generations into state a build
// without them left, while the program may read either: first every set
// with the flags it had (none, so the program passes over it), then the
// flags, which change a byte each.
func (d *Dispatcher) buildSmall(m *model) error {
	var sets [8]dispatchSySmall
	for gen := range uint32(2) {
		for li := range 4 {
			sets[gen*4+uint32(li)] = m.smallSet(li)
		}
	}
	if err := d.writeConfig(func(c *configVal) {
		for i := range sets {
			flags := c.Small[i].Flags
			c.Small[i] = sets[i]
			c.Small[i].Flags = flags
		}
	}); err != nil {
		return err
	}
	return d.writeConfig(func(c *configVal) {
		for i := range sets {
			c.Small[i].Flags = sets[i].Flags
		}
	})
}
