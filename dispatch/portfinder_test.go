package dispatch

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// portFinder answers as findPorts, reading each list through, does: for
// several lists that grow by appends of port sets they lack, between
// calls, across the length from which it indexes a list, for port sets
// present and absent, and for a list that an edit only reads.
func TestPortFinderIsFindPorts(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	randPorts := func() binding.Ports {
		switch r.IntN(8) {
		case 0:
			return binding.AnyPort
		case 1:
			lo := uint16(1 + r.IntN(200))
			return binding.Ports{Lo: lo, Hi: lo + uint16(r.IntN(50))}
		}
		p := uint16(1 + r.IntN(300))
		return binding.Ports{Lo: p, Hi: p}
	}
	for round := range 50 {
		find := portFinder[int]{}
		lists := make([][]portLabel, 4)
		for range 2000 {
			k := r.IntN(len(lists))
			p := randPorts()
			got, want := find.find(k, lists[k], p), findPorts(lists[k], p)
			if got != want {
				t.Fatalf("round %d: list %d of %d: find(%v) = %d, findPorts %d", round, k, len(lists[k]), p, got, want)
			}
			if want < 0 && r.IntN(3) > 0 {
				lists[k] = append(lists[k], portLabel{p, "l"})
			}
		}
		for k, ps := range lists {
			if len(ps) < longPorts {
				t.Fatalf("round %d: list %d grew to %d only, not past %d", round, k, len(ps), longPorts)
			}
		}
	}
}

// A prefix bound port by port, longer than the lists portFinder reads
// through: bind and unbind answer as they did at 3d0ec44, when every list
// was read through (the same errors, and nothing changes on one).
func TestPortByPortEdits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	b := func(label string, port uint16) binding.Binding {
		return binding.Binding{Label: label, Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.3.0.1/32"), Ports: binding.Ports{Lo: port, Hi: port}}
	}
	var all []binding.Binding
	for p := range uint16(2 * longPorts) {
		all = append(all, b("a", 1000+p))
	}
	if _, err := e.d.AddBindings(all...); err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		if got, err := e.d.Bindings(); err != nil || len(got) != len(all) {
			t.Errorf("%s changed the bindings: %d of %d left (%v)", what, len(got), len(all), err)
		}
	}
	last := 1000 + 2*longPorts - 1
	for _, tc := range []struct {
		name string
		bs   []binding.Binding
		want string
	}{
		{"wrong label", []binding.Binding{b("b", uint16(last))},
			"unbind b tcp 10.3.0.1/32 " + strconv.Itoa(last) + ": not found: tcp 10.3.0.1/32 " + strconv.Itoa(last) + " is bound to label a, not b"},
		{"twice", []binding.Binding{b("a", 1001), b("a", 1001)},
			"unbind a tcp 10.3.0.1/32 1001: not found: no such binding"},
		{"removed, then with another label", []binding.Binding{b("a", 1002), b("b", 1002)},
			"unbind b tcp 10.3.0.1/32 1002: not found: no such binding"},
		{"absent", []binding.Binding{b("a", 1003), b("a", 999)},
			"unbind a tcp 10.3.0.1/32 999: not found: no such binding"},
	} {
		err := e.d.RemoveBindings(tc.bs...)
		if !errors.Is(err, ErrNotFound) || err.Error() != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
		unchanged(tc.name)
	}
	if _, err := e.d.AddBindings(b("a", 2000), b("b", 1010)); !errors.Is(err, ErrConflict) ||
		err.Error() != "bind b tcp 10.3.0.1/32 1010: conflicting binding: tcp 10.3.0.1/32 1010 is bound to label a; unbind it first" {
		t.Errorf("bind of a bound port to another label: %v", err)
	}
	unchanged("a refused bind")
	if added, err := e.d.AddBindings(b("a", 1010), b("a", 2000), b("a", 2000)); err != nil || len(added) != 1 || added[0] != b("a", 2000) {
		t.Errorf("bind of a bound port and a new one twice: added %v, %v; want only the new one", added, err)
	}
	if err := e.d.RemoveBindings(b("a", 2000), b("a", 1000), b("a", uint16(last))); err != nil {
		t.Fatal(err)
	}
	got, err := e.d.Bindings()
	if want := all[1 : len(all)-1]; err != nil || !slices.Equal(got, want) {
		t.Errorf("after unbinding the first and the last: %d bindings (%v), want %d", len(got), err, len(want))
	}
}
