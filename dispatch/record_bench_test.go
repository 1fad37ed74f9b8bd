package dispatch

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// BenchmarkRecover measures the time to open state whose change of 100,000
// bindings (SY_BENCH_RECOVER sets another number) to another as many was
// interrupted, as a restarted daemon
// does before it reports ready: stopped before the commit point (the old
// set is recovered) or just after it (the new set is recovered, and the
// whole data path is still to be written). "clean" opens the same state
// after a change that finished, for the floor: loading the program and
// reading the record. MiB-alloc/recovery is what the open allocated, the
// most the recovery can add to a process's peak.
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
			n := envInt("SY_BENCH_RECOVER", 100000)
			sets := [2][]binding.Binding{recoverBindings(n), recoverBindings(n)}
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
			var alloc uint64
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
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				before := ms.TotalAlloc
				b.StartTimer()
				start := time.Now()
				d = e.open()
				took := time.Since(start)
				b.StopTimer()
				total += took
				runtime.ReadMemStats(&ms)
				alloc += ms.TotalAlloc - before
				if n, err := bindingCount(d); err != nil || n != len(sets[cur]) {
					b.Fatalf("recovered %d bindings (%v), want %d", n, err, len(sets[cur]))
				}
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/recovery")
			b.ReportMetric(float64(alloc)/float64(b.N)/(1<<20), "MiB-alloc/recovery")
		})
	}
}

// recoverBindings is fillerBindings(n), or past the 262,144 bindings it
// holds without repeating, the scale test's bindings.
func recoverBindings(n int) []binding.Binding {
	if n <= 1<<18 {
		return fillerBindings(n)
	}
	bs := make([]binding.Binding, n)
	for i := range bs {
		bs[i] = testenv.ScaleBinding(i, 0)
	}
	return bs
}

func bindingCount(d *Dispatcher) (int, error) {
	counts, err := d.BindingCounts()
	n := 0
	for _, c := range counts {
		n += c
	}
	return n, err
}
