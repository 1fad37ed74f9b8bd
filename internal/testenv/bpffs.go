package testenv

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFS mounts a fresh bpffs instance on a new temporary directory and
// returns its path. Every call gets its own instance, so pins made by one
// test are invisible to every other. The cleanup unmounts it (MNT_DETACH, so
// an open fd cannot make it fail; pinned objects go away with the instance)
// and removes the directory.
//
// The host's /sys/fs/bpf is never touched and need not be mounted.
func BPFFS(tb testing.TB) string {
	tb.Helper()
	RequireRoot(tb)

	dir, err := mountBPFFS()
	if err != nil {
		tb.Fatalf("bpffs: %v", err)
	}
	tb.Cleanup(func() {
		if err := unmountBPFFS(dir); err != nil {
			tb.Errorf("bpffs cleanup: %v", err)
		}
	})
	return dir
}

func mountBPFFS() (string, error) {
	dir, err := os.MkdirTemp("", "switchyard-bpffs-")
	if err != nil {
		return "", fmt.Errorf("create mount point: %w", err)
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("bpf", dir, "bpf", flags, "mode=0700"); err != nil {
		_ = os.Remove(dir)
		return "", fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return dir, nil
}

func unmountBPFFS(dir string) error {
	var errs []error
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		errs = append(errs, fmt.Errorf("unmount %s: %w", dir, err))
	}
	// Only remove the directory itself: if the unmount failed, RemoveAll
	// would unlink the pins of a live bpffs.
	if err := os.Remove(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}
