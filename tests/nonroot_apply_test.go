package tests

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A user other than root who applies a config is told that apply needs
// root, whether the request is small or over the 64 KiB that connection
// may send (the daemon refuses that one while it arrives and hangs up:
// the CLI reads the daemon's reason rather than report the reset).
func TestNonRootApplyIsToldWhy(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	dir, err := os.MkdirTemp("", "switchyard-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		n    int
		want string
	}{
		{10, "apply needs root"},
		{20000, "only root may send larger requests"},
	} {
		file := filepath.Join(dir, "config.yaml")
		writeScaleConfig(t, file, c.n, 0)
		if err := os.Chmod(file, 0o644); err != nil {
			t.Fatal(err)
		}
		r := w.cliAs(&syscall.Credential{Uid: 4242, Gid: 4243}, nil, "apply", "-f", file)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) || strings.Contains(r.stderr, "reset by peer") {
			t.Errorf("apply of %d bindings as uid 4242: exit %d, stderr %q; want a refusal saying %q", c.n, r.code, r.stderr, c.want)
		}
	}
	if bs := listing(t, w.mustCLI("bindings", "-o", "json")); len(bs) != 0 {
		t.Errorf("%d bindings after the refused applies, want none", len(bs))
	}
}
