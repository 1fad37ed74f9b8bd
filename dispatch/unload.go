package dispatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Unloaded is what Unload took away.
type Unloaded struct {
	// Dir is the state directory that was removed; "" if there was none.
	Dir string
	// Link is the id of the sk_lookup link that was detached; 0 if none
	// was pinned.
	Link link.ID
	// Pins are the names of the pins removed with Dir: the dispatch
	// maps and link, and those other packages added (policy's sy_p_*).
	Pins []string
}

// ErrStillAttached: after Unload removed the pins, the program is still
// attached, because a process holds its link open.
var ErrStillAttached = errors.New("program still attached")

// Unload takes dispatching out of the network namespace with inode nsInode:
// it unpins the sk_lookup link, which detaches the program once no process
// holds the link, and removes the namespace's state directory under root
// with every pin in it, so that the kernel's own socket lookup is in force
// again. It holds the state's exclusive lock while it does. With no state it
// returns a zero Unloaded and no error.
//
// The caller makes sure that no daemon serves the namespace: a daemon holds
// the link open, and Unload then removes the pins but returns
// ErrStillAttached.
func Unload(root string, nsInode uint64) (Unloaded, error) {
	if root == "" {
		root = DefaultRoot
	}
	dir := StateDir(root, nsInode)
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Unloaded{}, nil
		}
		return Unloaded{}, fmt.Errorf("state %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return Unloaded{}, fmt.Errorf("state %s: not a directory; remove it by hand if it is yours", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return Unloaded{}, fmt.Errorf("state %s: %w", dir, err)
	}
	defer f.Close()
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return Unloaded{}, fmt.Errorf("lock state %s: %w", dir, err)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return Unloaded{}, fmt.Errorf("state %s: %w", dir, err)
	}
	slices.Sort(names)
	u := Unloaded{Dir: dir, Pins: names}

	pin := filepath.Join(dir, linkPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if info, err := l.Info(); err == nil {
			u.Link = info.ID
		}
		err := l.Unpin()
		l.Close()
		if err != nil {
			return Unloaded{}, fmt.Errorf("unpin link %s: %w", pin, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return Unloaded{}, fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	// bpffs directories hold only pins and directories; RemoveAll does
	// not follow symlinks.
	if err := os.RemoveAll(dir); err != nil {
		return Unloaded{}, fmt.Errorf("remove state %s: %w", dir, err)
	}
	if u.Link != 0 && !linkGone(u.Link) {
		return u, fmt.Errorf("link %d of network namespace inode %d: %w: a process holds it open (a switchyardd serving the namespace with another control socket?); stop it", u.Link, nsInode, ErrStillAttached)
	}
	return u, nil
}

// linkGone waits for the kernel to free link id, which it does after the
// last reference goes; a pin's reference goes in deferred work after an RCU
// grace period (kernel/bpf/inode.c, bpf_free_inode; kernel/bpf/syscall.c,
// bpf_link_put), so the link may outlive the unlink by a little. It reports
// false if the link is still there after a few seconds: someone holds it.
func linkGone(id link.ID) bool {
	deadline := time.Now().Add(3 * time.Second)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		l, err := link.NewFromID(id)
		if err != nil {
			return true
		}
		l.Close()
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
}
