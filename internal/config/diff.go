package config

import (
	"cmp"
	"io"
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
	var b strings.Builder
	WriteDiff(&b, added, removed) // a strings.Builder takes every write
	return b.String()
}

// WriteDiff writes FormatDiff's text to w, in writes of up to about 256
// KiB, and returns the first error of w.
func WriteDiff(w io.Writer, added, removed []binding.Binding) error {
	buf := make([]byte, 0, min(256<<10, 64*(len(added)+len(removed))))
	var err error
	emit := func(sign byte, b *binding.Binding) bool {
		// As Binding.String, without fmt's cost per line.
		buf = append(buf, sign, ' ')
		buf = append(buf, b.Label...)
		buf = append(buf, ' ')
		buf = append(buf, b.Protocol.String()...)
		buf = append(buf, ' ')
		buf = b.Prefix.AppendTo(buf)
		buf = append(buf, ' ')
		buf = b.Ports.AppendTo(buf)
		buf = append(buf, '\n')
		if len(buf) >= 256<<10-512 {
			_, err = w.Write(buf)
			buf = buf[:0]
		}
		return err == nil
	}
	// switchyardd sends both lists sorted: merging them is cheaper than
	// sorting a million changes again.
	if slices.IsSortedFunc(added, binding.Compare) && slices.IsSortedFunc(removed, binding.Compare) {
		i, j := 0, 0
		for i < len(added) || j < len(removed) {
			// A removal first at equal keys.
			if j < len(removed) && (i == len(added) || binding.CompareKeys(removed[j], added[i]) <= 0) {
				if !emit('-', &removed[j]) {
					return err
				}
				j++
			} else {
				if !emit('+', &added[i]) {
					return err
				}
				i++
			}
		}
	} else {
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
		slices.SortFunc(cs, func(x, y change) int {
			if c := binding.CompareKeys(x.b, y.b); c != 0 {
				return c
			}
			if c := cmp.Compare(x.sign, y.sign); c != 0 { // '+' < '-'
				return -c
			}
			return strings.Compare(x.b.Label, y.b.Label)
		})
		for k := range cs {
			if !emit(cs[k].sign, &cs[k].b) {
				return err
			}
		}
	}
	if len(buf) > 0 {
		_, err = w.Write(buf)
	}
	return err
}
