package dispatch

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// A lookup shape: N bindings of one form, and the probes that hit one of
// them, miss on the address and miss on the port.
type lookupShape struct {
	name string
	// nth is the i-th binding of the shape (i < 1<<20).
	nth func(i int) binding.Binding
	// hit is a destination of binding i; portMiss one at binding i's
	// address on a port it does not serve (invalid if every port is
	// served); addrMiss one no binding covers.
	hit, portMiss func(i int) netip.AddrPort
	addrMiss      netip.AddrPort
	// peer reports whether the peer design expresses the shape with one
	// trie entry per binding.
	peer bool
}

// v4Net is the i-th network of 2^(32-bits) addresses counted up from
// 10.0.0.0.
func v4Net(i, bits int) netip.Addr {
	x := uint32(10)<<24 + uint32(i)<<(32-bits)
	return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
}

func v4Host(i int, host byte) netip.Addr {
	a := v4Net(i, 24).As4()
	a[3] = host
	return netip.AddrFrom4(a)
}

func v6Net(i int) netip.Addr {
	var a [16]byte
	copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
	return netip.AddrFrom16(a)
}

func v6Host(i int) netip.Addr {
	a := v6Net(i).As16()
	a[15] = 0x77
	return netip.AddrFrom16(a)
}

var lookupShapes = []lookupShape{
	{
		name: "host32-port",
		nth: func(i int) binding.Binding {
			return binding.Binding{Protocol: binding.TCP, Prefix: netip.PrefixFrom(v4Net(i, 32), 32), Ports: binding.Ports{Lo: 443, Hi: 443}}
		},
		hit:      func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Net(i, 32), 443) },
		portMiss: func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Net(i, 32), 444) },
		addrMiss: netip.MustParseAddrPort("198.51.100.7:443"),
		peer:     true,
	},
	{
		name: "net24-port",
		nth: func(i int) binding.Binding {
			return binding.Binding{Protocol: binding.UDP, Prefix: netip.PrefixFrom(v4Net(i, 24), 24), Ports: binding.Ports{Lo: 53, Hi: 53}}
		},
		hit:      func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 53) },
		portMiss: func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 54) },
		addrMiss: netip.MustParseAddrPort("198.51.100.7:53"),
		peer:     true,
	},
	{
		name: "net24-range",
		nth: func(i int) binding.Binding {
			return binding.Binding{Protocol: binding.TCP, Prefix: netip.PrefixFrom(v4Net(i, 24), 24), Ports: binding.Ports{Lo: 8000, Hi: 8999}}
		},
		hit:      func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 8080) },
		portMiss: func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 9000) },
		addrMiss: netip.MustParseAddrPort("198.51.100.7:8080"),
	},
	{
		name: "net24-any",
		nth: func(i int) binding.Binding {
			return binding.Binding{Protocol: binding.TCP, Prefix: netip.PrefixFrom(v4Net(i, 24), 24), Ports: binding.AnyPort}
		},
		hit:      func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 2222) },
		addrMiss: netip.MustParseAddrPort("198.51.100.7:2222"),
		peer:     true,
	},
	{
		// Two prefix lengths in turns, /24 and /32, on one port, and
		// binding 1 on the port that misses: the port's filter bit
		// cannot end a port miss, and a lookup probes both lengths.
		// The target (n/2) is a /24 at every N.
		name: "mixed-port",
		nth: func(i int) binding.Binding {
			b := binding.Binding{Protocol: binding.TCP, Prefix: netip.PrefixFrom(v4Net(i, 24), 24), Ports: binding.Ports{Lo: 53, Hi: 53}}
			if i%2 == 1 {
				b.Prefix = netip.PrefixFrom(v4Host(i, 9), 32)
			}
			if i == 1 {
				b.Ports = binding.Ports{Lo: 54, Hi: 54}
			}
			return b
		},
		hit:      func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 53) },
		portMiss: func(i int) netip.AddrPort { return netip.AddrPortFrom(v4Host(i, 77), 54) },
		addrMiss: netip.MustParseAddrPort("198.51.100.7:53"),
		peer:     true,
	},
	{
		name: "v6net64-any",
		nth: func(i int) binding.Binding {
			return binding.Binding{Protocol: binding.TCP, Prefix: netip.PrefixFrom(v6Net(i), 64), Ports: binding.AnyPort}
		},
		hit:      func(i int) netip.AddrPort { return netip.AddrPortFrom(v6Host(i), 2222) },
		addrMiss: netip.MustParseAddrPort("[2001:db9::7]:2222"),
		peer:     true,
	},
}

// shapeBindings makes n bindings of shape s. The one in the middle, the
// target, has label "target"; the others share 200 labels without sockets.
func shapeBindings(s lookupShape, n int) ([]binding.Binding, int) {
	target := n / 2
	bs := make([]binding.Binding, n)
	for i := range bs {
		bs[i] = s.nth(i)
		bs[i].Label = "f" + strconv.Itoa(i%200)
		if i == target {
			bs[i].Label = "target"
		}
	}
	return bs, target
}

// lookupRounds is how many times each program runs each probe; the figures
// are medians. Programs take turns, so noise from the shared machine falls
// on all of them alike.
var (
	lookupRounds = envInt("SY_BENCH_ROUNDS", 9)
	lookupRepeat = envInt("SY_BENCH_REPEAT", 200000)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkLookup measures the sk_lookup program per shape, number of
// bindings and case, beside the peer-design program filled with the same
// bindings and sockets, the empty program and, for hits, the floor program
// (bpf/baseline.c), all in one process. Each leaf reports ns/lookup
// (switchyard), peer-ns/lookup (absent where the peer design cannot express
// the shape), empty-ns/lookup and, for hits, floor-ns/lookup; a case a shape
// cannot have reports 1 not-applicable. The N level reports the kernel
// memory of the maps (at N=1, what an all but empty namespace pays).
func BenchmarkLookup(b *testing.B) {
	var base baselineObjects
	if err := loadBaselineObjects(&base, nil); err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	for _, s := range lookupShapes {
		b.Run(s.name, func(b *testing.B) {
			for _, n := range []int{1, 1000, 100000, 1 << 20} {
				b.Run(strconv.Itoa(n), func(b *testing.B) { benchShape(b, s, n, &base) })
			}
		})
	}
}

func benchShape(b *testing.B, s lookupShape, n int, base *baselineObjects) {
	e := newEnv(b)
	bs, target := shapeBindings(s, n)
	if _, err := e.d.AddBindings(bs...); err != nil {
		b.Fatal(err)
	}
	tb := bs[target]
	listen := "127.0.0.1:0"
	if tb.Prefix.Addr().Is6() {
		listen = "[::1]:0"
	}
	var sock syscall.Conn
	if tb.Protocol == binding.UDP {
		sock = e.ns.ListenUDP(b, listen)
	} else {
		sock = e.ns.ListenTCP(b, listen)
	}
	dest, err := e.d.Register("target", sock)
	if err != nil {
		b.Fatal(err)
	}

	var peer *peerObjects
	if s.peer {
		peer = fillPeer(b, bs, sock)
		defer peer.Close()
	}
	// The floor program steers to the target socket, in its only slot.
	putSocket(b, base.FloorSockets, 0, sock)
	defer base.FloorSockets.Delete(uint32(0))
	reportMemlock(b, e.d, peer)

	cases := []struct {
		name string
		dst  netip.AddrPort
		hit  bool
	}{
		{"hit", s.hit(target), true},
		{"addr-miss", s.addrMiss, false},
	}
	if s.portMiss != nil {
		cases = append(cases, struct {
			name string
			dst  netip.AddrPort
			hit  bool
		}{"port-miss", s.portMiss(target), false})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := lookupCtx(tb.Protocol, c.dst)
			want := uint64(0)
			if c.hit {
				want = dest.Cookie
			}
			progs := []*ebpf.Program{e.d.objs.SyDispatch, base.SyBaseline}
			// The floor steers, so it is the least a hit costs; a
			// miss's least is the empty program.
			if c.hit {
				progs = append(progs, base.SyFloor)
			}
			if peer != nil {
				progs = append(progs, peer.SyPeer)
			}
			checkVerdict(b, e.d.objs.SyDispatch, ctx, want)
			if peer != nil {
				checkVerdict(b, peer.SyPeer, ctx, want)
			}
			if c.hit {
				checkVerdict(b, base.SyFloor, ctx, want)
			}
			med := medianRuns(b, progs, ctx)
			b.ReportMetric(med[0], "ns/lookup")
			b.ReportMetric(med[1], "empty-ns/lookup")
			if c.hit {
				b.ReportMetric(med[2], "floor-ns/lookup")
			}
			if peer != nil {
				b.ReportMetric(med[len(med)-1], "peer-ns/lookup")
			}
		})
	}
	if s.portMiss == nil {
		b.Run("port-miss", func(b *testing.B) { b.ReportMetric(1, "not-applicable") })
	}
}

// checkVerdict runs prog once and fails unless it selects the socket with
// cookie want (0: none, the kernel's own lookup goes on).
func checkVerdict(b *testing.B, prog *ebpf.Program, ctx skLookupCtx, want uint64) {
	b.Helper()
	if ret, cookie := runLookup(b, prog, ctx); ret != 1 || cookie != want {
		b.Fatalf("%s returned %d, selected socket %d; want 1 and socket %d", prog, ret, cookie, want)
	}
}

// medianRuns runs each program lookupRepeat times per round, in turns, and
// returns each one's median ns per run.
func medianRuns(b *testing.B, progs []*ebpf.Program, ctx skLookupCtx) []float64 {
	b.Helper()
	runs := make([][]float64, len(progs))
	for r := range lookupRounds {
		for j := range progs {
			p := (j + r) % len(progs)
			ns, err := testRunDuration(progs[p], ctx, uint32(lookupRepeat))
			if err != nil {
				b.Fatal(err)
			}
			runs[p] = append(runs[p], float64(ns))
		}
	}
	med := make([]float64, len(progs))
	for i, rs := range runs {
		slices.Sort(rs)
		med[i] = rs[len(rs)/2]
	}
	return med
}

// fillPeer loads the peer-design program and gives it the bindings and the
// registered socket: one trie entry per binding (port 0 for every port).
func fillPeer(b *testing.B, bs []binding.Binding, sock syscall.Conn) *peerObjects {
	b.Helper()
	var objs peerObjects
	if err := loadPeerObjects(&objs, nil); err != nil {
		b.Fatal(err)
	}
	keys := make([]peerPeerKey, len(bs))
	vals := make([]peerPeerVal, len(bs))
	var targetSlot uint32
	for i, bb := range bs {
		a := bb.Prefix.Addr()
		k := peerPeerKey{
			Prefixlen: 32 + uint32(bb.Prefix.Bits()),
			Family:    famIndex(a),
			Proto:     protoIndex(bb.Protocol),
			Addr:      addrWords(a.As16(), a.Is4()),
		}
		if !bb.Ports.IsAny() {
			if !bb.Ports.Single() {
				b.Fatalf("the peer design has no port ranges: %s", bb)
			}
			k.Port = uint16(bb.Ports.Lo>>8 | bb.Ports.Lo<<8) // network byte order
		}
		// Label slots as switchyard numbers them: id*4 + proto*2 + family.
		id := uint32(2)
		if bb.Label == "target" {
			id = 1
		}
		slot := id*4 + uint32(k.Proto)*2 + uint32(k.Family)
		if id == 1 {
			targetSlot = slot
		}
		keys[i], vals[i] = k, peerPeerVal{Slot: slot, Prefixlen: k.Prefixlen}
	}
	if _, err := objs.PeerBindings.BatchUpdate(keys, vals, nil); err != nil {
		objs.Close()
		b.Fatalf("fill peer trie: %v", err)
	}
	putSocket(b, objs.PeerSockets, targetSlot, sock)
	return &objs
}

// putSocket puts sock in slot of the sockmap m.
func putSocket(b *testing.B, m *ebpf.Map, slot uint32, sock syscall.Conn) {
	b.Helper()
	rc, err := sock.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	if cerr := rc.Control(func(fd uintptr) { err = m.Update(slot, uint64(fd), ebpf.UpdateAny) }); cerr != nil {
		b.Fatal(cerr)
	}
	if err != nil {
		b.Fatalf("sockmap %s: %v", m, err)
	}
}

// reportMemlock reports the kernel memory the dispatch maps (and the peer's)
// take, as the kernel accounts it (memlock in the map's fdinfo).
func reportMemlock(b *testing.B, d *Dispatcher, peer *peerObjects) {
	b.Helper()
	total, _ := dispatchMemlock(b, d)
	b.Run("memlock", func(b *testing.B) {
		b.ReportMetric(float64(total)/(1<<20), "MiB-memlock")
		if peer != nil {
			b.ReportMetric(float64(mapMemlock(b, peer.PeerBindings)+mapMemlock(b, peer.PeerSockets))/(1<<20), "peer-MiB-memlock")
		}
	})
}

// reportMemlockLog logs what reportMemlock reports, map by map, and
// returns the number of bindings.
func reportMemlockLog(t testing.TB, d *Dispatcher) int {
	t.Helper()
	total, each := dispatchMemlock(t, d)
	count, err := d.BindingCounts()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range count {
		n += c
	}
	t.Logf("dispatch maps at %d bindings: memlock %.1f MiB (%s)", n, float64(total)/(1<<20), each)
	return n
}

// dispatchMemlock is the memlock of every dispatch map, in total and map by
// map in MiB.
func dispatchMemlock(tb testing.TB, d *Dispatcher) (uint64, string) {
	tb.Helper()
	var total uint64
	var each []string
	for _, m := range []*ebpf.Map{d.cfg, d.objs.SyPlens, d.objs.SyPrefixes, d.objs.SyPorts, d.objs.SyTables,
		d.objs.SyFilter, d.objs.SyIndex, d.objs.SyNoports, d.objs.SyNoaddr, d.objs.SyBlocks, d.objs.SySockets, d.objs.SyCounters, d.objs.SyBindings, d.objs.SyLabels,
		d.rec.bindingsB, d.rec.settings, d.rec.commit} {
		if m == nil {
			continue
		}
		n := mapMemlock(tb, m)
		total += n
		each = append(each, fmt.Sprintf("%s %.1f", mapName(m), float64(n)/(1<<20)))
	}
	return total, strings.Join(each, ", ")
}

func mapMemlock(b testing.TB, m *ebpf.Map) uint64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no memlock in fdinfo of map %s", m)
	return 0
}
