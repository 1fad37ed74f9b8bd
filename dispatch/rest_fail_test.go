package dispatch

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// A large change whose rest fails (here at the record's old generation)
// is in force when it returns, and the next operation of the same
// dispatcher, without a restart, finishes it: it succeeds, and leaves the
// state idle and clean with both changes in force.
func TestNextOperationFinishesFailedRest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "a", e.tcpServer("a", "127.0.0.1:0"))
	probe := binding.Binding{Label: "a", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.1.0.0/24"), Ports: binding.AnyPort}
	bs := nestedFiller(largeChange*8/3+8, []binding.Binding{probe})
	binding.Sort(bs)
	failed := false
	e.d.crash = func(point string) bool {
		if point == "record-old" && !failed {
			failed = true
			return true
		}
		return false
	}
	if _, err := e.d.ReplaceSeq(len(bs), binding.List(bs).All, []byte("s1"), false); err != nil {
		t.Fatal(err)
	}
	extra := binding.Binding{Label: "b", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.2.0.0/24"), Ports: binding.AnyPort}
	if _, err := e.d.AddBindings(extra); err != nil {
		t.Fatalf("the operation after a failed rest: %v", err)
	}
	if !failed {
		t.Fatal("the rest did not reach record-old")
	}
	if n := e.d.Unfinished(); n != 1 {
		t.Errorf("Unfinished() = %d after one failed rest, want 1", n)
	}
	want := append(slices.Clone(bs), extra)
	binding.Sort(want)
	if got, err := e.d.Bindings(); err != nil || !slices.Equal(got, want) {
		t.Errorf("%d bindings (%v), want %d", len(got), err, len(want))
	}
	if s, ok, err := e.d.Settings(); err != nil || !ok || string(s) != "s1" {
		t.Errorf("settings %q, %v, %v; want s1", s, ok, err)
	}
	if got, _, err := e.dialLabel("10.1.0.7:80"); err != nil || got != "a" {
		t.Errorf("the probe reached %q (%v), want a", got, err)
	}
	e.d.Close()
	c, dirty, got := e.onDisk()
	if c.State != commitIdle || dirty != 0 {
		t.Errorf("the state is %d, dirty %d; want idle and clean", c.State, dirty)
	}
	if !slices.Equal(got, want) {
		t.Errorf("reopened: %d bindings, want %d", len(got), len(want))
	}
}
