package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/server"
	"github.com/switchyard-project/switchyard/internal/splice"
)

// daemonStopTimeout bounds how long unload --stop-daemon waits for the
// daemon to exit after SIGTERM.
const daemonStopTimeout = 20 * time.Second

// runUnload takes switchyard out of a namespace (README, "Taking
// switchyard out"): the daemon, if asked to; the splice workers; the program, its
// link and every pin; the files beside the control socket.
func runUnload(inv *invocation) error {
	if err := inv.wantArgs(0, 0); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("unload: needs root (it detaches a BPF program and removes pinned state): run it with sudo")
	}
	path, err := inv.controlPath()
	if err != nil {
		return err
	}
	ino, err := control.NetNSInode(inv.netns)
	if err != nil {
		return fmt.Errorf("unload: %w: give a network namespace file with --netns, such as /run/netns/NAME", err)
	}
	w := inv.stdout()

	pid, err := daemonPID(path)
	if err != nil {
		return fmt.Errorf("unload: %w", err)
	}
	if pid != 0 {
		if !inv.has("stop-daemon") {
			return fmt.Errorf("unload: switchyardd (pid %d) serves this network namespace on %s: stop it first (systemctl stop switchyardd), or pass --stop-daemon", pid, path)
		}
		if err := stopDaemon(pid, path); err != nil {
			return fmt.Errorf("unload: %w", err)
		}
		fmt.Fprintf(w, "stopped switchyardd (pid %d)\n", pid)
	}

	removed := false
	workers, err := splice.StopWorkers(path + ".splice")
	for _, sw := range workers {
		fmt.Fprintf(w, "stopped splice worker pid %d (label %s)\n", sw.PID, sw.Label)
		removed = true
	}
	if err != nil {
		return fmt.Errorf("unload: %w", err)
	}

	u, err := dispatch.Unload(inv.bpffsRoot(), ino)
	if u.Link != 0 {
		fmt.Fprintf(w, "detached the dispatch program (link %d) from network namespace inode %d\n", u.Link, ino)
	}
	if u.Dir != "" {
		fmt.Fprintf(w, "removed %s (%s)\n", u.Dir, strings.Join(u.Pins, ", "))
		removed = true
	}
	if err != nil {
		return fmt.Errorf("unload: %w", err)
	}

	settings := server.DefaultStatePath(path)
	files := []string{path, settings, settings + ".tmp", path + ".splice"}
	for _, f := range files {
		gone, err := removeFile(f)
		if err != nil {
			return fmt.Errorf("unload: %w", err)
		}
		if gone {
			fmt.Fprintf(w, "removed %s\n", f)
			removed = true
		}
	}
	if inv.control == "" {
		// The namespace's directory under RunDir, once it is empty.
		if dir := filepath.Dir(path); os.Remove(dir) == nil {
			fmt.Fprintf(w, "removed %s\n", dir)
			removed = true
		}
	}
	if !removed {
		fmt.Fprintf(w, "nothing to remove: switchyard has no state in network namespace inode %d (%s) and no files at %s\n", ino, dispatch.StateDir(inv.bpffsRoot(), ino), path)
		return nil
	}
	fmt.Fprintf(w, "the kernel's own socket lookup is in force in network namespace inode %d\n", ino)
	return nil
}

// daemonPID returns the pid of the daemon listening on the control socket
// at path, or 0 if none listens there.
func daemonPID(path string) (int, error) {
	c, err := net.DialTimeout("unixpacket", path, 2*time.Second)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ECONNREFUSED):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("control socket %s: %w", path, err)
	}
	var cred *unix.Ucred
	var cerr error
	rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return 0, fmt.Errorf("control socket %s: who listens: %w", path, cerr)
	}
	if cred.Pid <= 0 {
		return 0, fmt.Errorf("control socket %s: a daemon listens, but in another pid namespace: stop it there first", path)
	}
	return int(cred.Pid), nil
}

// stopDaemon asks the daemon to exit with SIGTERM, as systemctl stop does,
// and waits until it has.
func stopDaemon(pid int, path string) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("switchyardd pid %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	// The pid was the listener's when it answered; make sure it still is
	// and that it is a switchyardd (a socket outlives its creator in
	// another process, and the pid may be reused) before signalling it.
	if again, err := daemonPID(path); err != nil || again != pid {
		return fmt.Errorf("switchyardd pid %d: it changed while being stopped; run unload again", pid)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if name := strings.TrimSpace(string(comm)); err != nil || !strings.HasPrefix(name, "switchyardd") {
		return fmt.Errorf("pid %d, which listens on %s, is %q, not switchyardd: stop it yourself, then run unload again", pid, path, name)
	}
	if err := unix.PidfdSendSignal(pidfd, unix.SIGTERM, nil, 0); err != nil {
		return fmt.Errorf("stop switchyardd pid %d: %w", pid, err)
	}
	if !splice.WaitExit(pidfd, daemonStopTimeout) {
		return fmt.Errorf("switchyardd pid %d did not exit within %v of SIGTERM: see its log (journalctl -u switchyardd)", pid, daemonStopTimeout)
	}
	return nil
}

// removeFile removes a file or, for the splice workers' directory, a
// directory left behind, without following symlinks, and reports whether
// there was one.
func removeFile(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.RemoveAll(path); err != nil {
			return false, err
		}
		return true, nil
	}
	if err := os.Remove(path); err != nil {
		return false, err
	}
	return true, nil
}
