package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func startWatch(t *testing.T, path string) *configWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := watchConfig(ctx, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); w.Close() })
	// The watcher looks once at the start, for a version written since
	// the file was loaded.
	seen(t, w, "the first look")
	return w
}

// seen waits for the watcher to report a change.
func seen(t *testing.T, w *configWatch, what string) {
	t.Helper()
	select {
	case <-w.C:
	case <-time.After(10 * time.Second):
		t.Fatalf("watcher did not report %s within 10s", what)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A config file that is a symlink into another directory: edits of the
// target are seen, a retargeted link is followed, and edits of the new
// target are seen too.
func TestWatchFollowsSymlinkTarget(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	a, b, etc := filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "etc")
	for _, d := range []string{a, b, etc} {
		os.Mkdir(d, 0o755)
	}
	write(t, filepath.Join(a, "real.yaml"), "one")
	cfg := filepath.Join(etc, "switchyard.yaml")
	if err := os.Symlink(filepath.Join(a, "real.yaml"), cfg); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, cfg)

	write(t, filepath.Join(a, "real.yaml"), "two")
	seen(t, w, "an in-place write of the symlink's target")

	write(t, filepath.Join(b, "real.yaml"), "three")
	tmp := filepath.Join(etc, ".new")
	if err := os.Symlink(filepath.Join(b, "real.yaml"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, cfg); err != nil {
		t.Fatal(err)
	}
	seen(t, w, "the symlink retargeted")

	write(t, filepath.Join(b, "real.yaml"), "four")
	seen(t, w, "an in-place write of the new target")
}

// The file's directory removed and made again (configuration management
// replacing a whole directory): the watcher finds it again.
func TestWatchDirectoryReplaced(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	os.Mkdir(etc, 0o755)
	cfg := filepath.Join(etc, "switchyard.yaml")
	write(t, cfg, "one")
	w := startWatch(t, cfg)

	if err := os.RemoveAll(etc); err != nil {
		t.Fatal(err)
	}
	seen(t, w, "the directory removed")
	os.Mkdir(etc, 0o755)
	write(t, cfg, "two")
	seen(t, w, "the directory made again with the file")
	write(t, cfg, "three")
	seen(t, w, "a write in the new directory")
}

// A FIFO in the config file's place is not read (it would block).
func TestFileSHA256RefusesFIFO(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "switchyard.yaml")
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fileSHA256(p); err == nil {
		t.Fatal("fileSHA256 of a FIFO succeeded")
	}
	write(t, filepath.Join(filepath.Dir(p), "ok.yaml"), "abc")
	sum, err := fileSHA256(filepath.Join(filepath.Dir(p), "ok.yaml"))
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; err != nil || sum != want {
		t.Fatalf("fileSHA256 = %q, %v; want %s", sum, err, want)
	}
}
