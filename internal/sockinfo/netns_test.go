package sockinfo

import (
	"os"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.CheckFDLeaks(m)) }

// testNS is a fresh network namespace (see testenv.NewNetNS). Sockets made
// inside do belong to it and can be used from any goroutine afterwards.
type testNS struct {
	*testenv.NetNS
	cookie uint64
}

func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	ns := testenv.NewNetNS(tb)
	return &testNS{NetNS: ns, cookie: ns.Cookie()}
}

// do runs fn in the namespace.
func (ns *testNS) do(fn func() error) error { return ns.Do(fn) }

// sysctl reads a sysctl inside the namespace, e.g. "net/mptcp/enabled".
func (ns *testNS) sysctl(name string) (string, error) {
	var v string
	err := ns.do(func() error {
		b, err := os.ReadFile("/proc/sys/" + name)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}
