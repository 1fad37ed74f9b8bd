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

// millionBindings makes 1,048,576 distinct bindings: over 262,144 host
// addresses, three single ports and a port range each, except the last
// host's range, which is an every-port binding of 10.9.0.0/16 instead, and
// the last but one host's four, which are 8000-8999 in four adjacent
// ranges of one label (one segment, see README "lookup").
func millionBindings() []binding.Binding {
	const n = 1 << 20
	bs := make([]binding.Binding, 0, n)
	for i := range n {
		h := i / 4
		b := binding.Binding{Label: "l" + string(rune('a'+h%20)), Protocol: binding.TCP,
			Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(h >> 16), byte(h >> 8), byte(h)}), 32)}
		switch {
		case h == n/4-2:
			lo := uint16(8000 + 250*(i%4))
			b.Ports = binding.Ports{Lo: lo, Hi: lo + 249}
		case i%4 < 3:
			b.Ports = binding.Ports{Lo: uint16(80 + i%4), Hi: uint16(80 + i%4)}
		case i == n-1:
			b.Prefix, b.Ports = netip.MustParsePrefix("10.9.0.0/16"), binding.AnyPort
		default:
			b.Ports = binding.Ports{Lo: 8000, Hi: 8999}
		}
		bs = append(bs, b)
	}
	return bs
}

// BenchmarkLookupCLI measures `switchyard lookup` end to end, the CLI
// process from start to exit, with 1,048,576 bindings pinned, first with
// no daemon, then with switchyardd serving the state: a host port with a
// socket, the middle of a port range with and without one, an every-port
// binding, a port no binding serves at a bound address, and an address no
// binding covers.
func BenchmarkLookupCLI(b *testing.B) {
	w := newWorldNoDaemon(b)
	bs := millionBindings()
	host := bs[5] // label lb, port 81 of 10.0.0.1
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
		if _, err := d.Register(host.Label, w.ns.ListenTCP(b, "127.0.0.1:0")); err != nil {
			b.Fatal(err)
		}
	}()
	cases := []struct{ name, dst, verdict string }{
		{"host-delivered", netip.AddrPortFrom(host.Prefix.Addr(), host.Ports.Lo).String(), "delivered"},
		{"range-delivered", "10.0.0.1:8500", "delivered"},
		{"range-refused", "10.0.0.2:8500", "refused"},
		{"every-port-refused", "10.9.1.1:5000", "refused"},
		{"port-miss-kernel", "10.0.0.2:443", "kernel"},
		{"address-miss-kernel", "10.200.0.1:8500", "kernel"},
		{"merged-range-refused", "10.3.255.254:8300", "refused"},
	}
	run := func(b *testing.B, daemon string) {
		for _, tc := range cases {
			b.Run(daemon+"/"+tc.name, func(b *testing.B) {
				args := []string{"--netns", w.ns.Path(), "--control", w.control, "lookup", "tcp", tc.dst, "-o", "json", "--bpffs", w.root}
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
	run(b, "no-daemon")
	w.ready = 5 * time.Minute
	w.d = w.startDaemon()
	w.registerTCP(host.Label, "tcp", "127.0.0.1:0")
	run(b, "daemon")
}
