package dispatch

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// The index puts each prefix where the program looks for it (its first
// bucket, else its second bucket if the first says so, else a bucket that
// sends the lookup to sy_prefixes), and a change rewrites every bucket whose
// value it changes: buckets kept as commit keeps them (only those
// indexDirty names) equal buckets computed afresh, through random changes
// that crowd a few buckets far past their ways.
func TestIndexPlacement(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 9))
	randKey := func() groupKey {
		var a [16]byte
		var p netip.Prefix
		proto := binding.TCP
		switch r.IntN(4) {
		case 0:
			a4 := [4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}
			p = netip.PrefixFrom(netip.AddrFrom4(a4), 32)
		case 1:
			a4 := [4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), 0}
			p = netip.PrefixFrom(netip.AddrFrom4(a4), 24)
			proto = binding.UDP
		case 2:
			copy(a[:], []byte{0x20, 0x01, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			p = netip.PrefixFrom(netip.AddrFrom16(a), 64)
		default:
			// A /128, which a slot holds only when its last 64 bits
			// are 0.
			copy(a[:], []byte{0x20, 0x01, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			if r.IntN(2) == 0 {
				a[15] = byte(1 + r.IntN(255))
			}
			p = netip.PrefixFrom(netip.AddrFrom16(a), 128)
			proto = binding.UDP
		}
		return keyOf(proto, p)
	}
	// n keys that f accepts.
	var pool []groupKey
	some := func(n int, f func(gk groupKey) bool) {
		for n > 0 {
			if gk := randKey(); f(gk) {
				pool = append(pool, gk)
				n--
			}
		}
	}
	// Crowd bucket 5; crowd the second bucket of one of its prefixes, so
	// that some of its prefixes fit in neither bucket; all but fill bucket
	// 1000, give it prefixes whose second bucket it is, and crowd the
	// first bucket of two of them with prefixes ordered before them, so
	// that they spill into 1000, and fit when there is room; crowd bucket ixBuckets-1 alone.
	some(14, func(gk groupKey) bool { return gk.bucket() == 5 })
	s := pool[0].second()
	some(12, func(gk groupKey) bool { return gk.bucket() == s })
	some(10, func(gk groupKey) bool { return gk.bucket() == 1000 })
	some(4, func(gk groupKey) bool { return gk.second() == 1000 })
	for _, z := range []groupKey{pool[len(pool)-1], pool[len(pool)-2]} {
		some(10, func(gk groupKey) bool { return gk.bucket() == z.bucket() && compareGroupKeys(gk, z) < 0 })
	}
	some(10, func(gk groupKey) bool { return gk.bucket() == ixBuckets-1 })
	// A group of random ports and labels; one in five needs sy_prefixes.
	newGroup := func() *group {
		ports := []portBinding{{binding.Ports{Lo: 53, Hi: 53}, uint32(1 + r.IntN(maxLabels-1))}}
		switch r.IntN(5) {
		case 0:
			ports = append(ports, portBinding{binding.Ports{Lo: 80, Hi: 80}, 3})
		case 1:
			ports = append(ports, portBinding{binding.AnyPort, uint32(1 + r.IntN(maxLabels-1))})
		case 2:
			ports = []portBinding{{binding.Ports{Lo: 8000, Hi: 8999}, 7}}
		}
		c, err := compile(ports)
		if err != nil {
			t.Fatal(err)
		}
		return &group{c: c}
	}

	m := newModel()
	kernel := map[uint32]dispatchSyIxBucket{}
	read := func(b uint32) dispatchSyIxBucket {
		if v, ok := kernel[b]; ok {
			return v
		}
		return dispatchSyIxBucket{Flags: ixbThisBuild} // as initIndex writes it
	}
	universe := map[uint32]bool{}
	for _, gk := range pool {
		universe[gk.bucket()] = true
		universe[gk.second()] = true
	}
	var seenSecond, seenOverflow, seenSpillIn bool
	for round := range 600 {
		var changes []groupChange
		picked := map[groupKey]bool{}
		for range 1 + r.IntN(8) {
			gk := pool[r.IntN(len(pool))]
			if picked[gk] {
				continue
			}
			picked[gk] = true
			c := groupChange{key: gk, old: m.groups[gk]}
			if c.old == nil || r.IntN(4) != 0 {
				c.new = newGroup()
			}
			changes = append(changes, c)
		}
		m.applyChanges(changes)
		for _, b := range m.indexDirty(changes) {
			kernel[b] = m.indexBucket(b)
		}
		for b := range universe {
			if got, want := read(b), m.indexBucket(b); got != want {
				t.Fatalf("round %d: bucket %d as changes left it:\n%+v\nwant, computed afresh:\n%+v", round, b, got, want)
			}
		}
		// Every prefix as the program finds it.
		for _, gk := range pool {
			g := m.groups[gk]
			mk := gk.mapKey(0)
			first := read(gk.bucket())
			s, found := findSlot(first, mk)
			if !found && first.Flags&ixbSecond != 0 && gk.short() {
				second := read(gk.second())
				s, found = findSlot(second, mk)
				if found {
					seenSpillIn = true
				}
			}
			switch {
			case g == nil && found:
				t.Fatalf("round %d: removed prefix %s is in a slot", round, gk.prefix())
			case g == nil:
			case found:
				if want := m.slot(gk); s != want {
					t.Fatalf("round %d: prefix %s has slot %+v, want %+v", round, gk.prefix(), s, want)
				}
				if !g.c.indexable() || !gk.short() {
					t.Fatalf("round %d: prefix %s, which a slot cannot resolve, is in one", round, gk.prefix())
				}
			case first.Flags&ixbOverflow == 0:
				t.Fatalf("round %d: prefix %s is in no slot and its first bucket %d (flags %#x) does not send the lookup on", round, gk.prefix(), gk.bucket(), first.Flags)
			}
			seenSecond = seenSecond || first.Flags&ixbSecond != 0
			seenOverflow = seenOverflow || (g != nil && g.c.indexable() && gk.short() && !found)
		}
	}
	if !seenSecond || !seenOverflow || !seenSpillIn {
		t.Fatalf("the changes never crowded a bucket enough: second %v, full %v, found in a second bucket %v", seenSecond, seenOverflow, seenSpillIn)
	}
}

// findSlot is the slot of b that holds the prefix of mk, as ix_probe
// matches it.
func findSlot(b dispatchSyIxBucket, mk dispatchSyPrefixKey) (ixSlot, bool) {
	if mk.Addr[2]|mk.Addr[3] != 0 {
		return ixSlot{}, false
	}
	kind := 1 + mk.Proto*2 + mk.Family
	for k := range ixWays {
		if s := b.get(k); s.addr0 == mk.Addr[0] && s.addr1 == mk.Addr[1] && s.plen == mk.Plen && s.kind == kind {
			return s, true
		}
	}
	return ixSlot{}, false
}

// An index pinned by a build of another layout (7011c58's: 65,536 buckets
// of four 36-byte slots per generation, whose flags this build's program
// must not trust) is replaced by an empty one rather than copied: a
// read-only reader answers from the records, and the next writable Open
// rebuilds the index, which the program then reads, dispatching throughout.
func TestIndexOfAnotherLayoutIsRebuilt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	mustRegister(t, e.d, "host", e.tcpServer("host", "127.0.0.1:0"))
	e.bind("web", "tcp", "10.1.0.0/24", "*")
	e.bind("host", "tcp", "10.2.0.5", "443")
	want, err := e.d.Bindings()
	if err != nil {
		t.Fatal(err)
	}

	// Every bucket of the old layout says "valid, this build's, no
	// overflow" with empty slots: read as this build's, it would refuse
	// every binding.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 152, MaxEntries: 2 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	keys := make([]uint32, old.MaxEntries())
	vals := make([][152]byte, old.MaxEntries())
	for i := range keys {
		keys[i] = uint32(i)
		vals[i][0] = ixbThisBuild
	}
	if err := batchPut(old, keys, vals); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(e.d.Dir(), "sy_index")
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	e.d.Close()

	ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
	if err != nil {
		t.Fatalf("open read-only: %v", err)
	}
	if got, err := ro.Bindings(); err != nil || !slices.Equal(got, want) {
		t.Fatalf("read-only bindings: %v %v, want %v", got, err, want)
	}
	ro.Close()

	e.d = e.open()
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.ValueSize() != 128 || m.MaxEntries() != 2*ixBuckets {
		t.Fatalf("pinned index after open: %d-byte values, %d entries; want this build's layout", m.ValueSize(), m.MaxEntries())
	}
	var cfg configVal
	if err := e.d.cfg.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		proto  binding.Protocol
		prefix string
	}{{binding.TCP, "10.1.0.0/24"}, {binding.TCP, "10.2.0.5/32"}} {
		gk := keyOf(p.proto, netip.MustParsePrefix(p.prefix))
		var b dispatchSyIxBucket
		if err := m.Lookup(cfg.Gen*ixBuckets+gk.bucket(), &b); err != nil {
			t.Fatal(err)
		}
		if _, ok := findSlot(b, gk.mapKey(0)); !ok || b.Flags&ixbThisBuild != ixbThisBuild {
			t.Fatalf("%s is not in its bucket of the rebuilt index: %+v", p.prefix, b)
		}
	}
	e.checkDial("10.1.0.7:80", "web")
	e.checkDial("10.2.0.5:443", "host")
	e.checkDial("10.2.0.5:444", "")
}
