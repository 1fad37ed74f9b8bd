package dispatch

import (
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// A change larger than a batch (genWriter, writeRecord) is written whole:
// Replace reports exactly what it adds and removes, in order, and a
// dispatcher that reads the state afresh finds the new set in both
// generations of the record and a data path that matches it.
func TestReplaceInBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := 3*batchEntries + 1000
	var before, after []binding.Binding
	for i := range n {
		before = append(before, testenv.ScaleBinding(i, 0))
	}
	// Half of the keys stay, half of those with another label; the other
	// half goes, and as many new ones come.
	for i := n / 2; i < n+n/2; i++ {
		after = append(after, testenv.ScaleBinding(i, i%2))
	}
	added, removed, err := e.d.ReplaceBindings(before, false)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(before)
	binding.Sort(want)
	if len(removed) != 0 || !reflect.DeepEqual(added, want) {
		t.Fatalf("first replace added %d, removed %d; want the %d bindings, sorted", len(added), len(removed), n)
	}

	added, removed, err = e.d.ReplaceBindings(after, false)
	if err != nil {
		t.Fatal(err)
	}
	old := map[binding.Key]string{}
	for _, b := range before {
		old[b.Key()] = b.Label
	}
	nw := map[binding.Key]string{}
	for _, b := range after {
		nw[b.Key()] = b.Label
	}
	var wantAdded, wantRemoved []binding.Binding
	for _, b := range after {
		if old[b.Key()] != b.Label {
			wantAdded = append(wantAdded, b)
		}
	}
	for _, b := range before {
		if nw[b.Key()] != b.Label {
			wantRemoved = append(wantRemoved, b)
		}
	}
	binding.Sort(wantAdded)
	binding.Sort(wantRemoved)
	if !reflect.DeepEqual(added, wantAdded) || !reflect.DeepEqual(removed, wantRemoved) {
		t.Fatalf("second replace added %d, removed %d; want %d and %d", len(added), len(removed), len(wantAdded), len(wantRemoved))
	}

	d := e.open()
	got, err := d.Bindings()
	if err != nil {
		t.Fatal(err)
	}
	want = slices.Clone(after)
	binding.Sort(want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read afresh: %d bindings, want the %d of the second replace", len(got), len(want))
	}
	m, repair, err := d.readModel()
	if err != nil {
		t.Fatal(err)
	}
	if repair || !m.dataOK {
		t.Errorf("read afresh, the state needs a repair (data path matches the record: %v)", m.dataOK)
	}
	r0, err := readBindingRecord(d.bindingsOf(0))
	if err != nil {
		t.Fatal(err)
	}
	r1, err := readBindingRecord(d.bindingsOf(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(r0) != len(after) || !maps.Equal(r0, r1) {
		t.Errorf("record generations hold %d and %d bindings (equal: %v), want %d each", len(r0), len(r1), maps.Equal(r0, r1), len(after))
	}
}

// ReplaceSeq reads its bindings twice; a sequence that yields another
// number of them the second time is refused, and nothing changes.
func TestReplaceSeqChangedSource(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bs := []binding.Binding{testenv.ScaleBinding(0, 0), testenv.ScaleBinding(1, 0), testenv.ScaleBinding(2, 0)}
	for _, second := range []int{1, 3} {
		calls := 0
		all := func(yield func(*binding.Binding) bool) {
			calls++
			n := len(bs) - 1
			if calls == 2 {
				n = second
			}
			for i := range n {
				if !yield(&bs[i]) {
					return
				}
			}
		}
		if _, err := e.d.ReplaceSeq(2, all, nil, false); err == nil || err.Error() != "replace: the bindings changed while they were read" {
			t.Errorf("second read of %d bindings after 2: %v", second, err)
		}
	}
	if got, err := e.d.Bindings(); err != nil || len(got) != 0 {
		t.Errorf("after the refusals: %d bindings, %v; want none", len(got), err)
	}
}
