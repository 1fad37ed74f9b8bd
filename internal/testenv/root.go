package testenv

import (
	"os"
	"testing"
)

// RequireRoot skips the test unless it runs as root (euid 0). Network
// namespaces, rtnetlink changes and bpffs mounts all need root.
//
// CI runs the tests as root, so there the skip never hides a failure; to make
// sure, when the CI environment variable is set a non-root run fails the test
// instead of skipping it.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const msg = "test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): run `sudo go test ...` or as root"
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + "; CI is set, so this is a failure, not a skip")
	}
	tb.Skip(msg)
}
