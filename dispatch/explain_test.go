package dispatch

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// randomBindings makes a conflict-free set of bindings over a small space
// of nested prefixes and port sets, so that precedence decides often.
func randomBindings(r *rand.Rand, n int) []binding.Binding {
	labels := []string{"a", "b", "c", "d", "e"}
	ports := []binding.Ports{{Lo: 80, Hi: 80}, {Lo: 443, Hi: 443}, {Lo: 53, Hi: 53}, {Lo: 1, Hi: 1023}, {Lo: 80, Hi: 90},
		{Lo: 8000, Hi: 8999}, {Lo: 8080, Hi: 8080}, {Lo: 8000, Hi: 8099}, binding.AnyPort, {Lo: 1024, Hi: 65535}}
	var out []binding.Binding
	for tries := 0; len(out) < n && tries < 50*n; tries++ {
		var p netip.Prefix
		if r.IntN(3) > 0 {
			a := netip.AddrFrom4([4]byte{10, byte(r.IntN(2)), byte(r.IntN(3)), byte(r.IntN(4))})
			p = netip.PrefixFrom(a, []int{8, 15, 16, 24, 30, 32}[r.IntN(6)]).Masked()
		} else {
			a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(r.IntN(2)), 14: 0, 15: byte(r.IntN(3))})
			p = netip.PrefixFrom(a, []int{32, 48, 64, 127, 128}[r.IntN(5)]).Masked()
		}
		b := binding.Binding{Label: labels[r.IntN(len(labels))], Protocol: []binding.Protocol{binding.TCP, binding.UDP}[r.IntN(2)], Prefix: p, Ports: ports[r.IntN(len(ports))]}
		ok := true
		for _, o := range out {
			if o.Key() == b.Key() || binding.Conflict(o, b) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, b)
		}
	}
	return out
}

// randomProbe is a destination in and around the space randomBindings uses.
func randomProbe(r *rand.Rand) (binding.Protocol, netip.AddrPort) {
	ports := []uint16{80, 81, 90, 91, 443, 53, 1, 1023, 1024, 8000, 8080, 8099, 8100, 8999, 9000, 65535}
	port := ports[r.IntN(len(ports))]
	var a netip.Addr
	if r.IntN(3) > 0 {
		a = netip.AddrFrom4([4]byte{byte(9 + r.IntN(3)), byte(r.IntN(2)), byte(r.IntN(3)), byte(r.IntN(5))})
	} else {
		a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, byte(0xb7 + r.IntN(2)), 0, byte(r.IntN(2)), 14: 0, 15: byte(r.IntN(4))})
	}
	return []binding.Protocol{binding.TCP, binding.UDP}[r.IntN(2)], netip.AddrPortFrom(a, port)
}

// Explain names the binding binding.Lookup names, for a random binding set
// and 1,200 random destinations, and says delivered exactly when the
// label has a socket for the protocol and family. Its test runs leave the
// pinned counters as they were. For a sample, real connections land where
// it says.
func TestExplainMatchesReference(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := rand.New(rand.NewPCG(1, 2))
	bs := randomBindings(r, 300)
	// One prefix with more port segments than fit inline (an overflow
	// table), nested ranges and single ports (the exact-port map).
	table := netip.MustParsePrefix("10.7.0.0/24")
	for i := range 12 {
		lo := uint16(1000 + 100*i)
		l := []string{"a", "d"}[i%2]
		bs = append(bs,
			binding.Binding{Label: l, Protocol: binding.TCP, Prefix: table, Ports: binding.Ports{Lo: lo, Hi: lo + 49}},
			binding.Binding{Label: l, Protocol: binding.TCP, Prefix: table, Ports: binding.Ports{Lo: lo + 10, Hi: lo + 19}},
			binding.Binding{Label: "b", Protocol: binding.TCP, Prefix: table, Ports: binding.Ports{Lo: lo + 15, Hi: lo + 15}})
	}
	bs = append(bs, binding.Binding{Label: "e", Protocol: binding.TCP, Prefix: table, Ports: binding.AnyPort})
	if _, _, err := e.d.ReplaceBindings(bs, false); err != nil {
		t.Fatal(err)
	}
	// Labels a and b serve TCP (a on IPv4 only, b dual-stack), c UDP on
	// IPv4; d and e have no socket.
	e.tcpServer("a", "127.0.0.1:0")
	mustRegister(t, e.d, "a", e.tcpServer("a", "127.0.0.1:0"))
	mustRegister(t, e.d, "b", e.tcpServer("b", "[::]:0"))
	mustRegister(t, e.d, "c", e.ns.ListenUDP(t, "127.0.0.1:0"))
	sockets, err := e.d.Destinations()
	if err != nil {
		t.Fatal(err)
	}
	counters, unmatched, err := e.d.Counters()
	if err != nil {
		t.Fatal(err)
	}

	x, err := OpenExplainer(e.root, e.d.nsInode)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	served := func(label string, proto binding.Protocol, fam binding.Family) (Destination, bool) {
		for _, s := range sockets {
			if s.Label == label && s.Protocol == proto && (s.Family == fam || fam == binding.IPv4 && s.Family == binding.IPv6 && label == "b") {
				return s, true
			}
		}
		return Destination{}, false
	}
	start := time.Now()
	defer func() { t.Logf("1,200 probes took %v", time.Since(start)) }()
	verdicts := map[Verdict]int{}
	var sample []netip.AddrPort
	for i := range 1200 {
		proto, dst := randomProbe(r)
		if i%6 == 0 {
			// The overflow table's prefix, at and around its ranges.
			proto = binding.TCP
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 7, 0, byte(r.IntN(256))}), uint16(990+r.IntN(1300)))
		}
		got, err := x.Explain(proto, dst, netip.AddrPort{})
		if err != nil {
			t.Fatalf("probe %d %s %s: %v", i, proto, dst, err)
		}
		want, ok := binding.Lookup(bs, proto, dst)
		if got.Matched != ok || (ok && got.Binding != want) {
			t.Fatalf("probe %d %s %s: explain %v %v, reference %v %v", i, proto, dst, got.Matched, got.Binding, ok, want)
		}
		wantVerdict := VerdictKernel
		var sock Destination
		if ok {
			wantVerdict = VerdictRefused
			if s, has := served(want.Label, proto, binding.FamilyOf(dst.Addr())); has {
				wantVerdict, sock = VerdictDelivered, s
			}
		}
		if got.Verdict != wantVerdict || got.Socket.Cookie != sock.Cookie || (sock.Cookie != 0 && got.Socket != sock) {
			t.Fatalf("probe %d %s %s (%v): verdict %s socket %+v, want %s %+v", i, proto, dst, want, got.Verdict, got.Socket, wantVerdict, sock)
		}
		if got.CountersTouched {
			t.Fatalf("probe %d %s %s: counters touched", i, proto, dst)
		}
		verdicts[got.Verdict]++
		if proto == binding.TCP && dst.Addr().Is4() && dst.Addr().As4()[0] == 10 && len(sample) < 40 {
			sample = append(sample, dst)
		}
	}
	t.Logf("verdicts: %v", verdicts)
	for _, v := range []Verdict{VerdictKernel, VerdictDelivered, VerdictRefused} {
		if verdicts[v] < 60 {
			t.Errorf("only %d probes with verdict %s: the random set tests too little", verdicts[v], v)
		}
	}
	after, unmatchedAfter, err := e.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, counters) || unmatchedAfter != unmatched {
		t.Errorf("counters changed by test runs: %v %d, were %v %d", after, unmatchedAfter, counters, unmatched)
	}

	// Real connections: delivered lands at the label's server, refused
	// is refused, and kernel reaches whatever listens the ordinary way
	// (here nothing: refused too, but counted as unmatched).
	for _, dst := range sample {
		got, err := x.Explain(binding.TCP, dst, netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		label, _, err := e.dialLabel(dst.String())
		switch got.Verdict {
		case VerdictDelivered:
			if err != nil || label != got.Binding.Label {
				t.Errorf("%s: explain says delivered to %s, connection: %q %v", dst, got.Binding.Label, label, err)
			}
		default:
			if !isRefused(err) {
				t.Errorf("%s: explain says %s, connection: %q %v", dst, got.Verdict, label, err)
			}
		}
	}
}

// Explain names the binding binding.Lookup names where ranges of one label
// nest, so that their segments merge (web 1-100 and web 50-60), where
// ranges of other labels nest, in overflow tables, for the every-port set,
// and at and around every end of every range. Where a prefix keeps the
// ends of its ranges as segment ends, the explainer finds the winner
// without the walk, in at most 2 + n² probes for n segments.
func TestExplainNestedRanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	host := func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 32) }
	tcp := func(label string, p netip.Prefix, lo, hi uint16) binding.Binding {
		return binding.Binding{Label: label, Protocol: binding.TCP, Prefix: p, Ports: binding.Ports{Lo: lo, Hi: hi}}
	}
	// merged: prefixes whose segments hide a range's end (one segment,
	// which compile does not split).
	merged := map[netip.Prefix]bool{host(1): true, host(9): true}
	bs := []binding.Binding{
		// Same label nested: one segment 1-100.
		tcp("web", host(1), 1, 100), tcp("web", host(1), 50, 60),
		// Other labels nested, a single port inside, every port around.
		tcp("web", host(2), 1, 100), tcp("api", host(2), 50, 60), tcp("web", host(2), 55, 55),
		tcp("db", host(2), 0, 65535),
		// The benchmark's shape: adjacent single ports of one label merge.
		tcp("web", host(5), 80, 80), tcp("web", host(5), 81, 81), tcp("web", host(5), 82, 82), tcp("web", host(5), 8000, 8999),
		// Every port alone, and beside one single port.
		tcp("db", host(6), 0, 65535), tcp("api", host(6), 443, 443),
		// Adjacent ranges of one label: one segment.
		tcp("web", host(9), 1000, 1999), tcp("web", host(9), 2000, 2999),
		// Adjacent and nested ranges of one label beside another's:
		// split again.
		tcp("web", host(10), 1000, 1999), tcp("web", host(10), 2000, 2999), tcp("web", host(10), 2100, 2200),
		tcp("api", host(10), 4000, 4999),
	}
	// Overflow tables: host 3 nests ranges of one label, host 4 of
	// alternating labels inside one outer range, host 7 nests a range
	// of the outer one's label at its start.
	for i := range 10 {
		lo := uint16(1000 + 100*i)
		l := []string{"web", "api"}[i%2]
		bs = append(bs, tcp(l, host(3), lo, lo+49), tcp(l, host(3), lo+10, lo+19), tcp("db", host(3), lo+15, lo+15))
		bs = append(bs, tcp(l, host(4), lo, lo+49), tcp([]string{"api", "web"}[i%2], host(4), lo+10, lo+19), tcp("db", host(4), lo+15, lo+15))
		bs = append(bs, tcp(l, host(7), lo, lo+49), tcp([]string{"api", "web"}[i%2], host(7), lo+10, lo+19))
	}
	bs = append(bs, tcp("db", host(4), 900, 2100), tcp("db", host(7), 900, 2100), tcp("db", host(7), 900, 950))
	if _, _, err := e.d.ReplaceBindings(bs, false); err != nil {
		t.Fatal(err)
	}
	x, err := OpenExplainer(e.root, e.d.nsInode)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()

	ports := map[uint16]bool{0: true, 1: true, 65535: true, 30000: true}
	for _, b := range bs {
		for _, p := range []int{int(b.Ports.Lo) - 1, int(b.Ports.Lo), int(b.Ports.Lo) + 1, (int(b.Ports.Lo) + int(b.Ports.Hi)) / 2, int(b.Ports.Hi) - 1, int(b.Ports.Hi), int(b.Ports.Hi) + 1} {
			if p >= 0 && p <= 65535 {
				ports[uint16(p)] = true
			}
		}
	}
	// A prefix with r ranges has at most 2r+1 segments.
	ranges := map[netip.Prefix]int{}
	for _, b := range bs {
		if !b.Ports.Single() && !b.Ports.IsAny() {
			ranges[b.Prefix]++
		}
	}
	walked := 0
	for h := 1; h <= 10; h++ {
		for port := range ports {
			dst := netip.AddrPortFrom(host(h).Addr(), port)
			got, err := x.Explain(binding.TCP, dst, netip.AddrPort{})
			if err != nil {
				t.Fatalf("%s: %v", dst, err)
			}
			want, ok := binding.Lookup(bs, binding.TCP, dst)
			if got.Matched != ok || (ok && got.Binding != want) {
				t.Fatalf("%s: explain %v %v, reference %v %v", dst, got.Matched, got.Binding, ok, want)
			}
			if !ok || merged[host(h)] {
				continue
			}
			// The first program alone finds it.
			ctx, err := queryCtx(binding.TCP, dst, netip.AddrPort{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x.explain.Run(&ebpf.RunOptions{Context: ctx}); err != nil {
				t.Fatal(err)
			}
			var res explainSyExplained
			if err := x.result.Get(&res); err != nil {
				t.Fatal(err)
			}
			n := uint64(2*ranges[host(h)] + 1)
			if res.Exact == 0 || res.Visited > 2+n*n {
				t.Errorf("%s (%v): the explainer probed %d port sets and found the winner: %v; want it found within %d", dst, want, res.Visited, res.Exact != 0, 2+n*n)
				walked++
			}
		}
	}
	if walked > 0 {
		t.Errorf("%d lookups needed the walk or many probes", walked)
	}
}
