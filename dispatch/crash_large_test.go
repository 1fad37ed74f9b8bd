package dispatch

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// largeCrashSet is a set of more than largeChange groups, all of label l:
// for "b" every other block of the filler moves to 21.0.0.0/8, so that a
// change between the two sets adds, removes and relabels groups.
func largeCrashSet(label string) []binding.Binding {
	probe := binding.Binding{Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.1.0.0/24"), Ports: binding.AnyPort}
	bs := nestedFiller(largeChange*8/3+8, []binding.Binding{probe})
	for i := range bs {
		bs[i].Label = label
		a := bs[i].Prefix.Addr().As4()
		if label == "b" && a[0] == 20 && (a[3]>>3)%2 == 0 {
			a[0] = 21
			bs[i].Prefix = netip.PrefixFrom(netip.AddrFrom4(a), bs[i].Prefix.Bits())
		}
	}
	binding.Sort(bs)
	return bs
}

// A large change (more groups than largeChange: its groups compiled on
// every CPU, the record's next generation written beside the data path's
// next groups) stopped at each point of its commit, as a crash would stop
// it, leaves a record from which a restarted dispatcher recovers exactly
// the old set or exactly the new one, the old until the commit point and
// the new from it on, no binding lost; and the data path then agrees with
// what it recovered, for the probe over a real connection and for a
// sample of the filler.
func TestInterruptedLargeChangeRecoversOldOrNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cookies := map[uint64]string{}
	for _, l := range []string{"a", "b"} {
		dest, err := e.d.Register(l, e.tcpServer(l, "127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		cookies[dest.Cookie] = l
	}
	sets := [2][]binding.Binding{largeCrashSet("a"), largeCrashSet("b")}
	settings := [2][]byte{[]byte("a"), []byte("b")}
	if _, _, err := e.d.Replace(sets[0], settings[0], false); err != nil {
		t.Fatal(err)
	}
	// A sample of destinations of both sets' filler, and around it.
	r := rand.New(rand.NewPCG(5, 6))
	var sample []netip.AddrPort
	ports := []uint16{22, 53, 80, 443, 1000, 8000, 9999, 10000}
	for range 40 {
		x := uint32(20+r.IntN(2))<<24 + r.Uint32N(uint32(len(sets[0])/8*8+64))
		sample = append(sample, netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}), ports[r.IntN(len(ports))]))
	}

	// The points in the order a change passes them; before the commit
	// point the record's and the data path's writes run side by side.
	// From data-path on the crash is in the rest of the change, which
	// runs after Replace returns, in force (see
	// TestLargeChangeReturnsAtCommitPoint), and before Close returns.
	points := []struct {
		name      string
		new, rest bool
	}{
		{"begun", false, false}, {"dirty", false, false}, {"record-next-deleted", false, false},
		{"data-groups", false, false}, {"data-next-written", false, false},
		{"record-next", false, false}, {"flipped", true, false}, {"data-next", true, false},
		{"data-path", true, true}, {"record-old-deleted", true, true}, {"record-old", true, true},
		{"idle", true, true},
	}
	d := e.d
	cur := 0
	for _, p := range points {
		seen := 0
		d.crash = func(point string) bool {
			if point == p.name {
				seen++
			}
			return point == p.name && seen == 1
		}
		_, _, err := d.Replace(sets[cur^1], settings[cur^1], false)
		if p.rest && err != nil || !p.rest && !errors.Is(err, errCrashPoint) {
			t.Fatalf("%s: change: %v, want the simulated crash", p.name, err)
		}
		d.Close()
		if seen == 0 {
			t.Fatalf("%s: the change never passed the point", p.name)
		}
		if p.new {
			cur ^= 1
		}
		want := sets[cur]
		check := func(who string, d *Dispatcher) {
			t.Helper()
			bs, err := d.Bindings()
			if err != nil {
				t.Fatalf("%s: %s bindings: %v", p.name, who, err)
			}
			if !slices.Equal(bs, want) {
				t.Fatalf("%s: %s recovered %d bindings, want the %d of set %q", p.name, who, len(bs), len(want), want[0].Label)
			}
			s, ok, err := d.Settings()
			if err != nil || !ok || !slices.Equal(s, settings[cur]) {
				t.Fatalf("%s: %s settings %q %v %v, want %q", p.name, who, s, ok, err, settings[cur])
			}
		}
		d = e.reopen(check)
		if label, _, err := e.dialLabel("10.1.0.7:80"); err != nil || label != want[0].Label {
			t.Fatalf("%s: probe reached %q (%v), want %q", p.name, label, err, want[0].Label)
		}
		for _, ap := range sample {
			wantLabel := ""
			if ref, ok := binding.Lookup(want, binding.TCP, ap); ok {
				wantLabel = ref.Label
			}
			_, cookie := runLookup(t, d.objs.SyDispatch, lookupCtx(binding.TCP, ap))
			got := ""
			if cookie != 0 {
				got = cookies[cookie]
			}
			if got != wantLabel {
				t.Errorf("%s: %s reaches %q, the recovered set says %q", p.name, ap, got, wantLabel)
			}
		}
	}
	if _, _, err := d.Replace(sets[cur^1], settings[cur^1], false); err != nil {
		t.Fatalf("change after the recoveries: %v", err)
	}
	if bs, err := d.Bindings(); err != nil || !slices.Equal(bs, sets[cur^1]) {
		t.Fatalf("after the last change: %d bindings (%v), want %d", len(bs), err, len(sets[cur^1]))
	}
}
