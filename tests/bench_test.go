package tests

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
)

// BenchmarkRegister measures socket registrations over the control socket
// of a running switchyardd, one client connection, one request each.
func BenchmarkRegister(b *testing.B) {
	w := newWorld(b)
	w.mustCLI("bind", "svc", "tcp", "10.1.0.0/24", "*")
	ln := w.ns.ListenTCP(b, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	c, err := control.Dial(context.Background(), w.control)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	start := time.Now()
	for b.Loop() {
		if _, err := c.Register(ctx, "svc", f); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "registrations/s")
}

// BenchmarkDaemonMemory measures the resident memory of a switchyardd that
// adopted 100,000 bindings and answered a listing of them.
func BenchmarkDaemonMemory(b *testing.B) {
	w := newWorldNoDaemon(b)
	d, err := dispatch.Open(w.ns.Path(), dispatch.Options{Root: w.root})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.AddBindings(manyBindings(100000)...); err != nil {
		b.Fatal(err)
	}
	d.Close()
	w.d = w.startDaemon()
	b.Logf("rss after adopting: %.1f MiB", float64(vmRSS(b, w.d.cmd.Process.Pid))/(1<<20))
	out := w.mustCLI("bindings", "-o", "json")
	if n := strings.Count(out, `"label"`); n != 100000 {
		b.Fatalf("daemon lists %d bindings", n)
	}
	w.mustCLI("status")
	var rss int
	for b.Loop() {
		rss = vmRSS(b, w.d.cmd.Process.Pid)
	}
	b.ReportMetric(float64(rss)/(1<<20), "MiB-rss")
}

func manyBindings(n int) []binding.Binding {
	bs := make([]binding.Binding, 0, n)
	for i := 0; i < n; i++ {
		b := binding.Binding{Label: fmt.Sprintf("l%d", i%500), Protocol: binding.TCP}
		x := i / 2
		if i%2 == 0 {
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
			b.Ports = binding.Ports{Lo: uint16(1 + x%60000), Hi: uint16(1 + x%60000)}
		} else {
			b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(x >> 8), byte(x), 0}), 24)
			b.Ports = binding.AnyPort
		}
		bs = append(bs, b)
	}
	return bs
}

func vmRSS(b testing.TB, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
