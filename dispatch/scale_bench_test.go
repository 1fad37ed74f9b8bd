package dispatch

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// scaleBindings returns n distinct bindings in the shapes operators use:
// host addresses with one port, /24s with every port or a port range, IPv6
// /64s. n may be up to 1,048,576.
func scaleBindings(n int) []binding.Binding {
	bs := make([]binding.Binding, n)
	for i := range bs {
		b := binding.Binding{Label: fmt.Sprintf("lbl-%d", i%1000), Protocol: binding.TCP}
		x := i / 8
		switch i % 8 {
		case 0, 1, 2, 3: // host /32, four single ports
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
			p := [4]uint16{80, 443, 8080, 8443}[i%4]
			b.Ports = binding.Ports{Lo: p, Hi: p}
		case 4, 5: // /24, a port range inside every port
			b.Protocol = binding.UDP
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(11 + x>>16), byte(x >> 8), byte(x), 0}), 24)
			b.Ports = [2]binding.Ports{{Lo: 8000, Hi: 8999}, binding.AnyPort}[i%2]
		case 6, 7: // IPv6 /64, one port and every port
			a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(x >> 16), byte(x >> 8), byte(x)}
			b.Prefix = netip.PrefixFrom(netip.AddrFrom16(a), 64)
			b.Ports = [2]binding.Ports{{Lo: 53, Hi: 53}, binding.AnyPort}[i%2]
		}
		bs[i] = b
	}
	return bs
}

// BenchmarkReplaceMillion measures ReplaceBindings of 1,048,576 bindings
// into an empty dispatcher, then of the same set again (no change).
func BenchmarkReplaceMillion(b *testing.B) {
	bs := scaleBindings(1 << 20)
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		b.StartTimer()
		start := time.Now()
		if _, _, err := e.d.ReplaceBindings(bs, false); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/replace-1M")
		start = time.Now()
		if a, r, err := e.d.ReplaceBindings(bs, false); err != nil || len(a)+len(r) != 0 {
			b.Fatal(err, len(a), len(r))
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/replace-1M-again")
		b.StopTimer()
		e.d.Close()
		b.StartTimer()
	}
}
