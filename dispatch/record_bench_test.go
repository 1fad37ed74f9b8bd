package dispatch

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// BenchmarkRecover measures the time to open state whose change of 100,000
// bindings (to another 100,000) was interrupted, as a restarted daemon
// does before it reports ready: stopped before the commit point (the old
// set is recovered) or just after it (the new set is recovered, and the
// whole data path is still to be written). "clean" opens the same state
// after a change that finished, for the floor: loading the program and
// reading the record.
func BenchmarkRecover(b *testing.B) {
	for _, c := range []struct{ name, point string }{
		{"clean", ""},
		{"before-commit", "record-next"},
		{"after-commit", "flipped"},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b)
			// The second set gives every binding another label and moves
			// the host prefixes.
			sets := [2][]binding.Binding{fillerBindings(100000), fillerBindings(100000)}
			for i := range sets[1] {
				b := &sets[1][i]
				b.Label = fmt.Sprintf("g%d", i%200)
				if b.Prefix.Bits() == 32 {
					a := b.Prefix.Addr().As4()
					a[0] += 20
					b.Prefix = netip.PrefixFrom(netip.AddrFrom4(a), 32)
				}
			}
			if _, _, err := e.d.Replace(sets[0], nil, false); err != nil {
				b.Fatal(err)
			}
			d := e.d
			cur := 0
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				if c.point != "" {
					d.crash = func(p string) bool { return p == c.point }
					if _, _, err := d.Replace(sets[cur^1], nil, false); err == nil {
						b.Fatal("the change was not interrupted")
					}
				}
				d.Close()
				if c.point == "flipped" {
					cur ^= 1
				}
				b.StartTimer()
				start := time.Now()
				d = e.open()
				took := time.Since(start)
				b.StopTimer()
				total += took
				if n, err := bindingCount(d); err != nil || n != len(sets[cur]) {
					b.Fatalf("recovered %d bindings (%v), want %d", n, err, len(sets[cur]))
				}
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/recovery")
		})
	}
}

func bindingCount(d *Dispatcher) (int, error) {
	counts, err := d.BindingCounts()
	n := 0
	for _, c := range counts {
		n += c
	}
	return n, err
}
