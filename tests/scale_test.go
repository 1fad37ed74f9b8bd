package tests

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// scaleBindings is the product's limit on bindings (README, "Scale").
const scaleBindings = 1 << 20

// TestApplyMillionBindings applies a file of 1,048,576 bindings with the
// real CLI, applies it again, lists the bindings, and then applies the
// same bindings with every label changed (a relabel: every group changes).
func TestApplyMillionBindings(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	pid := w.d.cmd.Process.Pid
	file := filepath.Join(w.dir, "million.yaml")
	bs := writeScaleConfig(t, file, scaleBindings, 0)
	relabelFile := filepath.Join(w.dir, "relabel.yaml")
	relabelled := writeScaleConfig(t, relabelFile, scaleBindings, 1)

	start := time.Now()
	out := w.slowCLI("apply", "-f", file)
	peak := float64(vmHWM(t, pid)) / (1 << 20)
	t.Logf("first apply: %v, daemon peak rss %.1f MiB", time.Since(start), peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB during the first apply; the target is at most %d MiB", peak, maxApplyRSS)
	}
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
	peak = float64(vmHWM(t, pid)) / (1 << 20)
	t.Logf("daemon peak rss %.1f MiB", peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB (first and second apply, listing); the target is at most %d MiB", peak, maxApplyRSS)
	}

	// The relabel: every binding is removed and added again with another
	// label. Its own peak, from a reset of the daemon's (clearRefs),
	// until the daemon is idle again (a status waits for the rest of a
	// large change).
	clearRefs(t, pid)
	start = time.Now()
	out = w.slowCLI("apply", "-f", relabelFile)
	t.Logf("relabel apply: %v", time.Since(start))
	if nAdd, nRemove := strings.Count(out, "\n+ ")+boolInt(strings.HasPrefix(out, "+ ")), strings.Count(out, "\n- ")+boolInt(strings.HasPrefix(out, "- ")); nAdd != scaleBindings || nRemove != scaleBindings {
		t.Fatalf("the relabel printed %d added and %d removed bindings, want %d of each; output begins:\n%.300s", nAdd, nRemove, scaleBindings, out)
	}
	w.slowCLI("status")
	peak = float64(vmHWM(t, pid)) / (1 << 20)
	t.Logf("relabel: daemon peak rss %.1f MiB", peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB during the relabel of %d bindings (every label changed); the target is at most %d MiB", peak, scaleBindings, maxApplyRSS)
	}
	out = w.slowCLI("bindings", "-o", "json")
	binding.Sort(relabelled)
	if want := bindingsJSON(relabelled); out != want {
		i := 0
		for i < min(len(out), len(want)) && out[i] == want[i] {
			i++
		}
		t.Fatalf("after the relabel, bindings -o json differs from the %d bindings applied at byte %d of %d: got %.200q, want %.200q", len(relabelled), i, len(out), out[max(0, i-100):], want[max(0, i-100):])
	}
	// The data path picks the new labels: one binding of each shape, at
	// the start and the end of the set.
	for _, i := range []int{0, 4, 5, 6, 7, scaleBindings - 8, scaleBindings - 1} {
		b := testenv.ScaleBinding(i, 1)
		dst := netip.AddrPortFrom(b.Prefix.Addr(), max(b.Ports.Lo, 1))
		if got := w.lookup(b.Protocol.String(), dst); got.Binding == nil || got.Binding.Label != b.Label || got.Binding.Ports != b.Ports.String() {
			t.Errorf("after the relabel, lookup %s %s picked %+v, want %s", b.Protocol, dst, got.Binding, b)
		}
	}
	bs = relabelled

	// At the limit, bind says so; after an unbind it has room for one.
	r := w.cli("bind", "x", "tcp", "192.0.2.1", "80")
	if want := "1048577 bindings, at most 1048576"; r.code == 0 || !strings.Contains(r.stderr, want) {
		t.Errorf("bind at the limit: exit %d, stderr %q; want a failure saying %q", r.code, r.stderr, want)
	}
	first := bs[0]
	w.mustCLI("unbind", first.Label, first.Protocol.String(), first.Prefix.String(), first.Ports.String())
	if out := w.mustCLI("bind", "x", "tcp", "192.0.2.1", "80"); out != "bound x tcp 192.0.2.1/32 80\n" {
		t.Errorf("bind after unbind printed %q", out)
	}
	peak = float64(vmHWM(t, pid)) / (1 << 20)
	t.Logf("daemon peak rss %.1f MiB", peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB (relabel, listing, bind); the target is at most %d MiB", peak, maxApplyRSS)
	}
}

// boolInt is 1 for true and 0 for false.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// clearRefs resets the peak resident memory of a process (VmHWM) to what
// it holds now (proc(5), clear_refs "5").
func clearRefs(tb testing.TB, pid int) {
	tb.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		tb.Fatal(err)
	}
}

// maxApplyRSS is the target for the daemon's resident memory, in MiB,
// during and after an apply of 1,048,576 bindings (issue 9).
const maxApplyRSS = 256

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

// writeScaleConfig writes a config of n bindings to path, in the form
// config.Marshal writes, and returns them.
func writeScaleConfig(tb testing.TB, path string, n, seed int) []binding.Binding {
	tb.Helper()
	c := &config.Config{Version: config.CurrentVersion, Bindings: make([]binding.Binding, n)}
	for i := range n {
		c.Bindings[i] = testenv.ScaleBinding(i, seed)
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
	r := w.cliTimeout(nil, nil, 2*time.Minute, args...)
	if r.code != 0 {
		w.t.Fatalf("switchyard %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// BenchmarkApplyMillion measures `switchyard apply -f` of 1,048,576
// bindings into an empty daemon, end to end (CLI parse, wire, commit, the
// printed diff), the daemon's peak and settled resident memory, a second
// apply of the same file, and an apply of the same bindings with every
// label changed (a relabel), with the peak of each.
func BenchmarkApplyMillion(b *testing.B) {
	file := filepath.Join(b.TempDir(), "million.yaml")
	writeScaleConfig(b, file, scaleBindings, 0)
	relabel := filepath.Join(filepath.Dir(file), "relabel.yaml")
	writeScaleConfig(b, relabel, scaleBindings, 1)
	os.Chmod(filepath.Dir(file), 0o755)
	// The timer runs throughout: one iteration takes far longer than the
	// default benchtime, so b.Loop stops after it (a stopped timer would
	// make it loop on).
	for b.Loop() {
		w := newWorld(b)
		pid := w.d.cmd.Process.Pid
		start, cli, daemon := time.Now(), childrenCPU(b), processCPU(b, pid)
		w.slowCLI("apply", "-f", file)
		b.ReportMetric(time.Since(start).Seconds(), "s/apply-1M")
		// The reply comes at the commit point; the daemon then brings
		// its spare generations up to date, and a status waits for it:
		// this says when the daemon is idle again.
		w.slowCLI("status")
		b.ReportMetric(time.Since(start).Seconds(), "s/apply-1M-settled")
		// CPU time says what the apply costs on a machine shared with
		// other work, where wall time mostly says how busy it was.
		b.ReportMetric(childrenCPU(b)-cli, "cli-cpu-s/apply-1M")
		b.ReportMetric(processCPU(b, pid)-daemon, "daemon-cpu-s/apply-1M")
		b.ReportMetric(float64(vmHWM(b, pid))/(1<<20), "MiB-peak-rss")
		b.ReportMetric(float64(procStatus(b, pid, "VmRSS:"))/(1<<20), "MiB-rss-after")
		// Reset the daemon's peak, so that the second figure is the
		// second apply's own peak.
		clearRefs(b, pid)
		start = time.Now()
		w.slowCLI("apply", "-f", file)
		b.ReportMetric(time.Since(start).Seconds(), "s/apply-1M-again")
		b.ReportMetric(float64(vmHWM(b, pid))/(1<<20), "MiB-peak-rss-again")
		// The same bindings with every label changed: every group
		// changes. Its peak is taken once the daemon is idle again.
		clearRefs(b, pid)
		start = time.Now()
		w.slowCLI("apply", "-f", relabel)
		b.ReportMetric(time.Since(start).Seconds(), "s/apply-1M-relabel")
		w.slowCLI("status")
		b.ReportMetric(float64(vmHWM(b, pid))/(1<<20), "MiB-peak-rss-relabel")
		w.d.stop(b, syscall.SIGTERM)
	}
}

// childrenCPU is the CPU time, user and system, in seconds, of the child
// processes this one has waited for.
func childrenCPU(tb testing.TB) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		tb.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// processCPU is the CPU time, user and system, in seconds, of a running
// process (proc(5): utime and stime, fields 14 and 15, in clock ticks of
// 1/100 s on Linux).
func processCPU(tb testing.TB, pid int) float64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// The command name, in parentheses, may hold spaces: count from
	// after it.
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	var u, s float64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return (u + s) / 100
}
