package dispatch

import (
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Whatever arrives while the rest of a large change runs (see exclusive)
// waits for it or reads only what it does not write: every read and
// change of this dispatcher and another dispatcher of the same state (as
// another process would) wait; the Diff the change returned and traffic
// do not. Each sees the new set. The rest is held at one of its steps
// until the Diff is read and the traffic answered. Meant to run with
// -race.
func TestOperationsDuringRest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "a", e.tcpServer("a", "127.0.0.1:0"))
	probe := binding.Binding{Label: "a", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.1.0.0/24"), Ports: binding.AnyPort}
	bs := nestedFiller(largeChange*8/3+8, []binding.Binding{probe})
	binding.Sort(bs)
	extra := binding.Binding{Label: "b", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.2.0.0/24"), Ports: binding.AnyPort}

	release := make(chan struct{})
	e.d.crash = func(point string) bool {
		if point == "data-path" { // in the rest only
			<-release
		}
		return false
	}
	diff, err := e.d.ReplaceSeq(len(bs), binding.List(bs).All, []byte("s1"), false)
	if err != nil {
		t.Fatal(err)
	}
	var free, wg sync.WaitGroup
	run := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil {
				t.Errorf("%s during the rest: %v", name, err)
			}
		}()
	}
	runFree := func(name string, fn func() error) {
		free.Add(1)
		go func() {
			defer free.Done()
			if err := fn(); err != nil {
				t.Errorf("%s during the rest: %v", name, err)
			}
		}()
	}
	runFree("the diff", func() error {
		var added []binding.Binding
		for b := range diff.Added {
			added = append(added, *b)
		}
		if na, nr := diff.Len(); na != len(bs) || nr != 0 || !slices.Equal(added, bs) {
			t.Errorf("the diff adds %d (%d listed) and removes %d, want %d and 0", na, len(added), nr, len(bs))
		}
		return nil
	})
	run("Bindings", func() error {
		got, err := e.d.Bindings()
		if err == nil && !slices.Equal(slices.DeleteFunc(got, func(b binding.Binding) bool { return b == extra }), bs) {
			t.Errorf("Bindings lists %d bindings, want the new %d", len(got), len(bs))
		}
		return err
	})
	run("BindingCounts", func() error {
		counts, err := e.d.BindingCounts()
		n := 0
		for l, c := range counts {
			if l != "b" {
				n += c
			}
		}
		if err == nil && n != len(bs) {
			t.Errorf("BindingCounts counts %d bindings, want %d", n, len(bs))
		}
		return err
	})
	run("Counters", func() error { _, _, err := e.d.Counters(); return err })
	run("Destinations", func() error { _, err := e.d.Destinations(); return err })
	run("LabelID", func() error {
		if _, ok, err := e.d.LabelID(bs[len(bs)-1].Label); err != nil || !ok {
			t.Errorf("LabelID(%s): ok %v, %v", bs[len(bs)-1].Label, ok, err)
		}
		return nil
	})
	run("Settings", func() error {
		s, ok, err := e.d.Settings()
		if err == nil && (!ok || string(s) != "s1") {
			t.Errorf("Settings: %q, %v; want s1", s, ok)
		}
		return err
	})
	run("Register", func() error { _, err := e.d.Register("b", e.tcpServer("b", "127.0.0.2:0")); return err })
	run("AddBindings", func() error { _, err := e.d.AddBindings(extra); return err })
	run("KeepLabel", func() error { _, err := e.d.KeepLabel("kept"); return err })
	run("another dispatcher", func() error {
		ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
		if err != nil {
			return err
		}
		defer ro.Close()
		counts, err := ro.BindingCounts()
		if err == nil && counts["a"] == 0 {
			t.Errorf("another dispatcher counts no binding of a: %v", counts)
		}
		return err
	})
	runFree("traffic", func() error {
		if got, _, err := e.dialLabel("10.1.0.7:80"); err != nil || got != "a" {
			t.Errorf("the probe reached %q (%v), want a", got, err)
		}
		return nil
	})
	free.Wait()
	if e.d.mu.TryLock() {
		e.d.mu.Unlock()
		t.Error("the rest of the change does not hold the dispatcher's lock")
	}
	close(release)
	wg.Wait()
	if t.Failed() {
		return
	}

	// A second large change and Close at once: Close waits for its rest,
	// and the next Open finds it whole, idle and clean.
	for i := range bs {
		if bs[i] != probe {
			bs[i].Label = "c"
		}
	}
	if _, err := e.d.ReplaceSeq(len(bs), binding.List(bs).All, []byte("s2"), false); err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	c, dirty, got := e.onDisk()
	if c.State != commitIdle || dirty != 0 {
		t.Errorf("after Close the state is %d, dirty %d; want idle and clean", c.State, dirty)
	}
	if !slices.Equal(got, bs) {
		t.Errorf("after Close: %d bindings, want the second change's %d", len(got), len(bs))
	}
}
