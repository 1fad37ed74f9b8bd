package tests

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// load dials random addresses and ports of a prefix from inside the
// namespace, as fast as a few workers can, and counts every attempt.
type load struct {
	attempts, failures atomic.Int64
	mu                 sync.Mutex
	errs               []string
	stop               chan struct{}
	wg                 sync.WaitGroup
	start              time.Time
}

func startLoad(w *world, workers int, target func(r *rand.Rand) string) *load {
	l := &load{stop: make(chan struct{}), start: time.Now()}
	for i := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 99))
			buf := make([]byte, 8)
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				addr := target(r)
				l.attempts.Add(1)
				c, err := w.ns.DialTCP(addr, 5*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					var n int
					n, err = c.Read(buf)
					if err == nil && string(buf[:n]) != "ok" {
						err = fmt.Errorf("read %q", buf[:n])
					}
					c.Close()
				}
				if err != nil {
					l.failures.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, fmt.Sprintf("%s: %v", addr, err))
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

func (l *load) finish() { close(l.stop); l.wg.Wait() }

// finishChecked finishes the load, logs what it did, and fails the test
// if any connection failed.
func (l *load) finishChecked(t *testing.T) {
	t.Helper()
	l.finish()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%d connections in %v, %d failed %v", l.attempts.Load(), time.Since(l.start).Round(time.Millisecond), l.failures.Load(), l.errs)
	if l.failures.Load() != 0 {
		t.Errorf("%d of %d connections failed: %v", l.failures.Load(), l.attempts.Load(), l.errs)
	}
}

// waitAttempts blocks until the load has made n more attempts, so each
// event of the test happens under traffic.
func (l *load) waitAttempts(t *testing.T, n int64) {
	t.Helper()
	target := l.attempts.Load() + n
	testenv.WaitFor(t, 60*time.Second, "load", func() (bool, string) {
		got := l.attempts.Load()
		return got >= target, fmt.Sprintf("stalled at %d attempts, want %d", got, target)
	})
}

func sk_lookupProgs(t *testing.T, w *world) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: w.ns.FD(), Attach: ebpf.AttachSkLookup})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// Under continuous load, restarting the daemon (SIGTERM, then SIGKILL),
// upgrading it to a build with a changed program, and applying a changed
// config fail no connection.
func TestZeroLossRestartUpgradeApply(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	v1 := writeFile(t, `version: 1
bindings:
  - {label: web, protocol: tcp, prefix: 10.8.0.0/16, ports: "*"}
  - {label: old, protocol: tcp, prefix: 10.9.0.0/16, ports: "80"}
`)
	v2 := writeFile(t, `version: 1
bindings:
  - {label: web, protocol: tcp, prefix: 10.8.0.0/17, ports: "*"}
  - {label: web, protocol: tcp, prefix: 10.8.128.0/17, ports: "*"}
  - {label: web, protocol: tcp, prefix: 10.8.7.0/24, ports: "1-1024"}
  - {label: new, protocol: tcp, prefix: 10.10.0.0/16, ports: "443"}
`)
	w.mustCLI("apply", "-f", v1)
	serveOK(w.registerTCP("web", "tcp4", "127.0.0.1:0"))

	start := time.Now()
	l := startLoad(w, 8, func(r *rand.Rand) string {
		return fmt.Sprintf("10.8.%d.%d:%d", r.IntN(256), 1+r.IntN(254), 1+r.IntN(65535))
	})
	defer l.finishChecked(t)
	l.waitAttempts(t, 2000)

	if st := w.d.stop(t, syscall.SIGTERM); st.ExitCode() != 0 {
		t.Errorf("SIGTERM: exit %v", st)
	}
	l.waitAttempts(t, 2000)
	w.d = w.startDaemon()
	l.waitAttempts(t, 2000)

	w.d.stop(t, syscall.SIGKILL)
	l.waitAttempts(t, 2000)
	w.d = w.startDaemon()
	l.waitAttempts(t, 2000)

	before := sk_lookupProgs(t, w)
	w.d.stop(t, syscall.SIGTERM)
	w.d = w.startDaemonBin(bin.next)
	after := sk_lookupProgs(t, w)
	if len(before) != 1 || len(after) != 1 || before[0] == after[0] {
		t.Errorf("upgrade: sk_lookup programs %v before, %v after; want one, replaced", before, after)
	}
	if v := w.mustCLI("version"); !strings.Contains(v, "next") {
		t.Errorf("version after upgrade: %q", v)
	}
	l.waitAttempts(t, 2000)

	out := w.mustCLI("apply", "-f", v2)
	for _, want := range []string{"- web tcp 10.8.0.0/16 *", "+ web tcp 10.8.0.0/17 *", "- old tcp 10.9.0.0/16 80", "+ new tcp 10.10.0.0/16 443"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply diff lacks %q:\n%s", want, out)
		}
	}
	for l.attempts.Load() < 20000 || time.Since(start) < 10*time.Second {
		l.waitAttempts(t, 1000)
	}
}
