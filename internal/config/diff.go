package config

import (
	"cmp"
	"slices"
	"strings"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Diff compares two sets of bindings. added holds the bindings of new that
// old lacks, removed those of old that new lacks; a binding whose label
// changes is in both. Both are sorted with binding.Compare and hold no
// repeats.
func Diff(old, new []binding.Binding) (added, removed []binding.Binding) {
	return minus(new, old), minus(old, new)
}

// minus returns the bindings of a that are not in b, sorted, without repeats.
func minus(a, b []binding.Binding) []binding.Binding {
	in := make(map[binding.Binding]struct{}, len(b))
	for _, x := range b {
		in[x] = struct{}{}
	}
	var out []binding.Binding
	for _, x := range a {
		if _, ok := in[x]; !ok {
			in[x] = struct{}{}
			out = append(out, x)
		}
	}
	binding.Sort(out)
	return out
}

// FormatDiff renders a binding diff one line per change, "- " for removed
// and "+ " for added bindings, as switchyard apply prints it:
//
//	$ switchyard apply -f switchyard.yaml
//	- dns udp 192.0.2.0/24 53
//	+ dns-public udp 192.0.2.0/24 53
//	+ web tcp 2001:db8::/64 *
//
// Lines are sorted by binding key, a removal before an addition of the same
// key, so a relabelled binding shows as two adjacent lines. It returns ""
// when there is no change.
func FormatDiff(added, removed []binding.Binding) string {
	type change struct {
		b    binding.Binding
		sign byte
	}
	cs := make([]change, 0, len(added)+len(removed))
	for _, b := range removed {
		cs = append(cs, change{b, '-'})
	}
	for _, b := range added {
		cs = append(cs, change{b, '+'})
	}
	order := func(x, y change) int {
		if c := binding.CompareKeys(x.b, y.b); c != 0 {
			return c
		}
		if c := cmp.Compare(x.sign, y.sign); c != 0 { // '+' < '-'
			return -c
		}
		return strings.Compare(x.b.Label, y.b.Label)
	}
	// switchyardd sends its lists sorted: checking is cheaper than sorting
	// a million changes again.
	if !slices.IsSortedFunc(cs, order) {
		slices.SortFunc(cs, order)
	}
	out := make([]byte, 0, len(cs)*48)
	for _, c := range cs {
		// As Binding.String, without fmt's cost per line.
		out = append(out, c.sign, ' ')
		out = append(out, c.b.Label...)
		out = append(out, ' ')
		out = append(out, c.b.Protocol.String()...)
		out = append(out, ' ')
		out = c.b.Prefix.AppendTo(out)
		out = append(out, ' ')
		out = append(out, c.b.Ports.String()...)
		out = append(out, '\n')
	}
	return string(out)
}
