package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/control"
)

// hostileProc is hostile_client.py run as uid 65534 against a world's
// daemon.
type hostileProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	// open and refused are the connections the client holds and those
	// whose connect failed, once it said it was ready.
	open, refused int
}

// hostile starts the client in mode with n connections (or threads, or
// requests) and returns once it is ready.
func (w *world) hostile(t testing.TB, mode string, n int) *hostileProc {
	t.Helper()
	src, err := os.ReadFile("hostile_client.py")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(w.dir, "hostile_client.py")
	if err := os.WriteFile(script, src, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"/usr/bin/python3", script, mode, w.control, strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &hostileProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := h.out.ReadString('\n')
	if _, serr := fmt.Sscanf(line, "ready %d %d", &h.open, &h.refused); err != nil || serr != nil {
		t.Fatalf("hostile client %s: %q, %v", mode, line, err)
	}
	return h
}

// stop tells the client to finish and returns what it said last.
func (h *hostileProc) stop(t testing.TB) string {
	t.Helper()
	h.stdin.Close()
	rest, _ := io.ReadAll(h.out)
	h.cmd.Wait()
	return strings.TrimSpace(string(rest))
}

func openFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// alive fails the test if the daemon has exited.
func (w *world) alive(t testing.TB) {
	t.Helper()
	select {
	case <-w.d.done:
		t.Fatalf("switchyardd exited (%v); log:\n%s", w.d.cmd.ProcessState, w.d.stderr.String())
	default:
	}
}

// rootWorks runs root's bindings, bind and status, each of which must
// succeed.
func (w *world) rootWorks(t testing.TB, label, prefix string) {
	t.Helper()
	w.mustCLI("bind", label, "tcp", prefix, "80")
	if out := w.mustCLI("bindings"); !strings.Contains(out, label) {
		t.Errorf("root's bindings does not list %s:\n%.500s", label, out)
	}
	if out := w.mustCLI("status", label); !strings.Contains(out, label) {
		t.Errorf("root's status %s:\n%s", label, out)
	}
}

// A user other than root opens more idle control connections than the
// daemon has file descriptors: the daemon stays up, turns the excess away,
// and root's bindings, bind and status succeed. Then the limit is lowered
// below what the daemon already uses, so that accept itself fails with
// EMFILE: the daemon closes a connection of that user to make room for
// root's, and goes on.
func TestHostileIdleConnections(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	pid := w.d.cmd.Process.Pid
	w.mustCLI("bind", "svc", "tcp", "10.1.0.0/24", "*")

	limit := uint64(openFDs(t, pid) + 24)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatal(err)
	}
	h := w.hostile(t, "idle", int(3*limit))
	t.Logf("RLIMIT_NOFILE %d; uid 65534 connected %d times (%d connects failed); daemon holds %d fds", limit, h.open, h.refused, openFDs(t, pid))
	w.rootWorks(t, "root1", "10.2.0.0/24")
	w.alive(t)
	if !strings.Contains(w.d.stderr.String(), `msg="refused control connection"`) {
		t.Errorf("the daemon logged no refused connection")
	}

	// Below what the daemon holds now: every accept fails until it sheds.
	low := uint64(openFDs(t, pid) - 4)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: low, Max: low}, nil); err != nil {
		t.Fatal(err)
	}
	h2 := w.hostile(t, "idle", int(2*limit))
	t.Logf("RLIMIT_NOFILE %d; uid 65534 connected %d more times", low, h2.open)
	w.rootWorks(t, "root2", "10.3.0.0/24")
	w.alive(t)
	if !strings.Contains(w.d.stderr.String(), "out of file descriptors") {
		t.Errorf("the daemon never ran out of descriptors at accept; the test did not test that")
	}
	h.stop(t)
	h2.stop(t)
	w.alive(t)
}

// rssBound is the most resident memory switchyardd may have with 50,000
// bindings while 300 connections of a user other than root ask for the
// listing with a 4 KiB receive buffer and never read. Before the limits it
// grew to 2 GB; the baseline with the listing snapshot built is about 40
// MiB; each admitted connection (32 per uid) holds one 32 KiB datagram and
// a 64 KiB receive buffer.
const rssBound = 96 << 20

// Users other than root that ask for large listings and never read do not
// pin the daemon's memory, and root is answered meanwhile.
func TestHostileListingsMemory(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	d, err := dispatch.Open(w.ns.Path(), dispatch.Options{Root: w.root})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.AddBindings(manyBindings(50000)...); err != nil {
		t.Fatal(err)
	}
	d.Close()
	w.d = w.startDaemon()
	pid := w.d.cmd.Process.Pid
	if n := strings.Count(w.mustCLI("bindings", "-o", "json"), `"label"`); n != 50000 {
		t.Fatalf("root lists %d bindings, want 50000", n)
	}
	before := vmRSS(t, pid)

	h := w.hostile(t, "list", 300)
	peak := 0
	for range 30 {
		peak = max(peak, vmRSS(t, pid))
		time.Sleep(100 * time.Millisecond)
	}
	if n := strings.Count(w.mustCLI("bindings", "-o", "json"), `"label"`); n != 50000 {
		t.Errorf("root lists %d bindings during the attack, want 50000", n)
	}
	w.mustCLI("status")
	peak = max(peak, vmRSS(t, pid))
	t.Logf("rss before %.1f MiB, peak with 300 unread listings %.1f MiB (bound %d MiB); %d connected, %d refused",
		float64(before)/(1<<20), float64(peak)/(1<<20), rssBound>>20, h.open, h.refused)
	if peak > rssBound {
		t.Errorf("daemon rss reached %.1f MiB with unread listings, over the bound of %d MiB", float64(peak)/(1<<20), rssBound>>20)
	}
	h.stop(t)
	w.alive(t)
}

// A user other than root that flags its messages replies (which the
// daemon never reads) gets no more room than its requests have: eight
// connections that announce a list-bindings "reply" of 1 GiB and stream
// 64 MiB of it are each hung up on at their first datagram, and the
// daemon's memory stays within rssBound, where it buffered them all (512
// MiB) before it found they were no requests.
func TestHostileReplyFlag(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	pid := w.d.cmd.Process.Pid
	before := vmRSS(t, pid)
	h := w.hostile(t, "fakereply", 8)
	peak := vmRSS(t, pid)
	w.mustCLI("status")
	t.Logf("rss before %.1f MiB, after 8 connections streamed a 1 GiB \"reply\" %.1f MiB (bound %d MiB); %d of %d hung up on",
		float64(before)/(1<<20), float64(peak)/(1<<20), rssBound>>20, h.refused, h.open)
	if h.refused != h.open {
		t.Errorf("the daemon took all 64 MiB of %d of the %d messages flagged replies", h.open-h.refused, h.open)
	}
	if peak > rssBound {
		t.Errorf("daemon rss reached %.1f MiB with messages flagged replies, over the bound of %d MiB", float64(peak)/(1<<20), rssBound>>20)
	}
	h.stop(t)
	w.alive(t)
}

// Many refusals from one user produce a bounded number of log lines, while
// the counter counts every one.
func TestRefusalLogsRateLimited(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "--metrics-addr", "127.0.0.1:0")
	const n = 500
	h := w.hostile(t, "bind", n)
	if got := h.stop(t); got != fmt.Sprintf("done %d", n) {
		t.Fatalf("hostile client: %q, want %d refusals", got, n)
	}
	lines := strings.Count(w.d.stderr.String(), `msg="refused request"`)
	t.Logf("%d refusals, %d log lines", n, lines)
	// 10 at once, then 10 a minute: the test takes seconds.
	if lines < 1 || lines > 12 {
		t.Errorf("%d log lines for %d refusals, want 1 to 12", lines, n)
	}
	m := regexp.MustCompile(`(?m)^switchyard_changes_refused_total (\d+)$`).FindStringSubmatch(w.metrics())
	if m == nil || m[1] != strconv.Itoa(n) {
		t.Errorf("switchyard_changes_refused_total = %v, want %d", m, n)
	}
}

// BenchmarkStatusUnderListingFlood measures root's status latency with
// 50,000 bindings: idle, alone; flood, while 64 threads of uid 65534 list
// the bindings over and over. Each reports the median and 99th percentile
// of 200 calls (ms-p50, ms-p99).
func BenchmarkStatusUnderListingFlood(b *testing.B) {
	w := newWorldNoDaemon(b)
	d, err := dispatch.Open(w.ns.Path(), dispatch.Options{Root: w.root})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.AddBindings(manyBindings(50000)...); err != nil {
		b.Fatal(err)
	}
	d.Close()
	w.d = w.startDaemon()
	ctx := context.Background()
	c, err := control.Dial(ctx, w.control)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	sample := func(b *testing.B) {
		var ds []time.Duration
		for b.Loop() {
			ds = ds[:0]
			for range 200 {
				start := time.Now()
				if _, err := c.Status(ctx, "l7"); err != nil {
					b.Fatal(err)
				}
				ds = append(ds, time.Since(start))
			}
		}
		slices.Sort(ds)
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		b.ReportMetric(ms(ds[len(ds)/2]), "ms-p50")
		b.ReportMetric(ms(ds[len(ds)*99/100]), "ms-p99")
	}
	b.Run("idle", sample)
	h := w.hostile(b, "flood", 64)
	b.Run("flood", sample)
	b.Logf("flood: %s listings of 50,000 bindings by uid 65534", h.stop(b))
}
