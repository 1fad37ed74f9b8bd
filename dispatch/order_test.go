package dispatch

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// TestReplaceListsInOrder: what Replace reports added and removed, and
// what Bindings lists, come in binding.Compare's order whatever the order
// of the input, also across families, prefix lengths, protocols and port
// sets of one prefix.
func TestReplaceListsInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	set := func(seed int) []binding.Binding {
		bs := make([]binding.Binding, 4000)
		for i := range bs {
			bs[i] = testenv.ScaleBinding(i, seed)
		}
		r := rand.New(rand.NewPCG(uint64(seed), 1))
		r.Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
		return bs
	}
	first := set(0)
	added, removed, err := e.d.ReplaceBindings(first, false)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(first)
	binding.Sort(want)
	if !slices.Equal(added, want) || len(removed) != 0 {
		t.Fatalf("first replace: %d added (in order: %v), %d removed", len(added), slices.Equal(added, want), len(removed))
	}
	// Every binding gets another label: each is removed and added. A dry
	// run reports the same, and changes nothing.
	second := set(7)
	wantAdded := slices.Clone(second[:3000])
	binding.Sort(wantAdded)
	added, removed, err = e.d.ReplaceBindings(second[:3000], true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(added, wantAdded) || !slices.Equal(removed, want) {
		t.Fatalf("dry run of the second replace: added in order %v, removed in order %v", slices.Equal(added, wantAdded), slices.Equal(removed, want))
	}
	if got, err := e.d.Bindings(); err != nil || !slices.Equal(got, want) {
		t.Fatalf("after a dry run Bindings lists %d (%v), not the %d applied before", len(got), err, len(want))
	}
	added, removed, err = e.d.ReplaceBindings(second[:3000], false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(added, wantAdded) || !slices.Equal(removed, want) {
		t.Fatalf("second replace: added in order %v, removed in order %v", slices.Equal(added, wantAdded), slices.Equal(removed, want))
	}
	got, err := e.d.Bindings()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, wantAdded) {
		t.Fatalf("Bindings lists %d, not the %d applied in order", len(got), len(wantAdded))
	}
}
