package dispatch

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// nestedFiller makes the 1,048,576 bindings of TestPrecedenceAtScale: the
// precedence table plus nested filler in 20.0.0.0/8. Filler block q holds
// eight bindings on three prefixes around 20.0.0.0 + 8q, so that probes of
// it meet the precedence rules among themselves: the /32 .0 on ports 80,
// 443 and 8000-8999; the /31 .2 on ports 22 and 1-1023; the /29 on ports
// 53, 1000-9999 and every port.
func nestedFiller(n int, head []binding.Binding) []binding.Binding {
	type fill struct {
		off, bits int
		ports     binding.Ports
	}
	block := []fill{
		{0, 32, binding.Ports{Lo: 80, Hi: 80}}, {0, 32, binding.Ports{Lo: 443, Hi: 443}}, {0, 32, binding.Ports{Lo: 8000, Hi: 8999}},
		{2, 31, binding.Ports{Lo: 22, Hi: 22}}, {2, 31, binding.Ports{Lo: 1, Hi: 1023}},
		{0, 29, binding.Ports{Lo: 53, Hi: 53}}, {0, 29, binding.Ports{Lo: 1000, Hi: 9999}}, {0, 29, binding.AnyPort},
	}
	bs := make([]binding.Binding, 0, n)
	bs = append(bs, head...)
	for i := 0; len(bs) < n; i++ {
		q, f := i/len(block), block[i%len(block)]
		x := uint32(20)<<24 + uint32(q)*8 + uint32(f.off)
		a := netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
		bs = append(bs, binding.Binding{Label: "f" + strconv.Itoa(i%64), Protocol: binding.TCP, Prefix: netip.PrefixFrom(a, f.bits), Ports: f.ports})
	}
	return bs
}

// The precedence rules and the reference model hold at 1,048,576 bindings:
// the precedence table over real connections, and a sample of probes
// (BPF_PROG_TEST_RUN, the socket the program selects) against
// binding.Lookup over the whole set.
func TestPrecedenceAtScale(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bs := nestedFiller(1<<20, e.precedenceBindings())
	start := time.Now()
	if _, err := e.d.AddBindings(bs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("bound %d bindings in %v", len(bs), time.Since(start).Round(time.Millisecond))
	if n := reportMemlockLog(t, e.d); n != len(bs) {
		t.Fatalf("the dispatcher counts %d bindings, want %d", n, len(bs))
	}

	start = time.Now()
	e.checkPrecedence(bs)
	t.Logf("precedence table dialled in %v", time.Since(start).Round(time.Millisecond))

	cookies := map[uint64]string{} // socket cookie -> label
	for i := range 64 {
		label := "f" + strconv.Itoa(i)
		dest, err := e.d.Register(label, e.ns.ListenTCP(t, "127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		cookies[dest.Cookie] = label
	}
	dests, err := e.d.Destinations()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dests {
		cookies[d.Cookie] = d.Label
	}

	r := rand.New(rand.NewPCG(1, 2))
	ports := []uint16{22, 53, 80, 443, 444, 999, 1023, 1024, 8000, 8999, 9999, 10000, 65535}
	var probes []netip.AddrPort
	for range 24 {
		q := r.Uint32N(uint32(len(bs)/8) + 16) // a few past the filler
		x := uint32(20)<<24 + q*8 + r.Uint32N(8)
		a := netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
		probes = append(probes, netip.AddrPortFrom(a, ports[r.IntN(len(ports))]))
	}
	for _, c := range precedenceCases {
		if ap := netip.MustParseAddrPort(c.dst); ap.Addr().Is4() {
			probes = append(probes, ap)
		}
	}
	start = time.Now()
	defer func() { t.Logf("%d probes in %v", len(probes), time.Since(start).Round(time.Millisecond)) }()
	for _, ap := range probes {
		want := ""
		if ref, ok := binding.Lookup(bs, binding.TCP, ap); ok {
			want = ref.Label
		}
		ret, cookie := runLookup(t, e.d.objs.SyDispatch, lookupCtx(binding.TCP, ap))
		got := cookies[cookie]
		if cookie == 0 {
			got = ""
		}
		if ret != 1 || got != want {
			t.Errorf("%s: verdict %d, socket of %q (cookie %d); binding.Lookup says %q", ap, ret, got, cookie, want)
		}
	}
}
