package dispatch

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
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

// lookupCtx is what the kernel hands the program for a TCP connection or
// UDP datagram to dst.
func lookupCtx(proto binding.Protocol, dst netip.AddrPort) skLookupCtx {
	c := skLookupCtx{Protocol: 6, RemotePort: 40000, LocalPort: uint32(dst.Port())}
	if proto == binding.UDP {
		c.Protocol = 17
	}
	if dst.Addr().Is4() {
		c.Family = 2 // AF_INET
		c.RemoteIP4 = binary.NativeEndian.Uint32([]byte{192, 0, 2, 99})
		c.LocalIP4 = addrWords(dst.Addr().As16(), true)[0]
		return c
	}
	c.Family = 10 // AF_INET6
	c.RemoteIP6 = addrWords(netip.MustParseAddr("2001:db8:ffff::99").As16(), false)
	c.LocalIP6 = addrWords(dst.Addr().As16(), false)
	return c
}

// runLookup runs prog (BPF_PROG_TEST_RUN) on what the kernel hands it for
// ctx and returns its verdict and the cookie of the socket it selected (0
// for none).
func runLookup(tb testing.TB, prog *ebpf.Program, ctx skLookupCtx) (uint32, uint64) {
	tb.Helper()
	// The kernel's struct may have grown past ours; give it room.
	var out struct {
		skLookupCtx
		Spare [16]uint32
	}
	ret, err := prog.Run(&ebpf.RunOptions{Context: ctx, ContextOut: &out})
	if err != nil {
		tb.Fatal(err)
	}
	return ret, out.Cookie
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

// BenchmarkAddBindings measures adding 100,000 bindings in one change.
func BenchmarkAddBindings(b *testing.B) {
	bs := fillerBindings(100000)
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		b.StartTimer()
		start, cpu := time.Now(), processCPU(b)
		if _, err := e.d.AddBindings(bs...); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/100k-bindings")
		// A change this large returns at its commit point; the next
		// operation waits for the rest of it (see exclusive).
		if _, err := e.d.BindingCounts(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/100k-bindings-settled")
		// On a shared machine the CPU time (of every thread, the
		// collector's too) says what the change costs, its rest too.
		b.ReportMetric(processCPU(b)-cpu, "cpu-s/100k-bindings")
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
	// The set-up's rest (a large change) is not the first bind's cost.
	if _, err := e.d.BindingCounts(); err != nil {
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

// processCPU is the CPU time, user and system, of this process in seconds.
func processCPU(tb testing.TB) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
