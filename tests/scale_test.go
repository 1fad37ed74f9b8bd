package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
)

// scaleBindings is the product's limit on bindings (DESIGN.md, Scale).
const scaleBindings = 1 << 20

// TestApplyMillionBindings applies a file of 1,048,576 bindings with the
// real CLI, applies it again, and lists the bindings.
func TestApplyMillionBindings(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	file := filepath.Join(w.dir, "million.yaml")
	bs := writeScaleConfig(t, file, scaleBindings, 0)

	start := time.Now()
	out := w.slowCLI("apply", "-f", file)
	t.Logf("first apply: %v, daemon peak rss %.1f MiB", time.Since(start), float64(vmHWM(t, w.d.cmd.Process.Pid))/(1<<20))
	if n := strings.Count(out, "\n+ "); n != scaleBindings-1 || !strings.HasPrefix(out, "+ ") {
		t.Fatalf("first apply printed %d added bindings, want %d; output begins:\n%.300s", n+1, scaleBindings, out)
	}
	start = time.Now()
	if out := w.slowCLI("apply", "-f", file); out != "no changes\n" {
		t.Fatalf("second apply printed %.300q, want \"no changes\\n\"", out)
	}
	t.Logf("second apply: %v", time.Since(start))

	start = time.Now()
	out = w.slowCLI("bindings", "-o", "json")
	t.Logf("bindings -o json: %v, %d bytes", time.Since(start), len(out))
	binding.Sort(bs)
	if want := bindingsJSON(bs); out != want {
		i := 0
		for i < min(len(out), len(want)) && out[i] == want[i] {
			i++
		}
		t.Fatalf("bindings -o json differs from the %d bindings applied at byte %d of %d: got %.200q, want %.200q", len(bs), i, len(out), out[max(0, i-100):], want[max(0, i-100):])
	}

	if out := w.slowCLI("status"); !strings.Contains(out, "lbl-0") {
		t.Errorf("status does not show label lbl-0:\n%.500s", out)
	}
	t.Logf("daemon peak rss %.1f MiB", float64(vmHWM(t, w.d.cmd.Process.Pid))/(1<<20))
}

// bindingsJSON is what `switchyard bindings -o json` prints for bs.
func bindingsJSON(bs []binding.Binding) string {
	var b strings.Builder
	b.Grow(len(bs) * 110)
	b.WriteString("{\n  \"bindings\": [")
	for i, x := range bs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n    {\n      \"label\": \"")
		b.WriteString(x.Label)
		b.WriteString("\",\n      \"protocol\": \"")
		b.WriteString(x.Protocol.String())
		b.WriteString("\",\n      \"prefix\": \"")
		b.WriteString(x.Prefix.String())
		b.WriteString("\",\n      \"ports\": \"")
		b.WriteString(x.Ports.String())
		b.WriteString("\"\n    }")
	}
	b.WriteString("\n  ]\n}\n")
	return b.String()
}

// scaleBinding is the i-th of a set of distinct bindings in the shapes
// operators use: host addresses with one port, /24s with every port, port
// ranges, IPv6 /64s. Bindings of one seed never conflict; those of another
// seed differ in their labels.
func scaleBinding(i, seed int) binding.Binding {
	b := binding.Binding{Label: fmt.Sprintf("lbl-%d", (i+seed)%1000), Protocol: binding.TCP}
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
	return b
}

// writeScaleConfig writes a config of n bindings to path, in the form
// config.Marshal writes, and returns them.
func writeScaleConfig(tb testing.TB, path string, n, seed int) []binding.Binding {
	tb.Helper()
	c := &config.Config{Version: config.CurrentVersion, Bindings: make([]binding.Binding, n)}
	for i := range n {
		c.Bindings[i] = scaleBinding(i, seed)
	}
	data, err := config.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		tb.Fatal(err)
	}
	return c.Bindings
}

// vmHWM is the peak resident memory of a process, in bytes.
func vmHWM(tb testing.TB, pid int) int {
	return procStatus(tb, pid, "VmHWM:")
}

func procStatus(tb testing.TB, pid int, field string) int {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			var kb int
			fmt.Sscan(v, &kb)
			return kb << 10
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// slowCLI runs the CLI like mustCLI, with a deadline for commands that
// move a million bindings on a busy machine.
func (w *world) slowCLI(args ...string) string {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.switchyard, append([]string{"--control", w.control}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		w.t.Fatalf("switchyard %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}
