package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

// listenFDsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// inherited is one descriptor passed to the process.
type inherited struct {
	fd   int
	name string // from LISTEN_FDNAMES; "" if none
}

// socketToRegister is a socket file with the label it goes to.
type socketToRegister struct {
	label string
	file  *os.File
	what  string // "fd 3", "fd 5 of pid 1234"
}

func runRegister(inv *invocation) error {
	if err := inv.wantArgs(0, 1); err != nil {
		return err
	}
	var label string
	if len(inv.args) == 1 {
		label = inv.args[0]
		if err := binding.ValidateLabel(label); err != nil {
			return inv.argError(err)
		}
	}

	wait, err := inv.waitFlag()
	if err != nil {
		return err
	}

	var chosen []inherited
	if fds := inv.flags["fd"]; len(fds) > 0 {
		if label == "" {
			return inv.usage("--fd needs LABEL: the descriptors have no names to register them under")
		}
		seen := make(map[int]bool)
		for _, s := range fds {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return inv.usage("--fd %q: give a file descriptor number such as 3", trunc(s))
			}
			if seen[n] {
				return inv.usage("--fd %d given twice", n)
			}
			seen[n] = true
			chosen = append(chosen, inherited{fd: n})
		}
	} else {
		fds, err := listenFDs(inv.env)
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		if chosen, err = selectFDs(fds, label); err != nil {
			return fmt.Errorf("register: %w", err)
		}
	}

	// Take over and check every socket before talking to the daemon, so
	// that a wrong descriptor is reported as such.
	var socks []socketToRegister
	defer func() {
		for _, s := range socks {
			s.file.Close()
		}
	}()
	for _, in := range chosen {
		what := fmt.Sprintf("fd %d", in.fd)
		if in.name != "" {
			what += fmt.Sprintf(" (%s)", in.name)
		}
		f, err := inv.env.InheritedFile(in.fd)
		if err != nil {
			if errors.Is(err, sockinfo.ErrNotSocket) {
				return fmt.Errorf("register: %w: pass the descriptor of a listening TCP or bound UDP socket", err)
			}
			return fmt.Errorf("register: %w: was it passed to this process? (with --fd, the parent must leave it open)", err)
		}
		l := label
		if l == "" {
			l = in.name
		}
		socks = append(socks, socketToRegister{label: l, file: f, what: what})
		if err := checkSocket(f); err != nil {
			return fmt.Errorf("register: %s: %w", what, err)
		}
	}

	c, err := inv.dialWait(wait)
	if err != nil {
		return err
	}
	defer c.Close()
	return inv.registerAll(c, socks)
}

// defaultWait is how long register waits for a daemon that is starting.
const defaultWait = 5 * time.Second

// waitFlag is the --wait duration, defaultWait if not given.
func (inv *invocation) waitFlag() (time.Duration, error) {
	v := inv.flag("wait")
	if v == "" {
		return defaultWait, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, inv.usage("--wait %q: give a duration such as 30s or 2m, or 0 not to wait", trunc(v))
	}
	return d, nil
}

// dialWait connects to the daemon, trying again for up to wait while it
// is starting: no control socket yet, or one nobody accepts on (left by a
// daemon that stopped, until the next one listens), or a full backlog.
func (inv *invocation) dialWait(wait time.Duration) (*control.Client, error) {
	path, err := inv.controlPath()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	pause := 20 * time.Millisecond
	for {
		c, err := control.Dial(inv.ctx, path)
		if err == nil {
			return c, nil
		}
		starting := errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EAGAIN)
		left := time.Until(deadline)
		if !starting || left <= 0 {
			if starting && wait > 0 {
				return nil, fmt.Errorf("%w; gave up after waiting %s for it (--wait)", inv.dialError(path, err), wait)
			}
			return nil, inv.dialError(path, err)
		}
		t := time.NewTimer(min(pause, left))
		select {
		case <-inv.ctx.Done():
			t.Stop()
			return nil, inv.dialError(path, err)
		case <-t.C:
		}
		pause = min(pause*2, 250*time.Millisecond)
	}
}

// checkSocket applies the registration rules of sockinfo on the client
// side, for an early error that names the descriptor. The daemon checks
// again, and also the namespace.
func checkSocket(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		var info sockinfo.Info
		if info, cerr = sockinfo.Inspect(int(fd)); cerr == nil {
			cerr = info.Check()
		}
	}); err != nil {
		return err
	}
	return cerr
}

// registerAll registers socks, grouped by label in order of appearance,
// and prints one line per socket.
func (inv *invocation) registerAll(c *control.Client, socks []socketToRegister) error {
	var labels []string
	byLabel := make(map[string][]socketToRegister)
	for _, s := range socks {
		if _, ok := byLabel[s.label]; !ok {
			labels = append(labels, s.label)
		}
		byLabel[s.label] = append(byLabel[s.label], s)
	}
	for _, label := range labels {
		group := byLabel[label]
		for len(group) > 0 {
			n := min(len(group), control.MaxRegisterFiles)
			batch := group[:n]
			group = group[n:]
			files := make([]*os.File, n)
			for i, s := range batch {
				files[i] = s.file
			}
			res, err := c.Register(inv.ctx, label, files...)
			if err != nil {
				return inv.requestError(label, err)
			}
			for i, r := range res {
				note := batch[i].what
				if r.Replaced {
					note += ", replaced the socket registered before"
				}
				fmt.Fprintf(inv.stdout(), "registered %s %s %s %s (%s)\n", label, r.Protocol, r.Family, r.Local, note)
			}
		}
	}
	return nil
}

// listenFDs reads systemd's socket activation variables, as sd_listen_fds
// and sd_listen_fds_with_names do.
func listenFDs(env Env) ([]inherited, error) {
	const hint = "run it from a unit that gets the sockets (Sockets= or a socket unit), or pass --fd N"
	fdsVar, pidVar := env.Getenv("LISTEN_FDS"), env.Getenv("LISTEN_PID")
	if fdsVar == "" {
		return nil, fmt.Errorf("no sockets to register: LISTEN_FDS is not set, so this is not systemd socket activation: %s", hint)
	}
	if pidVar == "" {
		return nil, fmt.Errorf("LISTEN_FDS is set but LISTEN_PID is not, so the sockets are not meant for this process; ignoring them: %s", hint)
	}
	pid, err := strconv.Atoi(pidVar)
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("LISTEN_PID=%q is not a process id; ignoring LISTEN_FDS: %s", trunc(pidVar), hint)
	}
	if self := env.Getpid(); pid != self {
		return nil, fmt.Errorf("LISTEN_PID is %d but this process is %d, so LISTEN_FDS was meant for another process and is ignored: "+
			"start switchyard directly from ExecStart= (a wrapper script must exec it), or pass --fd N", pid, self)
	}
	n, err := strconv.Atoi(fdsVar)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a number of descriptors: %s", trunc(fdsVar), hint)
	}
	if n == 0 {
		return nil, fmt.Errorf("LISTEN_FDS=0: systemd passed no sockets: check the socket unit's Listen*= settings and the service's Sockets=")
	}
	var names []string
	if v := env.Getenv("LISTEN_FDNAMES"); v != "" {
		names = strings.Split(v, ":")
		if len(names) != n {
			return nil, fmt.Errorf("LISTEN_FDNAMES has %d names for LISTEN_FDS=%d descriptors: the environment is inconsistent; check what starts switchyard", len(names), n)
		}
	}
	fds := make([]inherited, n)
	for i := range fds {
		fds[i].fd = listenFDsStart + i
		if names != nil {
			fds[i].name = names[i]
		}
	}
	return fds, nil
}

// unnamed reports whether name is no name: missing, or systemd's
// placeholder "unknown".
func unnamed(name string) bool { return name == "" || name == "unknown" }

// selectFDs picks the descriptors to register. With a label: those named
// label (else those named label.socket, systemd's default name for the
// socket unit label.socket), or all of them if systemd named none. Without:
// all, each under its own name.
func selectFDs(fds []inherited, label string) ([]inherited, error) {
	named := false
	for _, f := range fds {
		if !unnamed(f.name) {
			named = true
		}
	}
	if label != "" {
		if !named {
			return fds, nil
		}
		for _, want := range []string{label, label + ".socket"} {
			var out []inherited
			for _, f := range fds {
				if f.name == want {
					out = append(out, f)
				}
			}
			if len(out) > 0 {
				return out, nil
			}
		}
		return nil, fmt.Errorf("none of the sockets passed by systemd is named %q (LISTEN_FDNAMES: %s): "+
			"set FileDescriptorName=%s in the socket unit, give one of those names as LABEL, "+
			"or run 'switchyard register' without LABEL to register each socket under its own name",
			label, describeNames(fds), label)
	}
	for _, f := range fds {
		if unnamed(f.name) {
			return nil, fmt.Errorf("fd %d has no name (LISTEN_FDNAMES: %s), so there is no label to register it under: "+
				"give LABEL, or set FileDescriptorName= in the socket unit", f.fd, describeNames(fds))
		}
		if err := binding.ValidateLabel(f.name); err != nil {
			return nil, fmt.Errorf("fd %d is named %q, which cannot be a label: %w: set FileDescriptorName= to a label in the socket unit, or give LABEL", f.fd, trunc(f.name), err)
		}
	}
	return fds, nil
}

func describeNames(fds []inherited) string {
	s := make([]string, len(fds))
	for i, f := range fds {
		name := f.name
		if name == "" {
			name = "(none)"
		}
		s[i] = fmt.Sprintf("fd %d %s", f.fd, name)
	}
	return strings.Join(s, ", ")
}
