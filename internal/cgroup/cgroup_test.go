package cgroup

import (
	"os"
	"path/filepath"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup/unified`:   "/sys/fs/cgroup/unified",
		`/mnt/cg\040two`:           "/mnt/cg two",
		`/mnt/tab\011and\134slash`: "/mnt/tab\tand\\slash",
		`/mnt/short\04`:            `/mnt/short\04`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// Root finds the cgroup2 mount: a directory with cgroup v2's files.
func TestRoot(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		t.Errorf("Root() = %q, which is not a cgroup v2 directory: %v", root, err)
	}
}
