package safepath

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsafe is wrapped by every refusal: a path that someone other than
// root or the daemon's uid could have planted or could change.
var ErrUnsafe = errors.New("unsafe path")

// trusted reports whether uid may own the daemon's state: root or the
// process's own effective uid.
func trusted(uid uint32) bool {
	return uid == 0 || int(uid) == os.Geteuid()
}

func owners() string {
	if os.Geteuid() == 0 {
		return "root"
	}
	return fmt.Sprintf("root or uid %d", os.Geteuid())
}

// checkStat applies the rule to one path's stat. what names it in errors;
// dir says whether a directory is expected; sticky allows a sticky
// world-writable directory.
func checkStat(what, path string, st *unix.Stat_t, dir, sticky bool) error {
	switch typ := st.Mode & unix.S_IFMT; {
	case typ == unix.S_IFLNK:
		return fmt.Errorf("%s %s: %w: it is a symlink; the daemon follows no symlink it did not make: remove it, or point the setting at the real path", what, path, ErrUnsafe)
	case dir && typ != unix.S_IFDIR:
		return fmt.Errorf("%s %s: %w: not a directory; remove it or choose another path", what, path, ErrUnsafe)
	case !dir && typ != unix.S_IFREG:
		return fmt.Errorf("%s %s: %w: not a regular file; remove it or choose another path", what, path, ErrUnsafe)
	}
	if !trusted(st.Uid) {
		return fmt.Errorf("%s %s: %w: owned by uid %d, not %s, so that user could plant or change what the daemon reads: chown root %s, or choose a path of root's", what, path, ErrUnsafe, st.Uid, owners(), path)
	}
	if st.Mode&0o022 != 0 && !(sticky && dir && st.Mode&unix.S_ISVTX != 0) {
		return fmt.Errorf("%s %s: %w: writable by group or others (mode %#o): chmod go-w %s", what, path, ErrUnsafe, st.Mode&0o7777, path)
	}
	return nil
}

// checkAncestors checks each directory from / down to dir (resolved, dir
// included): owned by root or the daemon's uid, and writable by no one else
// unless sticky.
func checkAncestors(what, dir string) error {
	real, err := resolve(what, dir)
	if err != nil {
		return err
	}
	p := "/"
	parts := strings.Split(strings.TrimPrefix(real, "/"), "/")
	for i := 0; ; i++ {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("%s: %s: %w", what, p, err)
		}
		if err := checkStat(what+" (a directory above it)", p, &st, true, true); err != nil {
			return err
		}
		if i == len(parts) || parts[i] == "" {
			return nil
		}
		p = filepath.Join(p, parts[i])
	}
}

// maxHops bounds the symlinks followed in one path, as the kernel's
// MAXSYMLINKS does.
const maxHops = 40

// resolve returns the physical path of path, following symlinks one
// component at a time, and refuses a symlink that someone other than root
// or the daemon's uid made: in a sticky directory such as /tmp anyone may
// make one, and it could send the daemon to a file root never meant it to
// read. A symlink root made (/var/run, a Kubernetes ConfigMap volume's
// ..data) is followed.
func resolve(what, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	rest := strings.Split(abs, "/")
	cur := "/"
	hops := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		var st unix.Stat_t
		if err := unix.Lstat(next, &st); err != nil {
			return "", fmt.Errorf("%s %s: %w", what, next, &os.PathError{Op: "lstat", Path: next, Err: err})
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			cur = next
			continue
		}
		if hops++; hops > maxHops {
			return "", fmt.Errorf("%s %s: %w", what, path, unix.ELOOP)
		}
		if !trusted(st.Uid) {
			return "", fmt.Errorf("%s %s: %w: the symlink %s is owned by uid %d, not %s: remove it, or use the real path", what, path, ErrUnsafe, next, st.Uid, owners())
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", what, next, err)
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}

// CheckDir verifies dir and every directory above it. dir must not be a
// symlink, must be owned by root or the daemon's uid, and must not be
// writable by group or others. what names the directory in errors, e.g.
// "control directory".
func CheckDir(what, dir string) error { return checkDir(what, dir, false) }

// CheckStickyDir is CheckDir, except that dir may be sticky and writable by
// everyone (mode 1777), as a bpf filesystem mounted with default options
// is. The caller must check every entry it uses inside it (CheckDir).
func CheckStickyDir(what, dir string) error { return checkDir(what, dir, true) }

func checkDir(what, dir string, sticky bool) error {
	dir = filepath.Clean(dir)
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if err := checkStat(what, dir, &st, true, sticky); err != nil {
		return err
	}
	return checkAncestors(what, filepath.Dir(dir))
}

// MkdirAll creates dir and any missing parents with mode perm, like
// os.MkdirAll, then checks it with CheckDir. A directory that exists
// already keeps its mode and must pass the check as it is.
func MkdirAll(what, dir string, perm os.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return CheckDir(what, dir)
}

// CheckFile verifies that path, once symlinks that root (or the daemon's
// uid) made are followed, is a regular file owned by root or the daemon's
// uid and not writable by group or others, in a directory that passes
// CheckStickyDir: in a sticky directory such as /tmp no one else may rename
// or replace what root owns. A symlink anyone else made is refused. It is
// for files an operator points the daemon at, such as the config file,
// which deployment tools often link (a Kubernetes ConfigMap volume).
func CheckFile(what, path string) error {
	real, err := resolve(what, path)
	if err != nil {
		return err
	}
	if err := CheckStickyDir(what+" (its directory)", filepath.Dir(real)); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(real, &st); err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if real != filepath.Clean(path) {
		what = fmt.Sprintf("%s %s, that is", what, path)
	}
	return checkStat(what, real, &st, false, false)
}

// ReadFile reads a file that passes CheckFile. The file is opened with
// O_NOFOLLOW and checked on the open descriptor, so what is read is what
// was checked. A missing file gives an error matching os.ErrNotExist. At
// most limit bytes are read; a longer file is an error.
func ReadFile(what, path string, limit int64) ([]byte, error) {
	path = filepath.Clean(path)
	if err := CheckDir(what+" (its directory)", filepath.Dir(path)); err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s %s: %w: it is a symlink; the daemon follows no symlink it did not make: remove it", what, path, ErrUnsafe)
		}
		return nil, fmt.Errorf("%s %s: %w", what, path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if err := checkStat(what, path, &st, false, false); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s %s: larger than the limit of %d bytes", what, path, limit)
	}
	return b, nil
}

// WriteFile replaces the file at path with data, atomically: it checks the
// directory (CheckDir), creates path+".tmp" in it with O_CREAT|O_EXCL|
// O_NOFOLLOW relative to a descriptor of the checked directory (after
// removing whatever had that name: an unlink never follows a symlink),
// writes and syncs it, and renames it over path. A symlink planted at
// either name is replaced, never followed.
func WriteFile(what, path string, data []byte, perm os.FileMode) error {
	path = filepath.Clean(path)
	dir, name := filepath.Dir(path), filepath.Base(path)
	tmp := name + ".tmp"
	if err := CheckDir(what+" (its directory)", dir); err != nil {
		return err
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: open directory %s: %w", what, dir, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return fmt.Errorf("%s: %s: %w", what, dir, err)
	}
	if err := checkStat(what+" (its directory)", dir, &st, true, false); err != nil {
		return err
	}
	if err := unix.Unlinkat(dfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s: remove stale %s: %w", what, filepath.Join(dir, tmp), err)
	}
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return fmt.Errorf("%s: create %s: %w", what, filepath.Join(dir, tmp), err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, tmp))
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("%s: write %s: %w", what, filepath.Join(dir, tmp), werr)
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("%s: rename into %s: %w", what, path, err)
	}
	if err := unix.Fsync(dfd); err != nil {
		return fmt.Errorf("%s: sync %s: %w", what, dir, err)
	}
	return nil
}
