package dispatch

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// A change writes the data path's next generation before its commit point,
// beside the record's next generation, and the data path's old generation
// beside the record's old one after it. Stopped in the data path's writes,
// as a crash stops it, it leaves the old set in force before the commit
// point and the new one after it, for a read-only dispatcher and for a
// restarted one, and traffic follows that set. What a change stopped before
// its commit point wrote to the generation the program did not read is
// gone: the next change, which touches none of its groups, leaves both data
// generations holding that next set alone, and an address only the stopped
// change bound is not dispatched.
func TestInterruptedDataPathWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, l := range []string{"old", "new", "n0"} {
		mustRegister(t, e.d, l, e.tcpServer(l, "127.0.0.1:0"))
	}
	old, nw := crashSets()
	sets := [2][]binding.Binding{old, nw}
	settings := [2][]byte{[]byte("old settings"), []byte("new settings")}
	if _, _, err := e.d.Replace(old, settings[0], false); err != nil {
		t.Fatal(err)
	}
	// 10.60.0.7:1010 is bound to n0 in the new set only; 10.1.0.7:80 goes
	// to "old" or "new" with the set; 10.3.0.0/24 is in neither.
	const onlyNew, probe, elsewhere = "10.60.0.7:1010", "10.1.0.7:80", "10.3.0.9:443"
	extra, err := binding.Parse("old", "tcp", "10.3.0.0/24", "*")
	if err != nil {
		t.Fatal(err)
	}
	d := e.d
	for _, p := range []struct {
		name string
		nth  int
		new  bool
	}{
		// The data path's next generation: its groups, then its lists.
		{"data-groups", 1, false}, {"data-next-written", 1, false},
		// The data path's old generation, after the flip.
		{"data-groups", 2, true},
	} {
		seen := 0
		d.crash = func(point string) bool {
			if point == p.name {
				seen++
			}
			return point == p.name && seen == p.nth
		}
		if _, _, err := d.Replace(nw, settings[1], false); !errors.Is(err, errCrashPoint) {
			t.Fatalf("%s #%d: change: %v, want the simulated crash", p.name, p.nth, err)
		}
		d.Close()
		in := 0
		if p.new {
			in = 1
		}
		check := func(who string, d *Dispatcher) {
			t.Helper()
			bs, err := d.Bindings()
			if err != nil || !slices.Equal(bs, sets[in]) {
				t.Fatalf("%s #%d: %s recovered %d bindings (%v), want the %d of the %s set", p.name, p.nth, who, len(bs), err, len(sets[in]), map[bool]string{false: "old", true: "new"}[p.new])
			}
			s, ok, err := d.Settings()
			if err != nil || !ok || !slices.Equal(s, settings[in]) {
				t.Fatalf("%s #%d: %s settings %q, %v %v; want %q", p.name, p.nth, who, s, ok, err, settings[in])
			}
		}
		d = e.reopen(check)
		if p.new {
			e.checkDial(probe, "new")
			e.checkDial(onlyNew, "n0")
			// Back to the old set for the next point.
			if _, _, err := d.Replace(old, settings[0], false); err != nil {
				t.Fatal(err)
			}
		} else {
			e.checkDial(probe, "old")
			e.checkDial(onlyNew, "")
		}
		// A change that touches none of the new set's groups.
		next := append(slices.Clone(old), extra)
		binding.Sort(next)
		if _, _, err := d.Replace(next, settings[0], false); err != nil {
			t.Fatalf("%s #%d: the next change: %v", p.name, p.nth, err)
		}
		e.checkDial(probe, "old")
		e.checkDial(elsewhere, "old")
		e.checkDial(onlyNew, "")
		checkDataGenerations(t, d, len(next))
		if _, _, err := d.Replace(old, settings[0], false); err != nil {
			t.Fatal(err)
		}
	}
}

// checkDataGenerations fails t unless the data path's two generations hold
// the same prefixes and exact ports, a prefix for each group of the
// bindings in force, which number bindings.
func checkDataGenerations(t *testing.T, d *Dispatcher, bindings int) {
	t.Helper()
	prefixes, err := readAll[dispatchSyPrefixKey, dispatchSyPrefixVal](d.objs.SyPrefixes)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := readAll[dispatchSyPortKey, uint32](d.objs.SyPorts)
	if err != nil {
		t.Fatal(err)
	}
	var gp [2]map[dispatchSyPrefixKey]bool
	var gq [2]map[dispatchSyPortKey]uint32
	for g := range 2 {
		gp[g], gq[g] = map[dispatchSyPrefixKey]bool{}, map[dispatchSyPortKey]uint32{}
	}
	for k := range prefixes {
		g := k.Gen
		k.Gen = 0
		gp[g][k] = true
	}
	for k, v := range ports {
		g := k.Prefix.Gen
		k.Prefix.Gen = 0
		gq[g][k] = v
	}
	if !maps.Equal(gp[0], gp[1]) || !maps.Equal(gq[0], gq[1]) {
		t.Fatalf("the data generations differ: %d and %d prefixes, %d and %d exact ports", len(gp[0]), len(gp[1]), len(gq[0]), len(gq[1]))
	}
	d.mu.Lock()
	m, err := d.read()
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if len(gp[0]) != len(m.groups) || m.count != bindings {
		t.Fatalf("the data path holds %d prefixes, the model %d groups of %d bindings; want %d bindings", len(gp[0]), len(m.groups), m.count, bindings)
	}
}
