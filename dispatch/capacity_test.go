package dispatch

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// sy_prefixes holds two generations of one entry per (protocol, prefix), so
// a set of as many prefixes as half its capacity (1,048,576 in a normal
// build) fits, and so does any change of it: a generation is written
// deletions first, so it never holds more than the larger of the sets
// before and after. Here, with the map shrunk to 2n entries, n prefixes are
// replaced by n others in one change. Not parallel: it patches the spec that
// every Open in the package loads.
func TestChangeOfFullPrefixSet(t *testing.T) {
	const n = 4096
	prev := patchProgram
	patchProgram = func(spec *ebpf.CollectionSpec) {
		prev(spec)
		spec.Maps["sy_prefixes"].MaxEntries = 2 * n
	}
	defer func() { patchProgram = prev }()
	e := newEnv(t)
	if got := e.d.objs.SyPrefixes.MaxEntries(); got != 2*n {
		t.Fatalf("sy_prefixes has %d entries, want %d", got, 2*n)
	}
	set := func(first byte) []binding.Binding {
		bs := make([]binding.Binding, n)
		for i := range bs {
			a := netip.AddrFrom4([4]byte{10, first, byte(i >> 8), byte(i)})
			bs[i] = binding.Binding{Label: "p" + strconv.Itoa(i%10), Protocol: binding.TCP, Prefix: netip.PrefixFrom(a, 32), Ports: binding.Ports{Lo: 443, Hi: 443}}
		}
		return bs
	}
	if _, err := e.d.AddBindings(set(1)...); err != nil {
		t.Fatal(err)
	}
	dest, err := e.d.Register("p5", e.ns.ListenTCP(t, "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	// probe runs the program for a connection to dst and fails unless it
	// selects the socket of p5 (hit) or none.
	probe := func(dst string, hit bool) {
		t.Helper()
		ret, cookie := runLookup(t, e.d.objs.SyDispatch, lookupCtx(binding.TCP, netip.MustParseAddrPort(dst)))
		want := uint64(0)
		if hit {
			want = dest.Cookie
		}
		if ret != 1 || cookie != want {
			t.Fatalf("%s: verdict %d, socket %d; want 1 and socket %d", dst, ret, cookie, want)
		}
	}
	probe("10.1.15.255:443", true) // i = 4095: label p5
	added, removed, err := e.d.ReplaceBindings(set(2), false)
	if err != nil {
		t.Fatalf("replace %d prefixes by as many others: %v", n, err)
	}
	if len(added) != n || len(removed) != n {
		t.Fatalf("replace added %d and removed %d bindings, want %d each", len(added), len(removed), n)
	}
	probe("10.1.15.255:443", false)
	probe("10.2.15.255:443", true)
	// And back, through the same generations.
	if _, _, err := e.d.ReplaceBindings(set(1), false); err != nil {
		t.Fatalf("replace them back: %v", err)
	}
	probe("10.1.15.255:443", true)
	probe("10.2.15.255:443", false)
}
