package tests

import (
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
)

// millionBindings makes 1,048,576 distinct bindings over 262,144 host
// addresses: three single ports and a port range each.
func millionBindings() []binding.Binding {
	const n = 1 << 20
	bs := make([]binding.Binding, 0, n)
	for i := range n {
		h := i / 4
		b := binding.Binding{Label: "l" + string(rune('a'+h%20)), Protocol: binding.TCP,
			Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(h >> 16), byte(h >> 8), byte(h)}), 32)}
		if i%4 < 3 {
			b.Ports = binding.Ports{Lo: uint16(80 + i%4), Hi: uint16(80 + i%4)}
		} else {
			b.Ports = binding.Ports{Lo: 8000, Hi: 8999}
		}
		bs = append(bs, b)
	}
	return bs
}

// BenchmarkLookupCLI measures `switchyard lookup` end to end, the CLI
// process from start to exit, with 1,048,576 bindings pinned and no
// daemon: a host binding with a socket, a /24 range without one, and
// traffic no binding takes.
func BenchmarkLookupCLI(b *testing.B) {
	w := newWorldNoDaemon(b)
	bs := millionBindings()
	func() {
		d, err := dispatch.Open(w.ns.Path(), dispatch.Options{Root: w.root})
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		start := time.Now()
		if _, _, err := d.ReplaceBindings(bs, false); err != nil {
			b.Fatal(err)
		}
		b.Logf("bound %d bindings in %v", len(bs), time.Since(start))
		if _, err := d.Register(bs[5].Label, w.ns.ListenTCP(b, "127.0.0.1:0")); err != nil {
			b.Fatal(err)
		}
	}()
	for _, tc := range []struct{ name, dst, verdict string }{
		{"host-delivered", netip.AddrPortFrom(bs[5].Prefix.Addr(), bs[5].Ports.Lo).String(), "delivered"},
		{"range-refused", "10.0.0.2:8500", "refused"},
		{"none-kernel", "10.200.0.1:443", "kernel"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			args := []string{"--netns", w.ns.Path(), "lookup", "tcp", tc.dst, "-o", "json", "--bpffs", w.root}
			for b.Loop() {
				out, err := exec.CommandContext(context.Background(), bin.switchyard, args...).Output()
				if err != nil {
					b.Fatalf("lookup: %v", err)
				}
				var got struct{ Verdict string }
				if err := json.Unmarshal(out, &got); err != nil || got.Verdict != tc.verdict {
					b.Fatalf("lookup %s: %s, want verdict %s", tc.dst, out, tc.verdict)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/lookup")
		})
	}
}
