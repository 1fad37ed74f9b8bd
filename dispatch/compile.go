package dispatch

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Capacities fixed by the map layout in bpf/dispatch.h.
const (
	inlineSegs   = len(dispatchSyPrefixVal{}.Segs) // SY_INLINE_SEGS
	tableSegs    = len(dispatchSyTable{}.Segs)     // SY_TABLE_SEGS
	tablesPerGen = 1024                            // SY_TABLES_PER_GEN
	maxLabels    = 16384
)

// seg is a run of ports served by one label.
type seg struct {
	lo, hi uint16
	label  uint32
}

// compiled is how the ports of one (protocol, prefix) resolve to label ids,
// in the form the program reads: exact ports, then segments, then anyLabel.
type compiled struct {
	anyLabel uint32
	ports    map[uint16]uint32 // exact ports; nil when all fit in segs
	segs     []seg
	// bounds: every port range wider than one port begins where a segment
	// begins and ends where one ends (no merge of segments hides its
	// ends), so the explainer finds the binding that wins from the
	// segments (SY_PV_BOUNDS).
	bounds bool
}

// useTable reports whether segs live in a table rather than inline.
func (c *compiled) useTable() bool { return len(c.segs) > inlineSegs }

// compile flattens the port bindings of one (protocol, prefix). The ranges
// must be laminar (nested or disjoint), which the conflict check ensures.
func compile(ports []portBinding) (compiled, error) {
	var c compiled
	all := make([]portBinding, 0, len(ports))
	var ranges []portBinding
	for _, pb := range ports {
		switch p := pb.ports; {
		case p.IsAny():
			c.anyLabel = pb.label
		case p.Single():
			all = append(all, pb)
		default:
			all = append(all, pb)
			ranges = append(ranges, pb)
		}
	}
	c.segs = slices.Clip(flatten(all, false))
	if len(c.segs) <= inlineSegs {
		c.segs, c.bounds = withBounds(c.segs, all, ranges, inlineSegs)
		return c, nil
	}
	// Too many for the prefix entry: single ports go to the exact-port map,
	// ranges stay as segments, inline or in a table.
	c.ports = make(map[uint16]uint32, len(all)-len(ranges))
	for _, pb := range all {
		if pb.ports.Single() {
			c.ports[pb.ports.Lo] = pb.label
		}
	}
	c.segs = flatten(ranges, false)
	if len(c.segs) > tableSegs {
		return compiled{}, fmt.Errorf("%w: the port ranges of one prefix make %d segments, more than %d; use fewer, wider ranges", ErrCapacity, len(c.segs), tableSegs)
	}
	limit := tableSegs
	if !c.useTable() {
		limit = inlineSegs
	}
	c.segs, c.bounds = withBounds(c.segs, ranges, ranges, limit)
	return c, nil
}

// withBounds returns segs, flattened from in, and whether they keep the
// ends of ranges; if they do not, segs split again at those ends where
// that costs nothing the data path feels: the prefix keeps its place
// (inline or in a table) and, with one segment, its index slot.
func withBounds(segs []seg, in, ranges []portBinding, limit int) ([]seg, bool) {
	if keepsBounds(segs, ranges) {
		return segs, true
	}
	if len(segs) <= 1 {
		return segs, false
	}
	split := flatten(in, true)
	if len(split) > limit {
		return segs, false
	}
	return slices.Clip(split), keepsBounds(split, ranges)
}

// keepsBounds reports whether each of ranges begins where one of segs
// (sorted, disjoint) begins and ends where one ends.
func keepsBounds(segs []seg, ranges []portBinding) bool {
	for _, r := range ranges {
		i, found := slices.BinarySearchFunc(segs, r.ports.Lo, func(s seg, p uint16) int { return cmp.Compare(s.lo, p) })
		if !found {
			return false
		}
		if _, found := slices.BinarySearchFunc(segs[i:], r.ports.Hi, func(s seg, p uint16) int { return cmp.Compare(s.hi, p) }); !found {
			return false
		}
	}
	return true
}

type portBinding struct {
	ports binding.Ports
	label uint32
}

// flatten turns laminar port ranges into sorted, disjoint segments, each
// served by the narrowest range that holds it. Ports no range holds are left
// out. Adjacent segments of one label are merged, unless split and the
// port between them is an end of a range wider than one port.
func flatten(bs []portBinding, split bool) []seg {
	slices.SortFunc(bs, func(a, b portBinding) int {
		if c := cmp.Compare(a.ports.Lo, b.ports.Lo); c != 0 {
			return c
		}
		return cmp.Compare(b.ports.Hi, a.ports.Hi) // outer first
	})
	var ends map[int]bool // ports that begin a segment when split
	if split {
		ends = map[int]bool{}
		for _, b := range bs {
			if !b.ports.Single() {
				ends[int(b.ports.Lo)], ends[int(b.ports.Hi)+1] = true, true
			}
		}
	}
	var out []seg
	emit := func(lo, hi int, label uint32) {
		if lo > hi {
			return
		}
		if n := len(out); n > 0 && out[n-1].label == label && int(out[n-1].hi)+1 == lo && !ends[lo] {
			out[n-1].hi = uint16(hi)
			return
		}
		out = append(out, seg{uint16(lo), uint16(hi), label})
	}
	var stack []portBinding
	cur := 0 // first port not yet emitted
	for _, b := range bs {
		lo := int(b.ports.Lo)
		// Close the ranges that end before this one starts.
		for len(stack) > 0 && int(stack[len(stack)-1].ports.Hi) < lo {
			top := stack[len(stack)-1]
			emit(cur, int(top.ports.Hi), top.label)
			cur = max(cur, int(top.ports.Hi)+1)
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 {
			emit(cur, lo-1, stack[len(stack)-1].label)
		}
		cur = max(cur, lo)
		stack = append(stack, b)
	}
	for len(stack) > 0 {
		top := stack[len(stack)-1]
		emit(cur, int(top.ports.Hi), top.label)
		cur = max(cur, int(top.ports.Hi)+1)
		stack = stack[:len(stack)-1]
	}
	return out
}
