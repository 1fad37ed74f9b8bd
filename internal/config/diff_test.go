package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
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
