package testenv

import (
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/cgroup"
)

// Cgroup makes a cgroup v2 directory of the test's own under the hierarchy's
// root, for the bypass programs and the helper processes a test puts in it,
// so that tests never attach anything to the host's cgroups. It returns the
// directory and an open fd of it (for SysProcAttr.CgroupFD), and removes
// both when the test ends. Without cgroup v2 the test is skipped.
func Cgroup(t testing.TB) (string, int) {
	t.Helper()
	root, err := cgroup.Root()
	if err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	dir, err := os.MkdirTemp(root, "switchyard-test-")
	if err != nil {
		t.Fatalf("test cgroup: %v", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		t.Fatalf("test cgroup: %v", err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		// Processes that were in it may not be reaped yet: rmdir says
		// EBUSY until they are.
		if ok, seen := Poll(5*time.Second, func() (bool, string) {
			err := os.Remove(dir)
			return err == nil, fmt.Sprint(err)
		}); !ok {
			t.Errorf("remove test cgroup: %s", seen)
		}
	})
	return dir, fd
}
