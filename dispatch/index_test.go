package dispatch

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Ports that no binding of a protocol and family serves end the lookup
// early (sy_noports); the map follows every change, so what one change
// serves is served and what it stops serving falls to the kernel.
func TestPortsNoBindingServes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	mustRegister(t, e.d, "any", e.tcpServer("any", "127.0.0.1:0"))
	e.bind("web", "tcp", "10.9.0.0/24", "80")
	e.bind("web", "tcp", "10.9.1.5", "8000-8001")
	// A UDP binding on every port leaves TCP's ports alone.
	e.bind("any", "udp", "10.9.0.0/24", "*")
	check := e.checkDial
	check("10.9.0.7:80", "web")
	check("10.9.0.7:81", "")
	check("10.9.1.5:8001", "web")
	check("10.9.1.5:8002", "")
	check("10.9.1.5:80", "")

	b, err := binding.Parse("web", "tcp", "10.9.0.0/24", "80")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.RemoveBindings(b); err != nil {
		t.Fatal(err)
	}
	check("10.9.0.7:80", "")
	e.bind("any", "tcp", "10.9.0.0/16", "*")
	check("10.9.0.7:80", "any")
	check("10.9.1.5:8001", "web")
	check("10.9.1.5:8002", "any")
}

func TestPortUseNoport(t *testing.T) {
	var u portUse
	u.add(binding.Ports{Lo: 80, Hi: 80}, 1)
	u.add(binding.Ports{Lo: 100, Hi: 164}, 1)
	w := u.noport()
	served := func(p uint16) bool { return w[p/64]&(1<<(p%64)) == 0 }
	for _, p := range []uint16{80, 100, 127, 128, 164} {
		if !served(p) {
			t.Errorf("port %d: marked as served by no binding", p)
		}
	}
	for _, p := range []uint16{0, 79, 81, 99, 165, 65535} {
		if served(p) {
			t.Errorf("port %d: not marked as served by no binding", p)
		}
	}
	u.add(binding.Ports{Lo: 80, Hi: 80}, -1)
	if w := u.noport(); w[80/64]&(1<<(80%64)) == 0 {
		t.Error("port 80 still served after its binding went")
	}
	u.add(binding.AnyPort, 1)
	for i, x := range u.noport() {
		if x != 0 {
			t.Fatalf("word %d is %#x with an every-port binding", i, x)
		}
	}
}

// Addresses in blocks no binding of a protocol and family covers end the
// lookup early (sy_noaddr). Addresses near bound ones, in a block a binding
// covers, go the full way; a prefix wider than a block serves every block
// it covers; what a change stops covering falls to the kernel.
func TestAddressesNoBindingCovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	mustRegister(t, e.d, "wide", e.tcpServer("wide", "127.0.0.1:0"))
	mustRegister(t, e.d, "v6", e.tcpServer("v6", "[::1]:0"))
	mustRegister(t, e.d, "wide6", e.tcpServer("wide6", "[::1]:0"))
	e.ns.AddLocalRoute(t, netip.MustParsePrefix("2000::/4"))
	e.bind("web", "tcp", "10.9.0.0/24", "*")
	e.bind("v6", "tcp", "2001:db8:5::/64", "*")
	// A UDP binding of every address leaves TCP's blocks alone.
	e.bind("web", "udp", "0.0.0.0/0", "*")
	check := e.checkDial
	check("10.9.0.7:80", "web")
	check("10.9.1.7:80", "")  // the same /16, another /24
	check("10.10.0.7:80", "") // another /16
	check("[2001:db8:5::7]:80", "v6")
	check("[2001:db8:6::7]:80", "")
	check("[2001:db9::7]:80", "")

	e.bind("wide", "tcp", "10.0.0.0/12", "*")
	e.bind("wide6", "tcp", "2001:db8::/20", "*")
	check("10.10.0.7:80", "wide")
	check("10.15.255.1:80", "wide")
	check("10.16.0.1:80", "")
	check("10.9.0.7:80", "web")
	check("[2001:db9::7]:80", "wide6")
	check("[2001:db8:6::7]:80", "wide6")
	check("[2001:1db8::7]:80", "")

	for _, b := range []struct{ label, prefix string }{{"wide", "10.0.0.0/12"}, {"wide6", "2001:db8::/20"}} {
		bb, err := binding.Parse(b.label, "tcp", b.prefix, "*")
		if err != nil {
			t.Fatal(err)
		}
		if err := e.d.RemoveBindings(bb); err != nil {
			t.Fatal(err)
		}
	}
	check("10.10.0.7:80", "")
	check("[2001:db9::7]:80", "")
	check("[2001:db8:5::7]:80", "v6")
}

// The words of sy_blocks: a port's bit of a block's word is set where no
// binding covering the block serves a port of that bit, clear where one
// does, and every bit of a block with an every-port or wide-range binding
// is clear; prefixes wider than a block count in every block they cover.
func TestPortUseBlocks(t *testing.T) {
	var u portUse
	unserved := func(w []uint64, a string, port uint16) bool {
		ad := netip.MustParseAddr(a)
		return w[addrBlock(leadWord(ad), ad.Is4())]&(1<<portBit(port)) != 0
	}
	p443, p80 := binding.Ports{Lo: 443, Hi: 443}, binding.Ports{Lo: 80, Hi: 80}
	if portBit(443) == portBit(444) || portBit(80) == portBit(443) {
		t.Fatal("the test's ports share a bit")
	}
	for _, a := range []string{"10.1.0.0", "2001:db8::1"} {
		if !unserved(u.blocks(), a, 443) {
			t.Errorf("%s:443: served without bindings", a)
		}
	}
	u.addServed(netip.MustParsePrefix("10.1.2.3/32"), p443, 1)
	u.addServed(netip.MustParsePrefix("172.16.0.0/14"), p80, 1)
	u.addServed(netip.MustParsePrefix("2001:db8:1::/48"), p443, 1)
	u.addServed(netip.MustParsePrefix("2001:eb0::/28"), binding.AnyPort, 1)
	u.addServed(netip.MustParsePrefix("192.168.0.0/16"), binding.Ports{Lo: 8000, Hi: 8999}, 1)
	w := u.blocks()
	for _, c := range []struct {
		addr string
		port uint16
		want bool // unserved
	}{
		{"10.1.0.0", 443, false}, {"10.1.255.255", 443, false}, {"10.1.2.3", 444, true},
		{"10.0.255.255", 443, true}, {"10.2.0.0", 443, true}, {"11.1.2.3", 443, true},
		{"172.16.0.1", 80, false}, {"172.19.255.255", 80, false}, {"172.19.0.1", 443, true},
		{"172.15.255.255", 80, true}, {"172.20.0.0", 80, true},
		{"2001:db8:1::1", 443, false}, {"2001:db8:ffff::1", 443, false}, {"2001:db8:1::1", 444, true},
		{"2001:eb0::1", 1, false}, {"2001:ebf:ffff::1", 65535, false},
		{"192.168.7.7", 9000, false}, {"192.169.7.7", 9000, true},
	} {
		if got := unserved(w, c.addr, c.port); got != c.want {
			t.Errorf("%s port %d: unserved %v, want %v", c.addr, c.port, got, c.want)
		}
	}
	u.addServed(netip.MustParsePrefix("10.1.2.3/32"), p443, -1)
	if !unserved(u.blocks(), "10.1.2.3", 443) {
		t.Error("10.1.2.3:443 still served after its binding went")
	}
	u.addServed(netip.MustParsePrefix("2000::/15"), p80, 1)
	w = u.blocks()
	for _, a := range []string{"2001:db8:1::1", "3000::1", "2000::1", "10.1.2.3"} {
		if unserved(w, a, 80) {
			t.Errorf("%s:80 unserved with an IPv6 binding of port 80 wider than /16", a)
		}
	}
	// Wide prefixes go as they came: their blocks are free again, the
	// narrower prefixes' blocks are still served.
	u.addServed(netip.MustParsePrefix("2000::/15"), p80, -1)
	u.addServed(netip.MustParsePrefix("172.16.0.0/14"), p80, -1)
	w = u.blocks()
	for _, a := range []string{"2001:db8:1::1", "2001:eb0::1", "2001:ebf:ffff::1"} {
		if unserved(w, a, 443) {
			t.Errorf("%s:443 unserved after wider prefixes went", a)
		}
	}
	for _, a := range []string{"2000::1", "172.16.0.1", "172.19.255.255"} {
		if !unserved(w, a, 80) {
			t.Errorf("%s:80 still served after the prefixes covering it went", a)
		}
	}
	// A prefix wider than a block with several port sets serves each
	// port in every block until that port's set goes.
	all := netip.MustParsePrefix("0.0.0.0/0")
	p7000, p7001 := binding.Ports{Lo: 7000, Hi: 7000}, binding.Ports{Lo: 7001, Hi: 7001}
	if portBit(7000) == portBit(7001) {
		t.Fatal("the test's ports share a bit")
	}
	u.addServed(all, p7000, 1)
	u.addServed(all, p7001, 1)
	w = u.blocks()
	for _, a := range []string{"1.2.3.4", "200.1.1.1", "10.1.2.3"} {
		if unserved(w, a, 7000) || unserved(w, a, 7001) {
			t.Errorf("%s: ports 7000 and 7001 unserved %v %v with 0.0.0.0/0 bound on both", a, unserved(w, a, 7000), unserved(w, a, 7001))
		}
	}
	u.addServed(all, p7000, -1)
	w = u.blocks()
	if !unserved(w, "1.2.3.4", 7000) || unserved(w, "1.2.3.4", 7001) {
		t.Errorf("after 0.0.0.0/0 port 7000 went: 1.2.3.4:7000 unserved %v, :7001 unserved %v; want true, false", unserved(w, "1.2.3.4", 7000), unserved(w, "1.2.3.4", 7001))
	}
	u.addServed(all, p7001, -1)
	if c := u.wide[all]; c != nil {
		t.Errorf("0.0.0.0/0 still counted after its port sets went: %+v", c)
	}
	if !unserved(u.blocks(), "1.2.3.4", 7001) {
		t.Error("1.2.3.4:7001 served after 0.0.0.0/0 went")
	}

	// IPv6 prefixes wider than a block that cover more leading values
	// in all than maxSpread serve their ports in every block; below it,
	// only in their own.
	p53 := binding.Ports{Lo: 53, Hi: 53}
	v6wide := func(i int) netip.Prefix {
		lead := 0x20000000 + uint32(i)<<12
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{byte(lead >> 24), byte(lead >> 16), byte(lead >> 8)}), 20)
	}
	before := u.spread
	n := (maxSpread-before)/(1<<(32-20)) + 1
	for i := range 2 {
		u.addServed(v6wide(i), p53, 1)
	}
	w = u.blocks()
	if unserved(w, "2000:1000::1", 53) {
		t.Fatal("2000:1000::1:53 unserved with 2000:1000::/20 bound on port 53")
	}
	far := 0
	for far < 1000 && !unserved(w, fmt.Sprintf("3fff:%x::1", far), 53) {
		far++
	}
	if far == 1000 {
		t.Fatal("with two IPv6 /20s of port 53, none of 1,000 addresses elsewhere is unserved")
	}
	for i := 2; i < n; i++ {
		u.addServed(v6wide(i), p53, 1)
	}
	for i, x := range u.blocks() {
		if x&(1<<portBit(53)) != 0 {
			t.Fatalf("with %d IPv6 /20s of port 53, past maxSpread: block %d has port 53 unserved", n, i)
		}
	}
	for i := range n {
		u.addServed(v6wide(i), p53, -1)
	}
	if u.spread != before {
		t.Errorf("spread %d after the /20s went, want %d", u.spread, before)
	}
	if !unserved(u.blocks(), "3fff::1", 53) {
		t.Error("3fff::1:53 still served after the /20s went")
	}
}

// A change keeps clear, until the program no longer reads the generation
// before it, the sy_blocks and sy_noports bits of blocks and ports only that
// generation covers: at the generation flip both what it removes and what
// it adds are covered.
func TestNoMapsCoverBothGenerationsAtTheFlip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "10.20.0.0/24", "80")
	bit := func(m *ebpf.Map, b uint16) bool { // tcp, IPv4: list 0
		t.Helper()
		var w uint64
		if err := m.Lookup(uint32(b/64), &w); err != nil {
			t.Fatal(err)
		}
		return w&(1<<(b%64)) != 0
	}
	state := func() [4]bool {
		return [4]bool{blockBit(t, e.d, 0, "10.20.0.1", 80), blockBit(t, e.d, 0, "10.30.0.1", 81),
			bit(e.d.objs.SyNoports, 80), bit(e.d.objs.SyNoports, 81)}
	}
	const what = "unserved: 10.20/16 port 80, 10.30/16 port 81, port 80, port 81"
	if got, want := state(), [4]bool{false, true, false, true}; got != want {
		t.Fatalf("before the change: %s %v, want %v", what, got, want)
	}
	old, err := binding.Parse("web", "tcp", "10.20.0.0/24", "80")
	if err != nil {
		t.Fatal(err)
	}
	nw, err := binding.Parse("web", "tcp", "10.30.0.0/24", "81")
	if err != nil {
		t.Fatal(err)
	}
	e.d.crash = func(point string) bool { return point == "data-next" }
	if _, _, err := e.d.Replace([]binding.Binding{nw}, nil, false); !errors.Is(err, errCrashPoint) {
		t.Fatalf("change: %v, want the simulated crash", err)
	}
	if got, want := state(), [4]bool{}; got != want {
		t.Errorf("at the flip: %s %v, want %v", what, got, want)
	}
	e.d.crash = nil
	if _, _, err := e.d.Replace([]binding.Binding{old}, nil, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.d.Replace([]binding.Binding{nw}, nil, false); err != nil {
		t.Fatal(err)
	}
	if got, want := state(), [4]bool{true, false, true, false}; got != want {
		t.Errorf("after the change: %s %v, want %v", what, got, want)
	}
}

// A build that does not know sy_blocks (1f43000; sy_noports: c0a1c49)
// changes bindings without clearing their bits: what this build set before such a
// build bound an address or port must not refuse it when this build opens
// the state again, and the words say what the bindings leave afterwards.
func TestOpenRewritesWordsAnOlderBuildLeft(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	e.bind("web", "tcp", "10.50.0.0/24", "80")
	// More than a small set holds, so that lookups read the words.
	for i := range smallMax {
		e.bind("web", "tcp", fmt.Sprintf("10.70.%d.0/24", i), "80")
	}
	// What an older build leaves: every bit set, as if nothing were bound.
	for _, m := range []*ebpf.Map{e.d.objs.SyNoports, e.d.objs.SyBlocks} {
		n := int(m.MaxEntries())
		keys, vals := make([]uint32, n), make([]uint64, n)
		for i := range keys {
			keys[i], vals[i] = uint32(i), ^uint64(0)
		}
		if err := batchPut(m, keys, vals); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := e.dialLabel("10.50.0.7:80"); !isRefused(err) {
		t.Fatalf("with every bit set, 10.50.0.7:80: %v, want connection refused (the bits are not read?)", err)
	}
	e.d.Close()
	e.d = e.open()
	if label, _, err := e.dialLabel("10.50.0.7:80"); err != nil || label != "web" {
		t.Fatalf("after Open, 10.50.0.7:80: got %q (%v), want web", label, err)
	}
	tcp4 := 0 // proto*2 + family
	bit := func(m *ebpf.Map, i int) bool {
		var w uint64
		if err := m.Lookup(uint32(tcp4*int(m.MaxEntries())/4+i/64), &w); err != nil {
			t.Fatal(err)
		}
		return w&(1<<(i%64)) != 0
	}
	if !bit(e.d.objs.SyNoports, 81) || bit(e.d.objs.SyNoports, 80) {
		t.Errorf("after Open, port bits 80 %v and 81 %v, want clear and set", bit(e.d.objs.SyNoports, 80), bit(e.d.objs.SyNoports, 81))
	}
	if b50, b60 := blockBit(t, e.d, tcp4, "10.50.0.1", 80), blockBit(t, e.d, tcp4, "10.60.0.1", 80); b50 || !b60 {
		t.Errorf("after Open, the bits of port 80 in the words of 10.50/16 %v and 10.60/16 %v, want clear and set", b50, b60)
	}
}

// blockBit reports whether the bit of port in the word of addr's block of
// list li of sy_blocks is set (no binding serves it).
func blockBit(t *testing.T, d *Dispatcher, li int, addr string, port uint16) bool {
	t.Helper()
	a := netip.MustParseAddr(addr)
	var w uint64
	if err := d.objs.SyBlocks.Lookup(uint32(li*blockWords)+uint32(addrBlock(leadWord(a), a.Is4())), &w); err != nil {
		t.Fatal(err)
	}
	return w&(1<<portBit(port)) != 0
}
