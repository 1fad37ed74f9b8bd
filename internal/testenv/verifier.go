package testenv

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// MaxVerifiedInstructions is the most instructions the verifier may walk
// for one of switchyard's programs: a fifth of the kernel's limit (one
// million for a privileged loader). A program near the limit can fail to
// load on a kernel that prunes its states a little worse, and its load,
// which every daemon start and upgrade waits for, grows with the count.
const MaxVerifiedInstructions = 200_000

// CheckVerifierBudget loads program name of spec alone, with the maps it
// uses and nothing pinned, and fails the test if the verifier walked more
// than MaxVerifiedInstructions to accept it. It returns the count.
func CheckVerifierBudget(t testing.TB, spec *ebpf.CollectionSpec, name string) int {
	t.Helper()
	RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	s := spec.Copy()
	for n := range s.Programs {
		if n != name {
			delete(s.Programs, n)
		}
	}
	for _, m := range s.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	defer coll.Close()
	p := coll.Programs[name]
	if p == nil {
		t.Fatalf("load %s: not in the object", name)
	}
	info, err := p.Info()
	if err != nil {
		t.Fatalf("%s: program info: %v", name, err)
	}
	n, ok := info.VerifiedInstructions()
	if !ok {
		t.Fatalf("%s: the kernel does not report how many instructions it verified", name)
	}
	stats := strings.TrimSpace(p.VerifierLog)
	if i := strings.LastIndexByte(stats, '\n'); i >= 0 {
		stats = stats[i+1:]
	}
	if n > MaxVerifiedInstructions {
		t.Errorf("%s: the verifier walked %d instructions to accept it, more than the budget of %d (%s)", name, n, MaxVerifiedInstructions, stats)
	} else {
		t.Logf("%s: %d instructions verified (%s)", name, n, stats)
	}
	return int(n)
}
