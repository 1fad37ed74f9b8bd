package tests

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// Each test plants what a user other than root could plant, or what an
// operator could get wrong, at one of the paths switchyardd trusts, and
// checks that the daemon refuses with an error that says what to fix and
// that nothing outside the daemon's own files changed.

// failDaemon runs switchyardd for the world, expecting it to refuse to
// start; it returns what it printed.
func (w *world) failDaemon(t *testing.T, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{"--netns", w.ns.Path(), "--bpffs", w.root, "--control", w.control, "--bypass-cgroup", w.cgroup}, extra...)
	out, err := exec.CommandContext(ctx, bin.daemon, args...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("switchyardd %v: %v, want exit status 1; output:\n%s", args, err, out)
	}
	return string(out)
}

func wantSays(t *testing.T, out string, words ...string) {
	t.Helper()
	for _, w := range words {
		if !strings.Contains(out, w) {
			t.Errorf("output does not say %q:\n%s", w, out)
		}
	}
}

// snapshotDir returns the names, modes and contents of what is in dir.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, _ := os.Lstat(p)
		b.WriteString(e.Name() + " " + fi.Mode().String())
		if fi.Mode().IsRegular() {
			c, _ := os.ReadFile(p)
			b.WriteString(" " + string(c))
		}
		if l, err := os.Readlink(p); err == nil {
			b.WriteString(" -> " + l)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func asNobody(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command("setpriv", append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups", name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v as uid 65534: %v\n%s", name, args, err, out)
	}
}

// A control directory another user owns, with a label settings file that
// grants that user a label: the daemon does not start, says whose the
// directory is, and touches nothing in it.
func TestPathForeignControlDir(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	dir := filepath.Join(w.dir, "foreign")
	os.Mkdir(dir, 0o755)
	w.control = filepath.Join(dir, "control.sock")
	planted := w.control + ".labels.json"
	os.WriteFile(planted, []byte(`{"db":{"grants":{"uids":[65534]}}}`), 0o644)
	for _, p := range []string{dir, planted} {
		os.Chown(p, 65534, 65534)
	}
	// And a symlink at the temporary name, to a file only root may write.
	victim := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(victim, []byte("root only\n"), 0o600)
	os.Symlink(victim, planted+".tmp")
	before := snapshotDir(t, dir)

	out := w.failDaemon(t)
	wantSays(t, out, dir, "owned by uid 65534", "chown root")
	if after := snapshotDir(t, dir); after != before {
		t.Errorf("the foreign directory changed:\n%s\nwas:\n%s", after, before)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root only\n" {
		t.Errorf("the symlink's target changed to %q", b)
	}
}

// A symlink at the label settings file's temporary name in the daemon's own
// directory (left by a mistake or an earlier breach): saving the settings
// replaces the symlink and never writes through it.
func TestPathLabelsTempSymlink(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	victim := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(victim, []byte("root only\n"), 0o600)
	labels := w.control + ".labels.json"
	os.Symlink(victim, labels+".tmp")
	w.d = w.startDaemon()
	w.mustCLI("policy", "web", "none")
	if b, _ := os.ReadFile(victim); string(b) != "root only\n" {
		t.Errorf("the symlink's target changed to %q", b)
	}
	fi, err := os.Lstat(labels)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("label settings file: %v, %v", fi, err)
	}
	if b, _ := os.ReadFile(labels); !strings.Contains(string(b), `"web"`) {
		t.Errorf("label settings file holds %q", b)
	}
	if _, err := os.Lstat(labels + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary name still there: %v", err)
	}
}

// In a bpffs root of mode 1777 (a default mount), another user makes the
// state directory name of namespace A first: as a symlink to namespace B's
// state, or as a directory of its own. Root's mistake of a state directory
// of B's under A's name is refused too, by its pinned link. The daemon of A
// refuses each, and B's state is left as it was.
func TestPathStateDirAttacks(t *testing.T) {
	t.Parallel()
	a := newWorldNoDaemon(t)
	if err := os.Chmod(a.root, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	b := newWorldNoDaemon(t)
	b.root = a.root
	b.d = b.startDaemon()
	b.mustCLI("bind", "b-svc", "tcp", "10.7.0.0/24", "*")
	wantB := b.mustCLI("bindings")
	b.d.stop(t, syscall.SIGTERM)
	inode := func(w *world) string {
		var st unix.Stat_t
		if err := unix.Stat(w.ns.Path(), &st); err != nil {
			t.Fatal(err)
		}
		return strconv.FormatUint(st.Ino, 10)
	}
	dirA := filepath.Join(a.root, "netns-"+inode(a))
	dirB := filepath.Join(a.root, "netns-"+inode(b))
	stateB := snapshotDir(t, dirB)

	asNobody(t, "ln", "-s", dirB, dirA)
	wantSays(t, a.failDaemon(t), dirA, "symlink")
	os.Remove(dirA)

	asNobody(t, "mkdir", dirA)
	wantSays(t, a.failDaemon(t), dirA, "owned by uid 65534")
	os.Remove(dirA)

	if err := os.Rename(dirB, dirA); err != nil {
		t.Fatal(err)
	}
	wantSays(t, a.failDaemon(t), dirA, "pinned link serves network namespace inode "+inode(b))
	if err := os.Rename(dirA, dirB); err != nil {
		t.Fatal(err)
	}

	if got := snapshotDir(t, dirB); got != stateB {
		t.Errorf("B's state directory changed:\n%s\nwas:\n%s", got, stateB)
	}
	b.d = b.startDaemon()
	if got := b.mustCLI("bindings"); got != wantB {
		t.Errorf("B's bindings after the attacks:\n%s\nwant:\n%s", got, wantB)
	}
	// With the name free, A's daemon starts in the sticky root.
	a.d = a.startDaemon()
	a.mustCLI("bind", "a-svc", "tcp", "10.8.0.0/24", "80")
}

// A config file others may write is refused at start, and on SIGHUP once
// it becomes writable; the daemon keeps the config it runs.
func TestPathWorldWritableConfig(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	cfg := writeFile(t, "version: 1\nbindings:\n  - {label: one, protocol: tcp, prefix: 10.4.0.0/24, ports: \"80\"}\n")
	os.Chmod(cfg, 0o666)
	wantSays(t, w.failDaemon(t, "--config", cfg), cfg, "writable by group or others", "chmod go-w")

	os.Chmod(cfg, 0o644)
	w.d = w.startDaemon("--config", cfg)
	os.WriteFile(cfg, []byte("version: 1\nbindings:\n  - {label: two, protocol: tcp, prefix: 10.5.0.0/24, ports: \"80\"}\n"), 0o644)
	os.Chmod(cfg, 0o666)
	w.d.cmd.Process.Signal(syscall.SIGHUP)
	testenv.Poll(10*time.Second, func() (bool, string) {
		return strings.Contains(w.d.stderr.String(), "writable by group or others"), ""
	})
	wantSays(t, w.d.stderr.String(), "writable by group or others")
	if out := w.mustCLI("bindings"); !strings.Contains(out, "one") || strings.Contains(out, "two") {
		t.Errorf("bindings after a refused reload:\n%s", out)
	}
}

// A splice worker directory that is a symlink or another user's: the
// splice policy is refused with the reason, and nothing is made there.
func TestPathSpliceWorkerDir(t *testing.T) {
	t.Parallel()
	for _, attack := range []string{"symlink", "foreign"} {
		t.Run(attack, func(t *testing.T) {
			t.Parallel()
			w := newWorldNoDaemon(t)
			target := t.TempDir()
			dir := w.control + ".splice"
			want := "symlink"
			if attack == "symlink" {
				os.Symlink(target, dir)
			} else {
				os.Mkdir(dir, 0o700)
				os.Chown(dir, 65534, 65534)
				target, want = dir, "owned by uid 65534"
			}
			w.d = w.startDaemon()
			w.mustCLI("bind", "px", "tcp", "10.6.0.0/24", "*")
			r := w.cli("policy", "px", "splice", "127.0.0.1:9")
			if r.code == 0 {
				t.Fatalf("splice with a %s worker directory succeeded: %s", attack, r.stdout)
			}
			wantSays(t, r.stderr, "splice worker directory", want)
			if got := snapshotDir(t, target); got != "" {
				t.Errorf("the daemon made files in %s:\n%s", target, got)
			}
		})
	}
}
