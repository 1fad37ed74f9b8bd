package dispatch

import (
	"errors"
	"fmt"
	"github.com/cilium/ebpf"
	"net/netip"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// crashSets are two binding sets that differ in most bindings and in the
// label of the probe 10.1.0.0/24, with settings of their own.
func crashSets() (old, nw []binding.Binding) {
	for i := range 300 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 50, byte(i / 200), byte(i)}), 32)
		old = append(old, binding.Binding{Label: fmt.Sprintf("o%d", i%7), Protocol: binding.TCP, Prefix: p, Ports: binding.Ports{Lo: 80, Hi: 80}})
		// Ranges, single ports and every port of one prefix, so that
		// groups need the exact-port map and tables.
		q := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 60, 0, 0}), 24)
		nw = append(nw, binding.Binding{Label: fmt.Sprintf("n%d", i%5), Protocol: binding.TCP, Prefix: q, Ports: binding.Ports{Lo: uint16(1000 + 2*i), Hi: uint16(1000 + 2*i)}})
		if i%3 == 0 {
			nw = append(nw, old[i])
		}
	}
	probe := netip.MustParsePrefix("10.1.0.0/24")
	old = append(old, binding.Binding{Label: "old", Protocol: binding.TCP, Prefix: probe, Ports: binding.AnyPort})
	nw = append(nw, binding.Binding{Label: "new", Protocol: binding.TCP, Prefix: probe, Ports: binding.AnyPort})
	binding.Sort(old)
	binding.Sort(nw)
	return old, nw
}

// A change stopped at any point of its commit, as a crash would stop it,
// leaves a record from which a restarted dispatcher (and a read-only one
// before it) recovers exactly the old set and settings or exactly the new
// ones, the old ones until the commit point and the new ones from it on;
// traffic to the probe then reaches that set's label, and the next change
// works.
func TestInterruptedChangeRecoversOldOrNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "old", e.tcpServer("old", "127.0.0.1:0"))
	mustRegister(t, e.d, "new", e.tcpServer("new", "127.0.0.1:0"))
	old, nw := crashSets()
	oldSettings, newSettings := []byte("old settings"), make([]byte, 3*settingsChunk+17)
	for i := range newSettings {
		newSettings[i] = byte(i)
	}
	if _, _, err := e.d.Replace(old, oldSettings, false); err != nil {
		t.Fatal(err)
	}

	// The points in the order a change passes them. A change after a
	// recovery first makes the record's other generation whole (sync).
	points := []struct {
		name string
		nth  int
		new  bool
	}{
		{"begun", 1, false}, {"dirty", 1, false},
		{"sync-deleted", 1, false}, {"record-next-deleted", 1, false},
		{"data-groups", 1, false}, {"data-next-written", 1, false},
		{"record-next", 1, false}, {"flipped", 1, true}, {"data-next", 1, true},
		{"data-path", 1, true}, {"record-old-deleted", 1, true}, {"record-old", 1, true},
		{"idle", 1, true},
	}
	d := e.d
	sets := [2][]binding.Binding{old, nw}
	settings := [2][]byte{oldSettings, newSettings}
	cur := 0 // the set in force
	for _, p := range points {
		for range 2 {
			from, fromSettings := sets[cur], settings[cur]
			to, toSettings := sets[cur^1], settings[cur^1]
			seen := 0
			d.crash = func(point string) bool {
				if point == p.name {
					seen++
				}
				return point == p.name && seen == p.nth
			}
			if _, _, err := d.Replace(to, toSettings, false); !errors.Is(err, errCrashPoint) {
				t.Fatalf("%s #%d: change: %v, want the simulated crash", p.name, p.nth, err)
			}
			d.Close()
			want, wantSettings, wantLabel := from, fromSettings, ""
			if p.new {
				want, wantSettings = to, toSettings
				cur ^= 1
			}
			for _, b := range want {
				if b.Prefix == netip.MustParsePrefix("10.1.0.0/24") {
					wantLabel = b.Label
				}
			}
			check := func(who string, d *Dispatcher) {
				t.Helper()
				bs, err := d.Bindings()
				if err != nil {
					t.Fatalf("%s #%d: %s bindings: %v", p.name, p.nth, who, err)
				}
				if !slices.Equal(bs, want) {
					t.Fatalf("%s #%d: %s recovered %d bindings, want the %d of the %s set", p.name, p.nth, who, len(bs), len(want), map[bool]string{false: "old", true: "new"}[p.new])
				}
				s, ok, err := d.Settings()
				if err != nil || !ok || !slices.Equal(s, wantSettings) {
					t.Fatalf("%s #%d: %s settings: %d bytes, %v %v; want those of the same set", p.name, p.nth, who, len(s), ok, err)
				}
			}
			d = e.reopen(check)
			if label, _, err := e.dialLabel("10.1.0.7:80"); err != nil || label != wantLabel {
				t.Fatalf("%s #%d: probe reached %q (%v), want %q", p.name, p.nth, label, err, wantLabel)
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

// State of a build before the record had generations (sy_bindings alone)
// is adopted with its bindings.
func TestRecordFromOlderBuild(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, _ := crashSets()
	if _, err := e.d.AddBindings(old...); err != nil {
		t.Fatal(err)
	}
	// What a build without generations leaves: no sy_commit, sy_bindings
	// as the record, and a stale sy_bindings_b.
	if err := e.d.rec.commit.Unpin(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.rec.bindingsB.BatchDelete([]dispatchSyBindingKey{bindingMapKey(old[0].Key())}, nil); err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if bs, err := ro.Bindings(); err != nil || !slices.Equal(bs, old) {
		t.Fatalf("read-only on older state: %d bindings (%v), want %d", len(bs), err, len(old))
	}
	if _, ok, err := ro.Settings(); ok || err != nil {
		t.Fatalf("read-only settings on older state: ok %v, %v; want none", ok, err)
	}
	d := e.open()
	if bs, err := d.Bindings(); err != nil || !slices.Equal(bs, old) {
		t.Fatalf("after upgrade: %d bindings (%v), want %d", len(bs), err, len(old))
	}
	// After the next change both generations hold the set.
	more, _ := binding.Parse("more", "udp", "10.9.0.0/16", "53")
	if _, err := d.AddBindings(more); err != nil {
		t.Fatal(err)
	}
	for gen := range uint32(2) {
		rec, err := readBindingRecord(d.bindingsOf(gen))
		if err != nil || len(rec) != len(old)+1 {
			t.Fatalf("generation %d holds %d bindings (%v), want %d", gen, len(rec), err, len(old)+1)
		}
	}
}

// A commit record no build wrote is refused, not read as some set.
func TestBadCommitRecordRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "10.1.0.0/24", "*")
	if err := e.d.writeCommit(commitVal{Gen: 7}); err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	_, err := Open(e.ns.Path(), Options{Root: e.root})
	if !errors.Is(err, errBadRecord) {
		t.Fatalf("open with a bad commit record: %v, want errBadRecord", err)
	}
}

// FuzzCommitRecord: any value of sy_commit is either refused or names a
// generation and settings lengths that the reader can use.
func FuzzCommitRecord(f *testing.F) {
	f.Add(uint32(0), uint32(0), uint32(0), uint32(0))
	f.Add(uint32(1), uint32(commitFlipped), uint32(5), uint32(1))
	f.Add(uint32(2), uint32(9), uint32(1<<31), uint32(0))
	f.Fuzz(func(t *testing.T, gen, state, s0, s1 uint32) {
		c := commitVal{Gen: gen, State: state, Settings: [2]uint32{s0, s1}}
		if err := c.check(); err != nil {
			if !errors.Is(err, errBadRecord) {
				t.Fatalf("check %+v: %v, not errBadRecord", c, err)
			}
			return
		}
		if c.Gen > 1 || c.State > commitSync {
			t.Fatalf("check passed %+v", c)
		}
		for _, n := range c.Settings {
			if n > 0 && (n-1+settingsChunk-1)/settingsChunk > maxSettingsChunks {
				t.Fatalf("check passed settings of %d bytes in %+v", n-1, c)
			}
		}
	})
}

// FuzzBindingRecordKey: any key of a binding record is refused, or reads
// as a valid binding that is written as the same key.
func FuzzBindingRecordKey(f *testing.F) {
	k := bindingMapKey(binding.Key{Protocol: binding.UDP, Prefix: netip.MustParsePrefix("2001:db8::/64"), Ports: binding.Ports{Lo: 53, Hi: 53}})
	f.Add(k.Proto, k.Family, k.Plen, k.Pad, k.Addr[0], k.Addr[1], k.Addr[2], k.Addr[3], k.Lo, k.Hi)
	f.Add(uint8(0), uint8(0), uint8(33), uint8(0), uint32(1), uint32(0), uint32(0), uint32(0), uint16(9), uint16(1))
	f.Add(uint8(0), uint8(0), uint8(24), uint8(0), uint32(0x0a0000ff), uint32(0), uint32(0), uint32(0), uint16(0), uint16(65535))
	f.Fuzz(func(t *testing.T, proto, family, plen, pad uint8, a0, a1, a2, a3 uint32, lo, hi uint16) {
		mk := dispatchSyBindingKey{Proto: proto, Family: family, Plen: plen, Pad: pad, Addr: [4]uint32{a0, a1, a2, a3}, Lo: lo, Hi: hi}
		key, err := bindingFromMapKey(&mk)
		if err != nil {
			if !errors.Is(err, errBadRecord) {
				t.Fatalf("key %+v: %v, not errBadRecord", mk, err)
			}
			return
		}
		b := binding.Binding{Label: "x", Protocol: key.Protocol, Prefix: key.Prefix, Ports: key.Ports}
		if err := b.Validate(); err != nil {
			t.Fatalf("key %+v read as invalid %s: %v", mk, b, err)
		}
		if bindingMapKey(key) != mk {
			t.Fatalf("key %+v read as %s, which is written as %+v", mk, key, bindingMapKey(key))
		}
	})
}

// readBindingRecord reads one generation's binding record whole.
func readBindingRecord(m *ebpf.Map) (map[dispatchSyBindingKey]uint32, error) {
	out, err := readAll[dispatchSyBindingKey, uint32](m)
	if err != nil {
		return nil, fmt.Errorf("read bindings: %w", err)
	}
	return out, nil
}
