package dispatch

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// resolve is the Go twin of the program's port resolution.
func (c *compiled) resolve(port uint16) uint32 {
	if l, ok := c.ports[port]; ok {
		return l
	}
	i, found := slices.BinarySearchFunc(c.segs, port, func(s seg, p uint16) int {
		switch {
		case s.hi < p:
			return -1
		case s.lo > p:
			return 1
		}
		return 0
	})
	if found {
		return c.segs[i].label
	}
	return c.anyLabel
}

// naive returns the label of the narrowest range holding port.
func naive(ports map[binding.Ports]uint32, port uint16) uint32 {
	best, w := uint32(0), 1<<20
	for p, l := range ports {
		if p.Contains(port) && p.Width() < w {
			best, w = l, p.Width()
		}
	}
	return best
}

func TestCompileMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 2000; iter++ {
		ports := map[binding.Ports]uint32{}
		// Build a laminar family by splitting intervals recursively.
		var build func(lo, hi int, depth int)
		label := uint32(1)
		build = func(lo, hi int, depth int) {
			if depth > 4 || lo > hi {
				return
			}
			for n := rng.IntN(4); n > 0; n-- {
				a := lo + rng.IntN(hi-lo+1)
				b := a + rng.IntN(hi-a+1)
				p := binding.Ports{Lo: uint16(a), Hi: uint16(b)}
				if p.Lo == 0 && !p.IsAny() {
					continue
				}
				ok := true
				for q := range ports {
					if q.Overlaps(p) && !q.Nested(p) || q == p {
						ok = false
						break
					}
				}
				if !ok {
					continue
				}
				ports[p] = label
				label++
				build(a, b, depth+1)
			}
		}
		if rng.IntN(3) == 0 {
			ports[binding.AnyPort] = 999
		}
		build(1, 200+rng.IntN(2000), 0)
		c, err := compile(asList(ports))
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(c.segs); i++ {
			if c.segs[i].lo <= c.segs[i-1].hi {
				t.Fatalf("segments overlap: %v", c.segs)
			}
		}
		for port := 0; port <= 2300; port++ {
			if got, want := c.resolve(uint16(port)), naive(ports, uint16(port)); got != want {
				t.Fatalf("ports %v: port %d resolves to %d, want %d (segs %v, exact %v)", ports, port, got, want, c.segs, c.ports)
			}
		}
	}
}

func TestCompileInline(t *testing.T) {
	c, err := compile(asList(map[binding.Ports]uint32{
		{Lo: 80, Hi: 80}:     1,
		{Lo: 8000, Hi: 8999}: 2,
		{Lo: 8080, Hi: 8080}: 3,
		binding.AnyPort:      4,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ports != nil || c.useTable() {
		t.Fatalf("expected everything inline, got %+v", c)
	}
	want := []seg{{80, 80, 1}, {8000, 8079, 2}, {8080, 8080, 3}, {8081, 8999, 2}}
	if len(c.segs) != len(want) {
		t.Fatalf("segs %v, want %v", c.segs, want)
	}
	for i := range want {
		if c.segs[i] != want[i] {
			t.Fatalf("segs %v, want %v", c.segs, want)
		}
	}
	if c.anyLabel != 4 {
		t.Fatalf("any label %d", c.anyLabel)
	}
}

func TestCompileTooManySegments(t *testing.T) {
	ports := map[binding.Ports]uint32{}
	for i := 0; i < 300; i++ {
		ports[binding.Ports{Lo: uint16(1000 + 10*i), Hi: uint16(1005 + 10*i)}] = uint32(i%2 + 1)
	}
	if _, err := compile(asList(ports)); err == nil {
		t.Fatal("300 disjoint ranges compiled; want a capacity error")
	}
}

func asList(ports map[binding.Ports]uint32) []portBinding {
	var out []portBinding
	for p, l := range ports {
		out = append(out, portBinding{p, l})
	}
	return out
}

// compile says whether the segments keep the ends of every range wider
// than one port, which the lookup explainer relies on.
func TestCompileKeepsBounds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports map[binding.Ports]uint32
		want  bool
	}{
		// One segment stays one (the index holds it): not split.
		{"one label nested", map[binding.Ports]uint32{{Lo: 1, Hi: 100}: 1, {Lo: 50, Hi: 60}: 1}, false},
		{"other labels nested", map[binding.Ports]uint32{{Lo: 1, Hi: 100}: 1, {Lo: 50, Hi: 60}: 2, {Lo: 55, Hi: 55}: 1}, true},
		{"adjacent ranges of one label", map[binding.Ports]uint32{{Lo: 1, Hi: 10}: 1, {Lo: 11, Hi: 20}: 1}, false},
		// Split again where that keeps them inline.
		{"adjacent ranges of one label beside another", map[binding.Ports]uint32{{Lo: 1, Hi: 10}: 1, {Lo: 11, Hi: 20}: 1, {Lo: 30, Hi: 40}: 2}, true},
		{"nested ranges of one label beside another", map[binding.Ports]uint32{{Lo: 1, Hi: 100}: 1, {Lo: 50, Hi: 60}: 1, {Lo: 200, Hi: 300}: 2}, true},
		{"split would not fit inline", map[binding.Ports]uint32{{Lo: 1, Hi: 100}: 1, {Lo: 50, Hi: 60}: 1, {Lo: 200, Hi: 200}: 2,
			{Lo: 300, Hi: 300}: 2, {Lo: 400, Hi: 400}: 2, {Lo: 500, Hi: 500}: 2, {Lo: 600, Hi: 600}: 2}, false},
		{"adjacent single ports of one label", map[binding.Ports]uint32{{Lo: 80, Hi: 80}: 1, {Lo: 81, Hi: 81}: 1, {Lo: 8000, Hi: 8999}: 1}, true},
		{"single port inside a range of its label", map[binding.Ports]uint32{{Lo: 8000, Hi: 8999}: 1, {Lo: 8080, Hi: 8080}: 1}, true},
		{"every port", map[binding.Ports]uint32{binding.AnyPort: 1, {Lo: 443, Hi: 443}: 1}, true},
	} {
		c, err := compile(asList(tc.ports))
		if err != nil {
			t.Fatal(err)
		}
		if c.bounds != tc.want {
			t.Errorf("%s: bounds %v, want %v (segments %v)", tc.name, c.bounds, tc.want, c.segs)
		}
	}
	// In a table: single ports go to the exact-port map, so they no
	// longer split the ranges' segments.
	ports := map[binding.Ports]uint32{}
	for i := range 8 {
		lo := uint16(1000 + 100*i)
		ports[binding.Ports{Lo: lo, Hi: lo + 49}] = uint32(1 + i%2)
		ports[binding.Ports{Lo: lo + 10, Hi: lo + 10}] = 3
	}
	ports[binding.Ports{Lo: 1000, Hi: 1049}] = 1
	ports[binding.Ports{Lo: 1000, Hi: 1020}] = 1 // nests at the start, one label
	c, err := compile(asList(ports))
	if err != nil {
		t.Fatal(err)
	}
	if !c.useTable() || !c.bounds || len(c.segs) != 9 {
		t.Errorf("table %v: bounds %v, want true, split into 9 segments: %v", c.useTable(), c.bounds, c.segs)
	}
}
