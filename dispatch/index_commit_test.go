package dispatch

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// What commit writes to sy_index is, after every change and in both
// generations, what a model read afresh computes for each bucket: the
// buckets a change rewrites (indexDirty, from the model after the change)
// cover every bucket whose value it changes, through changes that crowd a
// bucket and the second bucket of its prefixes past their ways. A bucket
// left stale would send lookups past prefixes in force or to removed ones.
func TestIndexAfterCommits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := rand.New(rand.NewPCG(11, 3))
	randKey := func() groupKey {
		a := [4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}
		return keyOf(binding.TCP, netip.PrefixFrom(netip.AddrFrom4(a), 32))
	}
	var pool []groupKey
	seen := map[groupKey]bool{}
	some := func(n int, f func(gk groupKey) bool) {
		for n > 0 {
			if gk := randKey(); !seen[gk] && f(gk) {
				seen[gk] = true
				pool = append(pool, gk)
				n--
			}
		}
	}
	some(12, func(gk groupKey) bool { return gk.bucket() == 77 })
	s := pool[0].second()
	some(10, func(gk groupKey) bool { return gk.bucket() == s })
	some(6, func(gk groupKey) bool { return gk.second() == 77 })
	universe := map[uint32]bool{}
	for _, gk := range pool {
		universe[gk.bucket()] = true
		universe[gk.second()] = true
	}

	for round := range 40 {
		var set []binding.Binding
		for _, gk := range pool {
			if r.IntN(3) == 0 {
				continue
			}
			label := fmt.Sprintf("l%d", r.IntN(3))
			set = append(set, binding.Binding{Label: label, Protocol: binding.TCP, Prefix: gk.prefix(), Ports: binding.Ports{Lo: 53, Hi: 53}})
			if r.IntN(4) == 0 {
				// Two segments: not in a slot, so its first bucket
				// sends lookups to sy_prefixes.
				set = append(set, binding.Binding{Label: label, Protocol: binding.TCP, Prefix: gk.prefix(), Ports: binding.Ports{Lo: 80, Hi: 80}})
			}
		}
		if _, _, err := e.d.Replace(set, nil, false); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		e.d.mu.Lock()
		m, err := e.d.read()
		e.d.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		for b := range universe {
			want := m.indexBucket(b)
			for gen := range uint32(2) {
				var got dispatchSyIxBucket
				if err := e.d.objs.SyIndex.Lookup(gen*ixBuckets+b, &got); err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("round %d: bucket %d of generation %d as commits left it:\n%+v\nwant, computed afresh:\n%+v", round, b, gen, got, want)
				}
			}
		}
	}
}
