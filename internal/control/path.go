package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// RunDir is where switchyardd puts its control sockets, one directory per
// network namespace.
const RunDir = "/run/switchyard"

// DefaultPath is the control socket of the daemon for the network namespace
// with inode netnsInode (see NetNSInode):
// /run/switchyard/netns-<inode>/control.sock. The inode names a namespace
// uniquely for as long as it exists.
func DefaultPath(netnsInode uint64) string {
	return filepath.Join(RunDir, "netns-"+strconv.FormatUint(netnsInode, 10), "control.sock")
}

// NetNSInode returns the inode number of the network namespace file at path,
// such as /run/netns/NAME or /proc/PID/ns/net. "" means the calling thread's
// own namespace. A path that is not a network namespace (a bind mount that
// is missing leaves a plain empty file behind, for instance) is an error.
func NetNSInode(path string) (uint64, error) {
	if path == "" {
		path = "/proc/thread-self/ns/net"
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	var ino uint64
	var nserr error
	if err := rc.Control(func(fd uintptr) {
		ino, nserr = netnsInode(int(fd))
	}); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	if nserr != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, nserr)
	}
	return ino, nil
}

func netnsInode(fd int) (uint64, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return 0, err
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%w: not a namespace file (is the namespace mounted there?)", ErrInvalid)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return 0, fmt.Errorf("namespace type: %w", err)
	}
	if typ != unix.CLONE_NEWNET {
		return 0, fmt.Errorf("%w: a namespace, but not a network namespace", ErrInvalid)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
