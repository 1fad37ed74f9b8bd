package dispatch

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// A change of many groups returns at its commit point with the new set in
// force. The rest of it, the old generations, is done before the next
// operation and before Close returns, so that the state it leaves is
// idle and clean; a crash in that rest leaves the new set in force, and a
// restart recovers it.
func TestLargeChangeReturnsAtCommitPoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, l := range []string{"a", "b"} {
		mustRegister(t, e.d, l, e.tcpServer(l, "127.0.0.1:0"))
	}
	probe := netip.MustParsePrefix("10.1.0.0/24")
	set := func(label string) []binding.Binding {
		// Every group changes between the two labels' sets, a large
		// change (the filler has 3 groups in 8 bindings).
		bs := nestedFiller(largeChange*8/3+8, []binding.Binding{{Protocol: binding.TCP, Prefix: probe, Ports: binding.AnyPort}})
		for i := range bs {
			bs[i].Label = label
		}
		binding.Sort(bs)
		return bs
	}
	state := func() (commitVal, uint32) {
		t.Helper()
		c, dirty, _ := e.onDisk()
		return c, dirty
	}

	d := e.d
	var idle atomic.Bool
	for i, label := range []string{"a", "b"} {
		want := set(label)
		idle.Store(false)
		d.crash = func(point string) bool {
			if point == "idle" {
				idle.Store(true)
			}
			return false
		}
		if _, _, err := d.Replace(want, []byte(label), false); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		// Settle waits for the rest, which writes the record idle
		// last (the rest takes long enough at this size that a Settle
		// that did not wait fails here; state() would not, as it
		// takes the lock the rest holds).
		d.Settle()
		if !idle.Load() {
			t.Fatalf("change %d: Settle returned before the rest wrote the record idle", i)
		}
		if got, _, err := e.dialLabel("10.1.0.7:80"); err != nil || got != label {
			t.Fatalf("change %d: the probe reached %q (%v) when the change returned, want %q", i, got, err, label)
		}
		if bs, err := d.Bindings(); err != nil || !slices.Equal(bs, want) {
			t.Fatalf("change %d: the next operation lists %d bindings (%v), want %d", i, len(bs), err, len(want))
		}
		d.Close()
		if c, dirty := state(); c.State != commitIdle || dirty != 0 {
			t.Fatalf("change %d: after Close the state is %d, dirty %d; want idle and clean", i, c.State, dirty)
		}
		d = e.open()
	}

	// A crash in the rest of a change: the change returned, in force.
	d.crash = func(point string) bool { return point == "record-old" }
	want := set("a")
	if _, _, err := d.Replace(want, []byte("a"), false); err != nil {
		t.Fatalf("change with a crash after its commit point: %v", err)
	}
	d.Close()
	if c, dirty := state(); c.State != commitFlipped || dirty != 1 {
		t.Fatalf("after a crash in the rest the state is %d, dirty %d; want flipped and dirty", c.State, dirty)
	}
	d = e.open()
	if bs, err := d.Bindings(); err != nil || !slices.Equal(bs, want) {
		t.Fatalf("restarted after the crash: %d bindings (%v), want the new %d", len(bs), err, len(want))
	}
	if got, _, err := e.dialLabel("10.1.0.7:80"); err != nil || got != "a" {
		t.Fatalf("restarted after the crash: the probe reached %q (%v), want a", got, err)
	}
	// The recovery rewrote the data path; the record's old generation
	// is made whole by the next change.
	if _, dirty := state(); dirty != 0 {
		t.Fatal("the data path is still marked dirty after the restart's recovery")
	}
	want = set("b")
	if _, _, err := d.Replace(want, []byte("b"), false); err != nil {
		t.Fatalf("change after the recovery: %v", err)
	}
	d.Close()
	if c, dirty := state(); c.State != commitIdle || dirty != 0 {
		t.Fatalf("after the change that followed the recovery the state is %d, dirty %d; want idle and clean", c.State, dirty)
	}
}

// onDisk reads the commit state, the data path's dirty mark and the
// bindings as a restarted process would find them, with a read-only
// dispatcher, which repairs nothing.
func (e *env) onDisk() (c commitVal, dirty uint32, bs []binding.Binding) {
	e.t.Helper()
	ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	defer ro.Close()
	if c, err = ro.readCommit(); err != nil {
		e.t.Fatal(err)
	}
	var cfg configVal
	if err := ro.cfg.Lookup(uint32(0), &cfg); err != nil {
		e.t.Fatal(err)
	}
	if bs, err = ro.Bindings(); err != nil {
		e.t.Fatal(err)
	}
	return c, cfg.Dirty, bs
}
