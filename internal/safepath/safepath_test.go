package safepath

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown test files to another user")
	}
}

// wantUnsafe fails unless err wraps ErrUnsafe and says each of the words.
func wantUnsafe(t *testing.T, err error, words ...string) {
	t.Helper()
	if !errors.Is(err, ErrUnsafe) {
		t.Fatalf("got %v, want an error wrapping ErrUnsafe", err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

func TestCheckDir(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	base := t.TempDir()
	good := filepath.Join(base, "good")
	if err := MkdirAll("control directory", good, 0o755); err != nil {
		t.Fatalf("a fresh root-owned directory: %v", err)
	}

	foreign := filepath.Join(base, "foreign")
	os.Mkdir(foreign, 0o755)
	os.Chown(foreign, 65534, 65534)
	wantUnsafe(t, CheckDir("control directory", foreign), "control directory", "owned by uid 65534", "chown root")
	// Below a foreign directory, a root-owned one is no better.
	below := filepath.Join(foreign, "sub")
	os.Mkdir(below, 0o755)
	wantUnsafe(t, CheckDir("control directory", below), "a directory above it", "owned by uid 65534")

	writable := filepath.Join(base, "writable")
	os.Mkdir(writable, 0o755)
	os.Chmod(writable, 0o775)
	wantUnsafe(t, CheckDir("control directory", writable), "writable by group or others", "chmod go-w")

	sticky := filepath.Join(base, "sticky")
	os.Mkdir(sticky, 0o755)
	os.Chmod(sticky, os.ModeSticky|0o777)
	wantUnsafe(t, CheckDir("state root", sticky), "writable by group or others")
	if err := CheckStickyDir("state root", sticky); err != nil {
		t.Errorf("a sticky root-owned directory as a state root: %v", err)
	}
	inSticky := filepath.Join(sticky, "netns-1")
	os.Mkdir(inSticky, 0o750)
	if err := CheckDir("namespace state", inSticky); err != nil {
		t.Errorf("a root-owned directory in a sticky one: %v", err)
	}

	link := filepath.Join(base, "link")
	os.Symlink(good, link)
	wantUnsafe(t, CheckDir("control directory", link), "symlink")
	// A symlink above the directory is resolved and the real path checked.
	if err := CheckDir("control directory", filepath.Join(link, ".")); err == nil {
		// filepath.Clean removes the dot: the path is the symlink itself.
		t.Error("a symlink named with a trailing dot passed")
	}
	sub := filepath.Join(good, "sub")
	os.Mkdir(sub, 0o700)
	if err := CheckDir("control directory", filepath.Join(link, "sub")); err != nil {
		t.Errorf("a directory below a root-owned symlink to a good directory: %v", err)
	}

	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	wantUnsafe(t, CheckDir("control directory", file), "not a directory")
	if err := CheckDir("control directory", filepath.Join(base, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing directory: got %v, want ErrNotExist", err)
	}
}

func TestCheckFile(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "config.yaml")
	os.WriteFile(good, []byte("version: 1\n"), 0o644)
	if err := CheckFile("config file", good); err != nil {
		t.Fatalf("a root-owned 0644 file: %v", err)
	}
	ww := filepath.Join(dir, "ww.yaml")
	os.WriteFile(ww, nil, 0o644)
	os.Chmod(ww, 0o666)
	wantUnsafe(t, CheckFile("config file", ww), "config file", "writable by group or others", "chmod go-w")
	foreign := filepath.Join(dir, "foreign.yaml")
	os.WriteFile(foreign, nil, 0o644)
	os.Chown(foreign, 65534, 65534)
	wantUnsafe(t, CheckFile("config file", foreign), "owned by uid 65534")
	// A chain of symlinks root made, as a Kubernetes ConfigMap volume has,
	// is followed; one another user made is not.
	vol := filepath.Join(dir, "vol")
	os.MkdirAll(filepath.Join(vol, "..2026_12_01"), 0o755)
	os.WriteFile(filepath.Join(vol, "..2026_12_01", "c.yaml"), nil, 0o644)
	os.Symlink("..2026_12_01", filepath.Join(vol, "..data"))
	os.Symlink("..data/c.yaml", filepath.Join(vol, "c.yaml"))
	if err := CheckFile("config file", filepath.Join(vol, "c.yaml")); err != nil {
		t.Errorf("a ConfigMap-style chain of root's symlinks: %v", err)
	}
	link := filepath.Join(dir, "link.yaml")
	os.Symlink(good, link)
	if err := CheckFile("config file", link); err != nil {
		t.Errorf("root's symlink to a good file: %v", err)
	}
	os.Lchown(link, 65534, 65534)
	wantUnsafe(t, CheckFile("config file", link), "symlink", "owned by uid 65534")
	wwLink := filepath.Join(dir, "ww-link.yaml")
	os.Symlink(ww, wwLink)
	wantUnsafe(t, CheckFile("config file", wwLink), "writable by group or others")
	// A root-owned file in a sticky directory such as /tmp is fine.
	sticky := filepath.Join(dir, "sticky")
	os.Mkdir(sticky, 0o755)
	os.Chmod(sticky, os.ModeSticky|0o777)
	inSticky := filepath.Join(sticky, "c.yaml")
	os.WriteFile(inSticky, nil, 0o600)
	if err := CheckFile("config file", inSticky); err != nil {
		t.Errorf("a root-owned file in a sticky directory: %v", err)
	}
	_, err := ReadFile("config file", link, 1<<20)
	wantUnsafe(t, err, "symlink")
	b, err := ReadFile("config file", good, 1<<20)
	if err != nil || string(b) != "version: 1\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	if _, err := ReadFile("config file", good, 4); err == nil || !strings.Contains(err.Error(), "limit of 4 bytes") {
		t.Errorf("ReadFile over the limit: %v", err)
	}
	if _, err := ReadFile("config file", filepath.Join(dir, "missing"), 10); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile of a missing file: got %v, want ErrNotExist", err)
	}
	_, err = ReadFile("config file", foreign, 10)
	wantUnsafe(t, err, "owned by uid 65534")
}

func TestWriteFileNeverFollows(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	dir := t.TempDir()
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "shadow")
	os.WriteFile(victim, []byte("root only\n"), 0o600)
	path := filepath.Join(dir, "labels.json")

	// Symlinks planted at the temporary name and at the name itself.
	os.Symlink(victim, path+".tmp")
	os.Symlink(victim, path)
	if err := WriteFile("label settings", path, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root only\n" {
		t.Fatalf("the symlinks' target changed to %q", b)
	}
	var st os.FileInfo
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("after WriteFile: %v, %v", st, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "{}\n" {
		t.Fatalf("file holds %q", b)
	}
	if _, err := os.Lstat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}

	// In a directory another user owns, nothing is written.
	foreign := filepath.Join(dir, "foreign")
	os.Mkdir(foreign, 0o755)
	os.Chown(foreign, 65534, 65534)
	err = WriteFile("label settings", filepath.Join(foreign, "labels.json"), []byte("{}"), 0o600)
	wantUnsafe(t, err, "owned by uid 65534")
	if _, err := os.Lstat(filepath.Join(foreign, "labels.json.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file was created in the foreign directory: %v", err)
	}
}
