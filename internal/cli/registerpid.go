package cli

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

func runRegisterPID(inv *invocation) error {
	if err := inv.wantArgs(4, 4); err != nil {
		return err
	}
	pid, err := strconv.Atoi(inv.args[0])
	if err != nil || pid <= 0 {
		return inv.usage("PID %q: give the process id of the service, such as 1234 (pgrep NAME finds it)", trunc(inv.args[0]))
	}
	label := inv.args[1]
	if err := binding.ValidateLabel(label); err != nil {
		return inv.argError(err)
	}
	proto, err := binding.ParseProtocol(inv.args[2])
	if err != nil {
		return inv.argError(err)
	}
	want, err := netip.ParseAddrPort(inv.args[3])
	if err != nil || want.Port() == 0 {
		return inv.usage("ADDR:PORT %q: give the address and port the socket is bound to, such as 127.0.0.1:8080, [::1]:53, or 0.0.0.0:53 for the wildcard", trunc(inv.args[3]))
	}
	want = netip.AddrPortFrom(want.Addr().WithZone(""), want.Port())

	f, err := takeSocket(pid, proto, want)
	if err != nil {
		return fmt.Errorf("register-pid: %w", err)
	}
	s := socketToRegister{label: label, file: f.file, what: fmt.Sprintf("fd %d of pid %d", f.fd, pid)}
	defer f.file.Close()

	c, err := inv.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	return inv.registerAll(c, []socketToRegister{s})
}

// takenSocket is a copy of another process's socket.
type takenSocket struct {
	fd   int // in the other process
	file *os.File
}

// matchScore rates how well a socket bound to got fits the ADDR:PORT the
// user asked for: 3 the same address, 2 the same address with or without
// the IPv4-mapped form, 1 both wildcards of different families (0.0.0.0
// asked, [::] bound, or the reverse), 0 no match.
func matchScore(want, got netip.AddrPort) int {
	if want.Port() != got.Port() {
		return 0
	}
	w, g := want.Addr(), got.Addr()
	switch {
	case w == g:
		return 3
	case w.Unmap() == g.Unmap():
		return 2
	case w.IsUnspecified() && g.IsUnspecified():
		return 1
	}
	return 0
}

// takeSocket copies, with pidfd_getfd, the socket of process pid that best
// matches proto and want. Copies of every other socket are closed as soon
// as they have been looked at.
func takeSocket(pid int, proto binding.Protocol, want netip.AddrPort) (*takenSocket, error) {
	const ptraceHint = "needs CAP_SYS_PTRACE over pid %d (run as root)"
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("no process %d: %w: check the PID (pgrep NAME finds it)", pid, err)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)

	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("list the descriptors of pid %d: %w: "+ptraceHint, pid, err, pid)
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("process %d exited: %w", pid, err)
		}
		return nil, fmt.Errorf("list the descriptors of pid %d: %w", pid, err)
	}

	var best *takenSocket
	bestScore := 0
	var candidates []string
	seen := make(map[uint64]bool) // cookies: a socket may sit at several fds
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(target, "socket:") {
			continue // closed meanwhile, or not a socket
		}
		copyFD, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				if best != nil {
					best.file.Close()
				}
				return nil, fmt.Errorf("take fd %d of pid %d: %w: "+ptraceHint, fd, pid, err, pid)
			}
			if errors.Is(err, unix.ESRCH) {
				if best != nil {
					best.file.Close()
				}
				return nil, fmt.Errorf("process %d exited: %w", pid, err)
			}
			continue // EBADF: closed meanwhile
		}
		info, err := sockinfo.Inspect(copyFD)
		if err != nil || info.Check() != nil || seen[info.Cookie] {
			unix.Close(copyFD)
			continue
		}
		seen[info.Cookie] = true
		candidates = append(candidates, fmt.Sprintf("%s %s", info.Protocol, info.Local))
		score := 0
		if info.Protocol == proto {
			score = matchScore(want, info.Local)
		}
		if score <= bestScore {
			unix.Close(copyFD)
			continue
		}
		if best != nil {
			best.file.Close()
		}
		best = &takenSocket{fd: fd, file: os.NewFile(uintptr(copyFD), fmt.Sprintf("fd %d of pid %d", fd, pid))}
		bestScore = score
	}
	if best != nil {
		return best, nil
	}
	state := "listening"
	if proto == binding.UDP {
		state = "unconnected"
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("process %d has no listening TCP or bound, unconnected UDP socket: check the PID, and that the service has opened its socket", pid)
	}
	return nil, fmt.Errorf("process %d has no %s %s socket bound to %s; it has: %s: give one of those as ADDR:PORT",
		pid, state, proto, want, strings.Join(candidates, ", "))
}
