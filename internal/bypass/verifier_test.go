package bypass

import (
	"testing"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The sockops program, which looks up the label of every connection it
// sees as the dispatcher does, stays well within the verifier's budget.
// (The SK_MSG program is small; the fentry programs do not load on every
// machine and hold no lookup.)
func TestSockopsWithinVerifierBudget(t *testing.T) {
	spec, err := loadBypass()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sy_p_sockops", "sy_p_msg"} {
		testenv.CheckVerifierBudget(t, spec, name)
	}
}
