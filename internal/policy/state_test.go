package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// pins lists the policy pins (sy_p_*, sy_k_*) in the dispatcher's state
// directory.
func (e *env) pins() []string {
	e.t.Helper()
	ents, err := os.ReadDir(e.d.Dir())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, ent := range ents {
		if n := ent.Name(); strings.HasPrefix(n, "sy_p_") || strings.HasPrefix(n, "sy_k_") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// The pins each policy state may have: bypass's maps and sockops link
// (its fentry links too, on a kernel that loads them), the kernel engine's
// maps.
var (
	bypassPins = []string{"sy_p_bypass", "sy_p_config", "sy_p_policy", "sy_p_rx", "sy_p_sk", "sy_p_sockops_link", "sy_p_stats"}
	kernelPins = []string{"sy_k_config", "sy_k_cookies", "sy_k_dirs", "sy_k_force", "sy_k_pairs", "sy_k_peers", "sy_k_stats"}
)

func (e *env) expectPins(what string, want []string) {
	e.t.Helper()
	got := slices.DeleteFunc(e.pins(), func(n string) bool { return strings.HasSuffix(n, "_link") && n != "sy_p_sockops_link" })
	if !slices.Equal(got, want) {
		e.t.Errorf("%s: policy pins %q, want %q", what, got, want)
	}
}

// No kernel object exists for a policy no label uses: none at all with no
// policy, only bypass's with a bypass label, none for a userspace splice,
// only the kernel engine's for a kernel splice; and each goes with the
// last label using it.
func TestPolicyStateOnlyInUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{TrustReaders: true})
	e.bind("svc", srvAddr+"/32", "8080")
	e.bind("px", srvAddr+"/32", "9000")
	e.expectPins("no policy", nil)

	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustOK(e.m.SetBypass("svc", true))
	e.expectPins("one bypass label", bypassPins)
	mustOK(e.m.SetBypass("svc", false))
	e.expectPins("bypass switched off, no connection open", nil)

	ln := e.srv.ListenTCP(t, "127.0.0.1:0")
	register := func(ln *net.TCPListener) error {
		_, err := e.d.Register("px", ln)
		return err
	}
	mustOK(e.m.StartSplice(context.Background(), "px", ln.Addr().String(), settings.Userspace, register))
	e.expectPins("one userspace splice label", nil)
	mustOK(e.m.StopSplice("px"))

	mustOK(e.m.StartSplice(context.Background(), "px", ln.Addr().String(), settings.Kernel, register))
	e.expectPins("one kernel-engine splice label", kernelPins)
	if st, _ := e.m.Status(); !strings.Contains(st["px"], "in the kernel") {
		t.Errorf("status of a kernel-engine splice: %q", st["px"])
	}
	mustOK(e.m.StopSplice("px"))
	e.expectPins("kernel-engine splice stopped, no connection open", nil)

	// A reopened manager finds nothing to adopt and makes nothing.
	e.m.Close()
	e.m = e.open()
	e.m.Settle()
	e.expectPins("reopened with no policy", nil)
}

// Bypass switched off for its last label while a bypassed connection
// streams: the connection's bytes arrive intact, bypass's state stays
// (without its sockops link: no new connection joins) until that
// connection has closed, then goes; switched on again meanwhile, it is
// taken back. The wait is logged once per retirement, not at each look.
func TestBypassStateGoesAfterItsConnections(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	e := newEnv(t, Options{TrustReaders: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	e.bypassServer("read", nil)
	e.expectPins("one bypass label", bypassPins)
	// Paced to last a few retireBypassEvery ticks (about 3 s), and held
	// open after that until both retirements began: loading bypass
	// again may take seconds on a busy machine.
	const n = 32 << 20
	h := e.startEnv(e.srv, true, []string{"SY_CLIENT_PACE=40ms", "SY_CLIENT_SAY_CONNECTED=1", "SY_CLIENT_HOLD=1"}, "client", srvAddr+":8080", "11", fmt.Sprint(n))
	if got := h.line(t); got != "connected" {
		t.Fatalf("client: %q", got)
	}
	if err := e.m.SetBypass("svc", false); err != nil {
		t.Fatal(err)
	}
	if c := e.counters("svc"); c.Connections != 1 {
		t.Errorf("bypass took on %d connections, want the 1 open: %+v", c.Connections, c)
	}
	e.expectPins("bypass off, its connection open", slices.DeleteFunc(slices.Clone(bypassPins), func(n string) bool { return n == "sy_p_sockops_link" }))
	// Switched on and off again while retiring.
	if err := e.m.SetBypass("svc", true); err != nil {
		t.Fatal(err)
	}
	e.expectPins("bypass on again", bypassPins)
	if err := e.m.SetBypass("svc", false); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(h.in, "close\n"); err != nil {
		t.Fatal(err)
	}
	if got, want := h.line(t), fmt.Sprintf("ok %d %s", n, streamHash(11, n)); got != want {
		t.Fatalf("bypassed connection across bypass off: client says %q, want %q", got, want)
	}
	h.cmd.Wait()
	before := e.counters("svc")
	// Nothing signals the removal: it comes within a retireBypassEvery
	// tick of the connection's close.
	testenv.WaitFor(t, 10*retireBypassEvery, "bypass state removed after its connection closed", func() (bool, string) {
		p := e.pins()
		return len(p) == 0, fmt.Sprint(p)
	})
	// What bypass counted stays counted: a counter that went down would
	// read as a restart to a scraper.
	if after := e.counters("svc"); after.Bytes < before.Bytes || after.Connections < before.Connections || before.Bytes == 0 {
		t.Errorf("counters of svc went from %+v to %+v as bypass state went", before, after)
	}
	if got := strings.Count(logs.String(), "bypass off for every label"); got != 2 {
		t.Errorf("the wait for bypass's connections logged %d times over two retirements, want 2:\n%s", got, logs.String())
	}
}

// lockedBuffer is a log destination that goroutines may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A removal cut short (the daemon killed between two unlinks) is finished
// by the next manager: with sy_p_bypass left, it adopts that and Settle
// removes it all; without it, Open removes what is left. The kernel
// engine's maps, and those older builds pinned beside bypass's, go at
// Open: their sockets were the earlier process's.
func TestPolicyStateRemovalCutShort(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{TrustReaders: true})
	e.bind("svc", srvAddr+"/32", "8080")
	e.bind("px", srvAddr+"/32", "9000")
	if err := e.m.SetBypass("svc", true); err != nil {
		t.Fatal(err)
	}
	ln := e.srv.ListenTCP(t, "127.0.0.1:0")
	if err := e.m.StartSplice(context.Background(), "px", ln.Addr().String(), settings.Kernel, func(ln *net.TCPListener) error {
		_, err := e.d.Register("px", ln)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e.expectPins("bypass and kernel labels", slices.Sorted(slices.Values(append(slices.Clone(bypassPins), kernelPins...))))
	// Off the record: the labels' settings say none, as after a change
	// the daemon did not live to finish.
	dir := e.d.Dir()
	e.m.Close()
	for _, cut := range []string{"sy_p_sockops_link", "sy_p_config"} {
		if err := os.Remove(dir + "/" + cut); err != nil {
			t.Fatal(err)
		}
	}
	e.m = e.open()
	e.expectPins("reopened after a cut removal (engine maps gone, bypass adopted)", []string{"sy_p_bypass", "sy_p_config", "sy_p_policy", "sy_p_rx", "sy_p_sk", "sy_p_sockops_link", "sy_p_stats"})
	// What SetPolicies does for labels whose settings say none.
	if err := e.m.SetBypass("svc", false); err != nil {
		t.Fatal(err)
	}
	e.m.Settle()
	e.expectPins("settled", nil)

	// Without sy_p_bypass, the rest is left-overs: Open removes them.
	if err := e.m.SetBypass("svc", true); err != nil {
		t.Fatal(err)
	}
	e.m.Close()
	if err := os.Remove(dir + "/sy_p_bypass"); err != nil {
		t.Fatal(err)
	}
	e.m = e.open()
	e.expectPins("reopened without sy_p_bypass", nil)
}
