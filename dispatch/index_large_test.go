package dispatch

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// readArray reads the n elements of array map m in batches.
func readArray[V any](t *testing.T, m *ebpf.Map, n int) []V {
	t.Helper()
	out := make([]V, 0, n)
	keys := make([]uint32, 4096)
	vals := make([]V, 4096)
	var cursor ebpf.MapBatchCursor
	for {
		k, err := m.BatchLookup(&cursor, keys, vals, nil)
		out = append(out, vals[:k]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(out) != n {
		t.Fatalf("read %d elements, want %d", len(out), n)
	}
	return out
}

// Large changes (more groups than largeChange: index lists grown once,
// every bucket written when a change names as many groups as there are
// buckets, lists holding each prefix's group) and small ones between them
// leave, in both generations, every index bucket as a dispatcher that
// reads the record afresh computes it, and every filter bit it sets: a
// stale bucket or a missing bit would send lookups past prefixes in force
// or to removed ones.
func TestIndexAfterLargeCommits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := rand.New(rand.NewPCG(21, 8))
	// A pool of host prefixes of both protocols and families; each set
	// takes some of them, with a label each, and some with two ports
	// (not in a slot: the filter and sy_prefixes).
	const pool = 160_000
	// And prefixes that crowd a bucket, the second bucket of its first
	// prefix, and whose second bucket is that bucket, past their ways
	// (as TestIndexAfterCommits does for small changes).
	var crowd []groupKey
	seen := map[groupKey]bool{}
	some := func(n int, f func(gk groupKey) bool) {
		for n > 0 {
			a := [4]byte{11, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}
			if gk := keyOf(binding.TCP, netip.PrefixFrom(netip.AddrFrom4(a), 32)); !seen[gk] && f(gk) {
				seen[gk] = true
				crowd = append(crowd, gk)
				n--
			}
		}
	}
	some(12, func(gk groupKey) bool { return gk.bucket() == 77 })
	second := crowd[0].second()
	some(10, func(gk groupKey) bool { return gk.bucket() == second })
	some(6, func(gk groupKey) bool { return gk.second() == 77 })
	key := func(i int) (binding.Protocol, netip.Prefix) {
		if i >= pool {
			return binding.TCP, crowd[i-pool].prefix()
		}
		proto := []binding.Protocol{binding.TCP, binding.UDP}[i%2]
		x := i / 2
		if x%5 == 0 {
			a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(x >> 24), 13: byte(x >> 16), 14: byte(x >> 8), 15: byte(x)})
			return proto, netip.PrefixFrom(a, 128)
		}
		return proto, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
	}
	in := make([]int8, pool+len(crowd)) // label of each pool prefix in force, -1 none
	for i := range in {
		in[i] = -1
	}
	set := func() []binding.Binding {
		var bs []binding.Binding
		for i, l := range in {
			if l < 0 {
				continue
			}
			proto, p := key(i)
			label := fmt.Sprintf("l%d", l)
			bs = append(bs, binding.Binding{Label: label, Protocol: proto, Prefix: p, Ports: binding.Ports{Lo: 53, Hi: 53}})
			if i%7 == 0 {
				bs = append(bs, binding.Binding{Label: label, Protocol: proto, Prefix: p, Ports: binding.Ports{Lo: 80, Hi: 80}})
			}
		}
		return bs
	}
	check := func(step string) {
		t.Helper()
		// The next operation waits for the rest of a large change.
		if _, err := e.d.Bindings(); err != nil {
			t.Fatal(err)
		}
		ro, err := Open(e.ns.Path(), Options{Root: e.root, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		ro.mu.Lock()
		m, err := ro.read()
		ro.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		buckets := readArray[dispatchSyIxBucket](t, e.d.objs.SyIndex, 2*ixBuckets)
		words := readArray[uint64](t, e.d.objs.SyFilter, 2*filterWords)
		bad := 0
		for gen := range 2 {
			for b := range uint32(ixBuckets) {
				if want := m.indexBucket(b); buckets[gen*ixBuckets+int(b)] != want && bad < 5 {
					bad++
					t.Errorf("%s: bucket %d of generation %d:\n%+v\nwant, computed afresh:\n%+v", step, b, gen, buckets[gen*ixBuckets+int(b)], want)
				}
			}
			for w := range uint32(filterWords) {
				if want := m.filterWord(w); words[gen*filterWords+int(w)]&want != want && bad < 5 {
					bad++
					t.Errorf("%s: filter word %d of generation %d is %#x, lacks bits of %#x", step, w, gen, words[gen*filterWords+int(w)], want)
				}
			}
		}
		if bad > 0 {
			t.FailNow()
		}
	}
	replace := func(step string) {
		t.Helper()
		if _, _, err := e.d.Replace(set(), nil, false); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		check(step)
	}
	small := func(step string) {
		t.Helper()
		for range 40 {
			i := r.IntN(len(in))
			in[i] = int8(r.IntN(4)) - 1
		}
		for i := pool; i < len(in); i++ {
			in[i] = int8(r.IntN(4)) - 1
		}
		replace(step)
	}
	for i := range pool / 2 {
		in[i] = int8(r.IntN(3))
	}
	for i := pool; i < len(in); i++ {
		in[i] = int8(r.IntN(3))
	}
	replace("first large change")
	small("small change after it")
	// Half the prefixes go, as many come, a third of those that stay
	// change their label: some 100,000 groups.
	for i := range in {
		switch {
		case i >= pool:
			in[i] = int8(r.IntN(4)) - 1
		case i < pool/2 && r.IntN(2) == 0:
			in[i] = -1
		case i < pool/2 && r.IntN(3) == 0:
			in[i] = (in[i] + 1) % 3
		case i >= pool/2 && r.IntN(2) == 0:
			in[i] = int8(r.IntN(3))
		}
	}
	replace("second large change")
	small("small change after the second")
	for i := range in {
		in[i] = -1
	}
	replace("large change to nothing")
}
