package config

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// checkConflicts finds what a map of the groups and a sort of each found
// (checkConflictsByMap, the implementation before the hash buckets), in
// the same order, on lists large enough to be checked on several CPUs,
// with repeats, relabels, nested and partially overlapping ranges.
func TestCheckConflictsAsByMap(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 3 {
		n := 20000 + round*7000
		bs := make([]binding.Binding, n)
		for i := range bs {
			// Few prefixes, so that groups are large and collide.
			a := netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(rng.IntN(256))})
			if rng.IntN(4) == 0 {
				a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(64))})
			}
			lo := uint16(1 + rng.IntN(200))
			hi := lo
			if rng.IntN(3) == 0 {
				hi = lo + uint16(rng.IntN(50))
			}
			bs[i] = binding.Binding{
				Label:    "l" + strconv.Itoa(rng.IntN(3)),
				Protocol: [2]binding.Protocol{binding.TCP, binding.UDP}[rng.IntN(2)],
				Prefix:   netip.PrefixFrom(a, a.BitLen()),
				Ports:    binding.Ports{Lo: lo, Hi: hi},
			}
		}
		l := &list{bs: bs, line: make([]int32, n), index: make([]int32, n)}
		es := make([]entry, n)
		for i := range bs {
			l.line[i], l.index[i] = int32(2*i+3), int32(i+i/100)
			es[i] = entry{b: bs[i], index: int(l.index[i]), line: int(l.line[i])}
		}
		want := checkConflictsByMap(es)
		if len(want) < 100 {
			t.Fatalf("round %d: only %d problems in the list", round, len(want))
		}
		// Whole hashes, and hashes of a few bits in the top ones that
		// pick the bucket and in the low ones, so that groups share them.
		for _, mask := range []uint32{^uint32(0), 0xe0000003, 0x3, 0} {
			got := checkConflictsHashed(l, mask)
			if !reflect.DeepEqual(got, want) {
				for i := range min(len(got), len(want)) {
					if got[i].Error() != want[i].Error() {
						t.Fatalf("round %d, mask %#x: %d problems, want %d; the first difference, at %d:\n%v\nwant\n%v", round, mask, len(got), len(want), i, got[i], want[i])
					}
				}
				t.Fatalf("round %d, mask %#x: %d problems, want %d", round, mask, len(got), len(want))
			}
		}
	}
}

// checkConflictsByMap finds repeated bindings, bindings with the same key and
// different labels, and partially overlapping port ranges at the same
// protocol and prefix (binding.Conflict). Each problem is reported once, on
// the later of the two entries, naming the earlier.
func checkConflictsByMap(es []entry) []*Error {
	if len(es) < 2 {
		return nil
	}
	// Group the entries by protocol and prefix, with one map lookup each
	// and a counting sort into order (positions ascending within a group),
	// so that only each group's few entries are sorted: a sort of the
	// whole list took most of the check at a million bindings.
	type groupKey struct {
		proto binding.Protocol
		is6   bool
		bits  uint8
		addr  [16]byte
	}
	pos := make(map[groupKey]int32, len(es)/2)
	gi := make([]int32, len(es))
	var next []int32 // per group: its count, then where its next entry goes
	for i := range es {
		b := &es[i].b
		a := b.Prefix.Addr()
		k := groupKey{b.Protocol, a.Is6(), uint8(b.Prefix.Bits()), a.As16()}
		g, ok := pos[k]
		if !ok {
			g = int32(len(next))
			pos[k] = g
			next = append(next, 0)
		}
		gi[i] = g
		next[g]++
	}
	pos = nil
	start := make([]int32, len(next)+1)
	for g, n := range next {
		start[g+1] = start[g] + n
		next[g] = start[g]
	}
	order := make([]int32, len(es))
	for i, g := range gi {
		order[next[g]] = int32(i)
		next[g]++
	}
	gi, next = nil, nil

	// A group's entries in order of range start ascending and range end
	// descending, so that a range comes before the ranges it contains,
	// then by position.
	byPorts := func(x, y int32) int {
		px, py := es[x].b.Ports, es[y].b.Ports
		if c := cmp.Compare(px.Lo, py.Lo); c != 0 {
			return c
		}
		if c := cmp.Compare(py.Hi, px.Hi); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	}
	type found struct {
		at  int32 // the entry being checked when the problem showed
		err *Error
	}
	var errs []found
	// stack holds a chain of nested ranges of the group, outermost
	// first. runFirst is the earliest entry with the current port set.
	var stack []entry
	for g := range len(start) - 1 {
		grp := order[start[g]:start[g+1]]
		if len(grp) < 2 {
			continue
		}
		slices.SortFunc(grp, byPorts)
		stack = stack[:0]
		var runFirst entry
		for k, oi := range grp {
			cur := es[oi]
			report := func(later entry, err error) {
				errs = append(errs, found{oi, &Error{Line: later.line, Path: "bindings[" + strconv.Itoa(later.index) + "]", Err: err}})
			}
			if k > 0 && es[grp[k-1]].b.Ports == cur.b.Ports {
				if runFirst.b.Label == cur.b.Label {
					report(cur, fmt.Errorf("%w binding: %s repeats %s; remove one of them", ErrDuplicate, cur.b, runFirst.name()))
				} else {
					report(cur, fmt.Errorf("%w: %s and %s have the same protocol, prefix and ports but different labels; keep one of them", ErrConflict, cur.b, runFirst.name()))
				}
				continue
			}
			runFirst = cur
			for len(stack) > 0 && stack[len(stack)-1].b.Ports.Hi < cur.b.Ports.Lo {
				stack = stack[:len(stack)-1]
			}
			if len(stack) > 0 {
				if top := stack[len(stack)-1]; binding.Conflict(top.b, cur.b) {
					x, y := top, cur
					if x.index > y.index {
						x, y = y, x
					}
					report(y, fmt.Errorf("%w: %s and %s have partially overlapping port ranges at the same protocol and prefix, so neither is more specific; make the ranges disjoint or put one inside the other",
						ErrConflict, y.b, x.name()))
					continue
				}
			}
			stack = append(stack, cur)
		}
	}
	// In the order of the entries they were found at by protocol, address,
	// prefix length, then ports as above: as a sort of the whole list
	// found them (the caller orders them by line, stably).
	slices.SortFunc(errs, func(x, y found) int {
		a, b := es[x.at].b, es[y.at].b
		if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
			return c
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return byPorts(x.at, y.at)
	})
	out := make([]*Error, len(errs))
	for i, f := range errs {
		out[i] = f.err
	}
	return out
}
