package dispatch

import (
	"errors"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// State left inconsistent by an interrupted change is repaired only by a
// writable dispatcher making a change or reading: dry runs and read-only
// dispatchers see the recorded bindings and write nothing.
func TestReadOnlyLeavesDirtyState(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "10.1.0.0/24", "*")
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	web, _ := binding.Parse("web", "tcp", "10.1.0.0/24", "*")
	other, _ := binding.Parse("other", "tcp", "10.2.0.0/24", "*")

	// Interrupt a change: mark the state dirty and lose the prefix
	// entries of both generations.
	if err := e.d.writeConfig(func(c *configVal) { c.Dirty = 1; c.Serial++ }); err != nil {
		t.Fatal(err)
	}
	for gen := range uint32(2) {
		keys, err := prefixKeysOfGen(e.d.objs.SyPrefixes, gen)
		if err != nil {
			t.Fatal(err)
		}
		if err := batchDelete(e.d.objs.SyPrefixes, keys); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := func() (configVal, int) {
		t.Helper()
		var cfg configVal
		if err := e.d.cfg.Lookup(uint32(0), &cfg); err != nil {
			t.Fatal(err)
		}
		n := 0
		for gen := range uint32(2) {
			keys, err := prefixKeysOfGen(e.d.objs.SyPrefixes, gen)
			if err != nil {
				t.Fatal(err)
			}
			n += len(keys)
		}
		return cfg, n
	}
	dirty, _ := snapshot()
	unchanged := func(when string) {
		t.Helper()
		if cfg, n := snapshot(); cfg != dirty || n != 0 {
			t.Fatalf("%s: config %+v and %d prefix entries, want %+v and none", when, cfg, n, dirty)
		}
	}
	dryRun := func(d *Dispatcher, who string) {
		t.Helper()
		added, removed, err := d.ReplaceBindings([]binding.Binding{other}, true)
		if err != nil {
			t.Fatalf("%s dry run: %v", who, err)
		}
		if !slices.Equal(added, []binding.Binding{other}) || !slices.Equal(removed, []binding.Binding{web}) {
			t.Fatalf("%s dry run: added %v, removed %v; want %v and %v", who, added, removed, other, web)
		}
		unchanged(who + " dry run")
	}

	dryRun(e.d, "writable")

	ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
	if err != nil {
		t.Fatalf("open read-only: %v", err)
	}
	defer ro.Close()
	unchanged("read-only open")
	if bs, err := ro.Bindings(); err != nil || !slices.Equal(bs, []binding.Binding{web}) {
		t.Fatalf("read-only bindings: %v %v, want %v", bs, err, web)
	}
	if _, ok, err := ro.LabelID("web"); err != nil || !ok {
		t.Fatalf("read-only label id of web: ok %v err %v", ok, err)
	}
	dryRun(ro, "read-only")
	if _, err := ro.AddBindings(other); !errors.Is(err, errReadOnly) {
		t.Fatalf("read-only add: %v, want errReadOnly", err)
	}
	if err := ro.Remove(); !errors.Is(err, errReadOnly) {
		t.Fatalf("read-only remove: %v, want errReadOnly", err)
	}
	unchanged("read-only use")

	// A writable dispatcher repairs the state on its next read.
	if bs, err := e.d.Bindings(); err != nil || !slices.Equal(bs, []binding.Binding{web}) {
		t.Fatalf("bindings: %v %v, want %v", bs, err, web)
	}
	if cfg, n := snapshot(); cfg.Dirty != 0 || n != 2 {
		t.Fatalf("after repair: dirty %d, %d prefix entries; want 0 and 2", cfg.Dirty, n)
	}
	if label, _, err := e.dialLabel("10.1.0.1:80"); err != nil || label != "web" {
		t.Fatalf("after repair: %q %v", label, err)
	}
}
