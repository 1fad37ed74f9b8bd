package cli

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

// lookupJSON is the JSON of `switchyard lookup -o json`.
type lookupJSON struct {
	Protocol    string       `json:"protocol"`
	Destination string       `json:"destination"`
	Source      string       `json:"source,omitempty"`
	Binding     *bindingJSON `json:"binding"`
	Label       string       `json:"label"`
	Socket      *lookupSock  `json:"socket"`
	// Verdict is delivered, refused or kernel (no binding: the kernel's
	// own lookup goes on).
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
	// CountersCounted: the test run's count in the label's counters
	// could not be taken back.
	CountersCounted bool `json:"counters_counted"`
}

type lookupSock struct {
	Protocol  string      `json:"protocol"`
	Family    string      `json:"family"`
	Local     string      `json:"local,omitempty"`
	Cookie    uint64      `json:"cookie"`
	ReusePort bool        `json:"reuseport,omitempty"`
	Owners    []ownerJSON `json:"owners,omitempty"`
}

type ownerJSON struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
}

// parseAddrPort reads ADDR:PORT, IPv6 in brackets.
func (inv *invocation) parseAddrPort(what, s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, inv.usage("%s %q: give an address and a port from 1 to 65535, such as 192.0.2.1:53 or [2001:db8::1]:443", what, trunc(s))
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func runLookup(inv *invocation) error {
	if err := inv.wantArgs(2, 2); err != nil {
		return err
	}
	proto, err := binding.ParseProtocol(inv.args[0])
	if err != nil {
		return inv.argError(err)
	}
	dst, err := inv.parseAddrPort("destination", inv.args[1])
	if err != nil {
		return err
	}
	var src netip.AddrPort
	if f := inv.flag("from"); f != "" {
		if src, err = inv.parseAddrPort("--from", f); err != nil {
			return err
		}
		if src.Addr().Is4() != dst.Addr().Is4() {
			return inv.usage("--from %s and %s are of different address families", src, dst)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("lookup: needs root (it runs the dispatch program on the pinned state with BPF_PROG_TEST_RUN): run it with sudo")
	}
	ino, err := control.NetNSInode(inv.netns)
	if err != nil {
		return fmt.Errorf("lookup: %w: give a network namespace file with --netns, such as /run/netns/NAME", err)
	}
	x, err := dispatch.OpenExplainer(inv.bpffsRoot(), ino)
	if errors.Is(err, dispatch.ErrNotFound) {
		return fmt.Errorf("lookup: switchyard is not loaded in this network namespace (no state in %s): the kernel's own lookup decides; --bpffs names another state root", inv.bpffsRoot())
	}
	if err != nil {
		return fmt.Errorf("lookup: %w", err)
	}
	defer x.Close()
	ex, err := x.Explain(proto, dst, src)
	if err != nil {
		return err
	}

	out := lookupJSON{Protocol: proto.String(), Destination: dst.String(), Verdict: ex.Verdict.String(), CountersCounted: ex.CountersTouched}
	if src.IsValid() {
		out.Source = src.String()
	}
	if ex.Matched {
		bj := toBindingJSON(ex.Binding)
		out.Binding, out.Label = &bj, ex.Binding.Label
	}
	if ex.Socket.Cookie != 0 {
		s := &lookupSock{Protocol: ex.Socket.Protocol.String(), Family: ex.Socket.Family.String(), Cookie: ex.Socket.Cookie, ReusePort: ex.ReusePort}
		local, inode := inv.socketOf(ex.Socket.Cookie)
		if local.IsValid() {
			s.Local = local.String()
		}
		if inode != 0 {
			s.Owners = socketOwners(inode)
		}
		out.Socket = s
	}
	switch ex.Verdict {
	case dispatch.VerdictRefused:
		if ex.BadSocket {
			out.Reason = "the kernel would not assign the registered socket (bad socket)"
		} else {
			out.Reason = fmt.Sprintf("no socket: label %s has no %s socket registered for %s", ex.Binding.Label, proto, binding.FamilyOf(dst.Addr()))
		}
	case dispatch.VerdictKernel:
		out.Reason = "no binding matches"
	}
	if inv.json() {
		return writeJSON(inv.stdout(), out)
	}

	w := inv.stdout()
	what := proto.String() + " " + dst.String()
	if src.IsValid() {
		what += " from " + src.String()
	}
	fmt.Fprintf(w, "lookup:   %s\n", what)
	if ex.Matched {
		fmt.Fprintf(w, "binding:  %s %s %s %s\n", ex.Binding.Label, ex.Binding.Protocol, ex.Binding.Prefix, ex.Binding.Ports)
		fmt.Fprintf(w, "label:    %s\n", ex.Binding.Label)
	} else {
		fmt.Fprintln(w, "binding:  none")
	}
	if s := out.Socket; s != nil {
		desc := s.Protocol + " " + s.Family
		if s.Local != "" {
			desc += " " + s.Local
		}
		desc += ", cookie " + strconv.FormatUint(s.Cookie, 10)
		if s.ReusePort {
			desc += ", SO_REUSEPORT group (the kernel picks a member)"
		}
		for _, o := range s.Owners {
			desc += fmt.Sprintf(", pid %d (%s)", o.PID, o.Command)
		}
		fmt.Fprintf(w, "socket:   %s\n", desc)
	}
	switch ex.Verdict {
	case dispatch.VerdictDelivered:
		fmt.Fprintln(w, "verdict:  delivered")
	case dispatch.VerdictRefused:
		fmt.Fprintf(w, "verdict:  refused (%s)\n", out.Reason)
	default:
		fmt.Fprintln(w, "verdict:  left to the kernel's own lookup (no binding matches)")
	}
	if ex.CountersTouched {
		fmt.Fprintln(w, "note:     this lookup's count could not be taken back: the label's counters include it")
	}
	return nil
}

// socketOf finds where the socket with cookie is bound and its inode, in
// the namespace; zero values if the kernel does not say.
func (inv *invocation) socketOf(cookie uint64) (netip.AddrPort, uint32) {
	ns, err := netns.Open(inv.netns)
	if err != nil {
		return netip.AddrPort{}, 0
	}
	defer ns.Close()
	var s sockinfo.DiagSocket
	ns.Do(func() error {
		socks, err := sockinfo.Sockets()
		s = socks[cookie]
		return err
	})
	return s.Local, s.Inode
}

// socketOwners lists the processes with a descriptor of the socket with
// inode, from /proc. Each descriptor's link is read relative to its
// process's open fd directory, which spares the kernel a walk of the whole
// path for each.
func socketOwners(inode uint32) []ownerJSON {
	want := "socket:[" + strconv.FormatUint(uint64(inode), 10) + "]"
	procs, _ := os.ReadDir("/proc")
	var out []ownerJSON
	buf := make([]byte, 64)
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir, err := os.Open(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		fds, _ := dir.Readdirnames(-1)
		for _, fd := range fds {
			n, err := unix.Readlinkat(int(dir.Fd()), fd, buf)
			if err == nil && string(buf[:n]) == want {
				comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				out = append(out, ownerJSON{PID: pid, Command: strings.TrimSpace(string(comm))})
				break
			}
		}
		dir.Close()
	}
	slices.SortFunc(out, func(a, b ownerJSON) int { return a.PID - b.PID })
	return out
}
