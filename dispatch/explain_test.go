package dispatch

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"

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
