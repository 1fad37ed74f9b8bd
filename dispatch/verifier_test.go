package dispatch

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// Every program that looks labels up stays well within the verifier's
// budget: the lookup's loop over prefix lengths calls a global function
// after its first lengths, so the verifier does not walk the whole probe
// once for each length the loop may reach (which took sy_dispatch to
// 913,562 of the kernel's 1,000,000 instructions and seconds to load).
func TestProgramsWithinVerifierBudget(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		load  func() (*ebpf.CollectionSpec, error)
		progs []string
	}{
		{loadDispatch, []string{"sy_dispatch"}},
		{loadExplain, []string{"sy_explain", "sy_explain_walk", "sy_uncount"}},
	} {
		spec, err := c.load()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range c.progs {
			testenv.CheckVerifierBudget(t, spec, name)
		}
	}
}
