package dispatch

import (
	"errors"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// A recovery stopped, as a crash would stop it, at any point of its
// rewrite of the data path (either generation, before or after it switches
// the program) leaves state that the next Open recovers: the same set,
// with its settings, both data generations holding it alone, and traffic
// following it. The interrupted changes are stopped before their commit
// point (the old set is recovered) and after it (the new one).
func TestInterruptedRecoveryRecovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, l := range []string{"old", "new"} {
		mustRegister(t, e.d, l, e.tcpServer(l, "127.0.0.1:0"))
	}
	old, nw := crashSets()
	sets := [2][]binding.Binding{old, nw}
	settings := [2][]byte{[]byte("old settings"), []byte("new settings")}
	if _, _, err := e.d.Replace(old, settings[0], false); err != nil {
		t.Fatal(err)
	}
	cur := 0
	d := e.d
	for _, change := range []struct {
		point string
		new   bool
	}{{"data-next-written", false}, {"flipped", true}} {
		for _, p := range []struct {
			name string
			nth  int
		}{
			// The generation the program does not read, the switch,
			// then the other generation.
			{"recover-ports", 1}, {"recover-prefixes", 1}, {"data-next", 1},
			{"recover-ports", 2}, {"recover-prefixes", 2},
		} {
			what := change.point + " then " + p.name
			// Another process's change, stopped.
			o := e.open()
			o.crash = func(point string) bool { return point == change.point }
			if _, _, err := o.Replace(sets[cur^1], settings[cur^1], false); !errors.Is(err, errCrashPoint) {
				t.Fatalf("%s: change: %v, want the simulated crash", what, err)
			}
			o.Close()
			if change.new {
				cur ^= 1
			}
			// This one recovers at its next change, and is stopped.
			seen := 0
			d.crash = func(point string) bool {
				if point == p.name {
					seen++
				}
				return point == p.name && seen == p.nth
			}
			if err := d.SetSettings(settings[cur]); !errors.Is(err, errCrashPoint) {
				t.Fatalf("%s: recovery: %v, want the simulated crash", what, err)
			}
			d.Close()
			d = e.open()
			bs, err := d.Bindings()
			if err != nil || !slices.Equal(bs, sets[cur]) {
				t.Fatalf("%s: recovered %d bindings (%v), want the %d of the %s set", what, len(bs), err, len(sets[cur]), map[bool]string{false: "old", true: "new"}[change.new])
			}
			if s, ok, err := d.Settings(); err != nil || !ok || !slices.Equal(s, settings[cur]) {
				t.Fatalf("%s: settings %q, %v %v; want %q", what, s, ok, err, settings[cur])
			}
			e.checkDial("10.1.0.7:80", []string{"old", "new"}[cur])
			checkDataGenerations(t, d, len(sets[cur]))
			// Back to the old set for the next point.
			if _, _, err := d.Replace(old, settings[0], false); err != nil {
				t.Fatalf("%s: the next change: %v", what, err)
			}
			cur = 0
		}
	}
}
