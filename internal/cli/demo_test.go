package cli

import (
	"os"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The demo runs in its own namespace and bpffs, and leaves nothing behind.
func TestDemo(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	before := demoMounts(t)
	r := runMain(t, nil, "demo")
	wantOK(t, r, "bound demo tcp 10.99.0.0/16 *\n", "connection refused", "counters of label demo: 11 lookups, 10 hits, 1 missing socket, 0 bad socket")
	var dialled int
	for line := range strings.SplitSeq(r.stdout, "\n") {
		if !strings.HasPrefix(line, "dialled ") {
			continue
		}
		dialled++
		// dialled ADDR -> answered by the one socket on L, which saw ADDR
		f := strings.Fields(line)
		if len(f) != 13 || !strings.HasPrefix(f[1], "10.99.") || f[12] != f[1] || !strings.HasPrefix(f[9], "127.0.0.1:") {
			t.Errorf("unexpected line %q", line)
		}
	}
	if dialled != demoDials {
		t.Errorf("%d connections shown, want %d:\n%s", dialled, demoDials, r)
	}
	for m := range demoMounts(t) {
		if !before[m] {
			t.Errorf("the demo left its bpffs mounted: %s", m)
		}
	}
}

// demoMounts returns the mount points of demo bpffs mounts, so that one a
// killed earlier run left is not taken for this run's.
func demoMounts(t *testing.T) map[string]bool {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]bool)
	for line := range strings.SplitSeq(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.Contains(f[4], "switchyard-demo-bpffs-") {
			seen[f[4]] = true
		}
	}
	return seen
}
