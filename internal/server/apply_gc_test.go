package server

import (
	"math"
	"net/netip"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
)

// gogc is the collector's GOGC setting, read without changing it.
func gogc() int64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// A large apply turns the collector off while it runs, when a soft memory
// limit is set. Applies that overlap must leave it as they found it: one
// that saved the setting another had already turned off would restore
// "off" for good, and the daemon's heap would then grow to the limit.
func TestConcurrentLargeAppliesRestoreGC(t *testing.T) {
	ts := newTestServer(t)
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(1 << 40))
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	if debug.SetMemoryLimit(-1) == math.MaxInt64 {
		t.Fatal("no soft memory limit set")
	}

	bs := make(binding.List, 10000)
	for i := range bs {
		a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		bs[i] = binding.Binding{Label: "web", Protocol: binding.TCP, Prefix: netip.PrefixFrom(a, 32), Ports: binding.Ports{Lo: 80, Hi: 80}}
	}
	const applies = 6
	var wg sync.WaitGroup
	errs := make(chan error, applies)
	for i := range applies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := ts.call(rootPeer, &control.ApplyRequest{Config: control.Config{Bindings: append(binding.List(nil), bs...)}, DryRun: i%2 == 1})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := gogc(); got != 100 {
		t.Errorf("after %d overlapping applies GOGC is %d, want 100 as before them", applies, got)
	}
}
