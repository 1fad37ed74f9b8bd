package dispatch

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// skLookupCtx mirrors struct bpf_sk_lookup for BPF_PROG_TEST_RUN.
type skLookupCtx struct {
	Cookie     uint64
	Family     uint32
	Protocol   uint32
	RemoteIP4  uint32
	RemoteIP6  [4]uint32
	RemotePort uint32
	LocalIP4   uint32
	LocalIP6   [4]uint32
	LocalPort  uint32
	Ifindex    uint32
}

func tcp4Ctx(dst netip.AddrPort) skLookupCtx {
	a := dst.Addr().As4()
	return skLookupCtx{
		Family:     2, // AF_INET
		Protocol:   6, // TCP
		RemoteIP4:  binary.NativeEndian.Uint32([]byte{192, 0, 2, 99}),
		RemotePort: 40000,
		LocalIP4:   binary.NativeEndian.Uint32(a[:]),
		LocalPort:  uint32(dst.Port()),
	}
}

// The three kinds of binding a benchmark hits, and a probe that hits each.
var benchTargets = []struct {
	name string
	b    binding.Binding
	dst  netip.AddrPort
}{
	{"host-port", binding.Binding{Label: "t0", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.200.1.1/32"), Ports: binding.Ports{Lo: 443, Hi: 443}}, netip.MustParseAddrPort("10.200.1.1:443")},
	{"net-range", binding.Binding{Label: "t1", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.200.2.0/24"), Ports: binding.Ports{Lo: 8000, Hi: 8999}}, netip.MustParseAddrPort("10.200.2.77:8080")},
	{"net-any", binding.Binding{Label: "t2", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.200.3.0/24"), Ports: binding.AnyPort}, netip.MustParseAddrPort("10.200.3.77:2222")},
}

// fillerBindings makes n bindings that mix /32 and /24 prefixes with single
// ports, ranges and every port, none of them covering the targets.
func fillerBindings(n int) []binding.Binding {
	bs := make([]binding.Binding, 0, n)
	for i := 0; len(bs) < n; i++ {
		var b binding.Binding
		b.Protocol = binding.TCP
		b.Label = fmt.Sprintf("f%d", i%200)
		x := i / 4
		switch i % 4 {
		case 0: // host, single port
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
			b.Ports = binding.Ports{Lo: uint16(1 + x%1000), Hi: uint16(1 + x%1000)}
		case 1: // host, range
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
			b.Ports = binding.Ports{Lo: 8000, Hi: 8999}
		case 2: // network, range
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{12, byte(x >> 8), byte(x), 0}), 24)
			b.Ports = binding.Ports{Lo: 5000, Hi: 5999}
		case 3: // network, every port
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{13, byte(x >> 8), byte(x), 0}), 24)
			b.Ports = binding.AnyPort
		}
		bs = append(bs, b)
	}
	return bs
}

// runLookup times n runs of prog with ctx in one BPF_PROG_TEST_RUN call.
func runLookup(b *testing.B, prog *ebpf.Program, ctx skLookupCtx, wantHit bool) {
	b.Helper()
	// The kernel's struct may have grown past ours; give it room.
	var out struct {
		skLookupCtx
		Spare [16]uint32
	}
	ret, err := prog.Run(&ebpf.RunOptions{Context: ctx, ContextOut: &out, Repeat: 1})
	if err != nil {
		b.Fatal(err)
	}
	if ret != 1 || (wantHit && out.Cookie == 0) {
		b.Fatalf("program returned %d, selected socket %d: not a hit", ret, out.Cookie)
	}
	b.ResetTimer()
	var total float64
	for left := b.N; left > 0; {
		n := min(left, 1<<24)
		ns, err := testRunDuration(prog, ctx, uint32(n))
		if err != nil {
			b.Fatal(err)
		}
		total += float64(ns) * float64(n)
		left -= n
	}
	b.ReportMetric(total/float64(b.N), "ns/lookup")
}

// testRunDuration runs prog repeat times with BPF_PROG_TEST_RUN and returns
// the kernel's measure of one run in ns. Unlike wall time it leaves out time
// the task spent rescheduled, which matters on a shared machine.
func testRunDuration(prog *ebpf.Program, ctx skLookupCtx, repeat uint32) (uint32, error) {
	in, err := binary.Append(nil, binary.NativeEndian, ctx)
	if err != nil {
		return 0, err
	}
	// struct bpf_attr, the BPF_PROG_TEST_RUN member.
	var attr struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration                        uint32
		ctxSizeIn, ctxSizeOut                   uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize, _                uint32
	}
	attr.progFD = uint32(prog.FD())
	attr.repeat = repeat
	attr.ctxSizeIn = uint32(len(in))
	attr.ctxIn = uint64(uintptr(unsafe.Pointer(&in[0])))
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(in)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, fmt.Errorf("prog test run: %w", errno)
		}
		return attr.duration, nil
	}
}

// BenchmarkLookup measures one sk_lookup run that hits, by number of
// bindings and kind of binding hit, beside the empty program.
func BenchmarkLookup(b *testing.B) {
	e := newEnv(b)
	base, err := loadBaselineEmpty()
	if err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	b.Run("empty", func(b *testing.B) { runLookup(b, base, tcp4Ctx(benchTargets[0].dst), false) })
	e.d.Close()

	for _, n := range []int{1, 1000, 100000} {
		for i, tgt := range benchTargets {
			if n == 1 || i == 0 {
				e = newEnv(b)
				bs := []binding.Binding{tgt.b}
				if n > 1 {
					bs = append(fillerBindings(n-len(benchTargets)), benchTargets[0].b, benchTargets[1].b, benchTargets[2].b)
				}
				if _, err := e.d.AddBindings(bs...); err != nil {
					b.Fatal(err)
				}
				for _, t := range benchTargets {
					mustRegister(b, e.d, t.b.Label, e.ns.ListenTCP(b, "127.0.0.1:0"))
				}
			}
			b.Run(fmt.Sprintf("bindings=%d/%s", n, tgt.name), func(b *testing.B) {
				runLookup(b, e.d.objs.SyDispatch, tcp4Ctx(tgt.dst), true)
			})
		}
	}
}

func loadBaselineEmpty() (*ebpf.Program, error) {
	var objs baselineObjects
	if err := loadBaselineObjects(&objs, nil); err != nil {
		return nil, err
	}
	return objs.SyBaseline, nil
}

// BenchmarkAddBindings measures adding 100,000 bindings in one change.
func BenchmarkAddBindings(b *testing.B) {
	bs := fillerBindings(100000)
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		b.StartTimer()
		start := time.Now()
		if _, err := e.d.AddBindings(bs...); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/100k-bindings")
		b.StopTimer()
		e.d.Close()
		b.StartTimer()
	}
}

// BenchmarkBindOne measures one more binding at 100,000.
func BenchmarkBindOne(b *testing.B) {
	e := newEnv(b)
	if _, err := e.d.AddBindings(fillerBindings(100000)...); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		bb := binding.Binding{Label: "x", Protocol: binding.UDP, Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)}), 32), Ports: binding.AnyPort}
		if _, err := e.d.AddBindings(bb); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
