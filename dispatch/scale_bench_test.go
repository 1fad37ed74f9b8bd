package dispatch

import (
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

func scaleBindings(n int) []binding.Binding {
	bs := make([]binding.Binding, n)
	for i := range bs {
		bs[i] = testenv.ScaleBinding(i, 0)
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
