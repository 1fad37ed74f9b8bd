package dispatch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// State left by a build whose per-label counters had one field fewer and
// fewer entries is migrated on open: the counts survive, the new field
// starts at zero, the program is replaced, and dispatching goes on.
func TestMigrateChangedLayout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "10.1.0.0/24", "*")
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	for range 3 {
		if label, _, err := e.dialLabel("10.1.0.1:80"); err != nil || label != "web" {
			t.Fatalf("before: %q %v", label, err)
		}
	}
	id, _, _ := e.d.LabelID("web")

	// Pin an old-layout counters map in place of the current one: values
	// of three u64 (no bad_socket), 8192 entries, holding this label's
	// counts.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 24, MaxEntries: 8192})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	cpus, _ := ebpf.PossibleCPU()
	vals := make([][3]uint64, cpus)
	vals[0] = [3]uint64{3, 3, 0}
	if err := old.Put(id, vals); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(e.d.Dir(), "sy_counters")
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	e.d.Close()

	before := countSkLookupLinks(t, e)
	d := e.open()
	e.d = d
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.ValueSize() != 32 || m.MaxEntries() != maxLabels {
		t.Fatalf("pinned counters after open: value %d bytes, %d entries; want this build's layout", m.ValueSize(), m.MaxEntries())
	}
	cs, _, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c := cs["web"]; c.Lookups != 3 || c.Hits != 3 || c.BadSocket != 0 {
		t.Fatalf("migrated counters %+v, want 3 lookups and 3 hits", c)
	}
	if label, _, err := e.dialLabel("10.1.0.9:443"); err != nil || label != "web" {
		t.Fatalf("after migration: %q %v", label, err)
	}
	if cs, _, _ := d.Counters(); cs["web"].Hits != 4 {
		t.Fatalf("the program does not count into the migrated map: %+v", cs["web"])
	}
	if after := countSkLookupLinks(t, e); before != 1 || after != 1 {
		t.Fatalf("sk_lookup programs %d before, %d after", before, after)
	}
}

// A change that cannot be migrated is refused with ErrIncompatible and
// leaves the state alone.
func TestMigrateRefusesKeyChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "10.1.0.0/24", "*")
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	pin := filepath.Join(e.d.Dir(), "sy_ports")
	os.Remove(pin)
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	_, err = Open(e.ns.Path(), Options{Root: e.root})
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("open with a changed key: %v, want ErrIncompatible", err)
	}
}
