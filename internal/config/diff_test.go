package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestDiff(t *testing.T) {
	t.Parallel()
	b := func(s string) binding.Binding {
		f := strings.Fields(s)
		return mustBinding(t, f[0], f[1], f[2], f[3])
	}
	old := []binding.Binding{
		b("web tcp 10.0.0.0/24 80"),
		b("dns udp 192.0.2.0/24 53"),
		b("keep udp 2001:db8::/64 *"),
		b("gone tcp 10.0.0.0/24 443"),
		b("dns udp 192.0.2.0/24 53"), // repeats are ignored
	}
	new := []binding.Binding{
		b("keep udp 2001:db8::/64 *"),
		b("dns-public udp 192.0.2.0/24 53"),
		b("web tcp 10.0.0.0/24 80"),
		b("v6 tcp ::/0 1-1024"),
		b("web tcp 10.0.0.0/16 80"),
		b("v6 tcp ::/0 1-1024"),
	}
	added, removed := Diff(old, new)
	wantAdded := []binding.Binding{b("web tcp 10.0.0.0/16 80"), b("dns-public udp 192.0.2.0/24 53"), b("v6 tcp ::/0 1-1024")}
	wantRemoved := []binding.Binding{b("gone tcp 10.0.0.0/24 443"), b("dns udp 192.0.2.0/24 53")}
	if !reflect.DeepEqual(added, wantAdded) {
		t.Errorf("added = %v, want %v", added, wantAdded)
	}
	if !reflect.DeepEqual(removed, wantRemoved) {
		t.Errorf("removed = %v, want %v", removed, wantRemoved)
	}
	const want = `+ web tcp 10.0.0.0/16 80
- gone tcp 10.0.0.0/24 443
- dns udp 192.0.2.0/24 53
+ dns-public udp 192.0.2.0/24 53
+ v6 tcp ::/0 1-1024
`
	if got := FormatDiff(added, removed); got != want {
		t.Errorf("FormatDiff:\n%s\nwant:\n%s", got, want)
	}
	// Input order does not matter.
	rev := func(bs []binding.Binding) []binding.Binding {
		out := make([]binding.Binding, len(bs))
		for i, x := range bs {
			out[len(bs)-1-i] = x
		}
		return out
	}
	a2, r2 := Diff(rev(old), rev(new))
	if FormatDiff(a2, r2) != want {
		t.Error("diff depends on input order")
	}
	if a, r := Diff(old, old); a != nil || r != nil || FormatDiff(a, r) != "" {
		t.Errorf("Diff(x, x) = %v, %v", a, r)
	}
	if a, r := Diff(nil, new); len(a) != 5 || r != nil {
		t.Errorf("Diff(nil, new) = %v, %v", a, r)
	}
}

// WriteDiff writes what FormatDiff returns, in pieces, whether the lists
// come sorted (merged) or not (sorted again), relabelled bindings as a
// removal then an addition, and stops at the writer's first error.
func TestWriteDiff(t *testing.T) {
	t.Parallel()
	var added, removed []binding.Binding
	for i := range 20000 {
		b := testenv.ScaleBinding(i, 0)
		switch i % 3 {
		case 0:
			added = append(added, b)
		case 1:
			removed = append(removed, b)
		default:
			removed = append(removed, b)
			b.Label = "new-" + b.Label
			added = append(added, b)
		}
	}
	var want strings.Builder
	// The expected text, one line at a time with Binding.String.
	type line struct {
		sign byte
		b    binding.Binding
	}
	var lines []line
	for _, b := range removed {
		lines = append(lines, line{'-', b})
	}
	for _, b := range added {
		lines = append(lines, line{'+', b})
	}
	slices.SortFunc(lines, func(x, y line) int {
		if c := binding.CompareKeys(x.b, y.b); c != 0 {
			return c
		}
		if x.sign != y.sign {
			if x.sign == '-' {
				return -1
			}
			return 1
		}
		return strings.Compare(x.b.Label, y.b.Label)
	})
	for _, l := range lines {
		fmt.Fprintf(&want, "%c %s\n", l.sign, l.b)
	}

	unsorted := FormatDiff(added, removed)
	binding.Sort(added)
	binding.Sort(removed)
	var w chunks
	if err := WriteDiff(&w, added, removed); err != nil {
		t.Fatal(err)
	}
	if got := w.String(); got != want.String() || unsorted != want.String() {
		t.Fatalf("WriteDiff and FormatDiff differ from the lines sorted one by one (lengths %d, %d, want %d)", len(got), len(unsorted), want.Len())
	}
	if w.n < 2 {
		t.Errorf("%d bytes in %d writes, want several", want.Len(), w.n)
	}
	fail := errors.New("disk full")
	if err := WriteDiff(failWriter{fail}, added, removed); err != fail {
		t.Errorf("WriteDiff to a failing writer: %v, want %v", err, fail)
	}
}

type chunks struct {
	strings.Builder
	n int
}

func (c *chunks) Write(p []byte) (int, error) {
	c.n++
	return c.Builder.Write(p)
}

type failWriter struct{ err error }

func (f failWriter) Write(p []byte) (int, error) { return 0, f.err }
