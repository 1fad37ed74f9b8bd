package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

// Version is the CLI's version, set at build time with
//
//	go build -ldflags "-X github.com/switchyard-project/switchyard/internal/cli.Version=1.2.3"
var Version = "dev"

// Exit statuses of Main.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// Env is everything a command may touch outside the process's memory.
// Tests fill it with buffers and fakes; OSEnv wires it to the real process.
// Nil fields get harmless defaults (no input, discarded output, an empty
// environment, pid 0, no files).
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable ("" if unset).
	Getenv func(key string) string
	// Getpid returns the process id, compared with LISTEN_PID.
	Getpid func() int
	// Open opens a file for reading (apply -f FILE).
	Open func(name string) (io.ReadCloser, error)
	// InheritedFile takes over the socket descriptor fd that the process
	// inherited (from systemd, or a parent for --fd). The caller owns the
	// file and closes it. It fails if fd is not open or not a socket.
	InheritedFile func(fd int) (*os.File, error)
}

// OSEnv is the Env of the running process.
func OSEnv() Env {
	return Env{
		Stdin:         os.Stdin,
		Stdout:        os.Stdout,
		Stderr:        os.Stderr,
		Getenv:        os.Getenv,
		Getpid:        os.Getpid,
		Open:          func(name string) (io.ReadCloser, error) { return os.Open(name) },
		InheritedFile: inheritedFile,
	}
}

func (e Env) withDefaults() Env {
	if e.Stdin == nil {
		e.Stdin = strings.NewReader("")
	}
	if e.Stdout == nil {
		e.Stdout = io.Discard
	}
	if e.Stderr == nil {
		e.Stderr = io.Discard
	}
	if e.Getenv == nil {
		e.Getenv = func(string) string { return "" }
	}
	if e.Getpid == nil {
		e.Getpid = func() int { return 0 }
	}
	if e.Open == nil {
		e.Open = func(name string) (io.ReadCloser, error) {
			return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
		}
	}
	if e.InheritedFile == nil {
		e.InheritedFile = func(fd int) (*os.File, error) {
			return nil, fmt.Errorf("fd %d is not open: %w", fd, unix.EBADF)
		}
	}
	return e
}

// inheritedFile wraps an inherited descriptor in an *os.File. Descriptors
// that are not sockets are refused before they are wrapped, so that a wrong
// --fd never makes the CLI close a descriptor of the Go runtime. The
// descriptor is made close-on-exec, as sd_listen_fds does, so nothing this
// process might start keeps the socket alive.
func inheritedFile(fd int) (*os.File, error) {
	if fd < 0 {
		return nil, fmt.Errorf("fd %d: %w", fd, unix.EBADF)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return nil, fmt.Errorf("fd %d is not open: %w", fd, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fd %d: fstat: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("fd %d: %w", fd, sockinfo.ErrNotSocket)
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), fmt.Sprintf("fd %d", fd)), nil
}

// Main runs the command line args (without the program name) and returns the
// exit status: ExitOK, ExitFailure, or ExitUsage for a command line that is
// wrong. Errors are printed as one line on env.Stderr:
//
//	switchyard: <what went wrong>: <what to do>
func Main(ctx context.Context, env Env, args []string) int {
	env = env.withDefaults()
	err := run(ctx, env, args)
	if err == nil {
		return ExitOK
	}
	msg := err.Error()
	first, rest, _ := strings.Cut(msg, "\n")
	fmt.Fprintf(env.Stderr, "switchyard: %s\n", first)
	// Only config files report several problems; each gets a line.
	for line := range strings.SplitSeq(rest, "\n") {
		if line != "" {
			fmt.Fprintf(env.Stderr, "  %s\n", line)
		}
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitFailure
}

// usageError is a command line that cannot work as written.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// invocation is one parsed command line.
type invocation struct {
	ctx     context.Context
	env     Env
	cmd     *command
	args    []string            // positional arguments
	flags   map[string][]string // command flags by canonical name
	netns   string
	control string
	timeout time.Duration // --timeout, 0 if not given
}

func (inv *invocation) flag(name string) string { return last(inv.flags[name]) }

// last is the last of vs, or "".
func last(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

func (inv *invocation) has(name string) bool { return len(inv.flags[name]) > 0 }

// usage is a usage error of the invocation's command, pointing at its help.
func (inv *invocation) usage(format string, args ...any) error {
	return usagef("%s: %s: run 'switchyard %s -h' for help", inv.cmd.name, fmt.Sprintf(format, args...), inv.cmd.name)
}

// argError is a usage error for an argument a parser refused; the parsers'
// messages already say what to write instead.
func (inv *invocation) argError(err error) error {
	return &usageError{fmt.Errorf("%s: %w", inv.cmd.name, err)}
}

// wantArgs checks the number of positional arguments.
func (inv *invocation) wantArgs(lo, hi int) error {
	n := len(inv.args)
	if n >= lo && n <= hi {
		return nil
	}
	got := "no arguments"
	switch {
	case n == 1:
		got = "1 argument"
	case n > 1:
		got = fmt.Sprintf("%d arguments", n)
	}
	want := inv.cmd.synopsis()
	if want == "" {
		want = "no arguments"
	}
	return inv.usage("expected %s, got %s", want, got)
}

func (inv *invocation) stdout() io.Writer { return inv.env.Stdout }

var globalFlags = []flagSpec{
	{names: []string{"netns"}, value: "PATH", help: "network namespace to work in, such as /run/netns/NAME or /proc/PID/ns/net (default: this process's)"},
	{names: []string{"control"}, value: "PATH", help: "control socket of switchyardd (default: /run/switchyard/netns-INODE/control.sock of the namespace)"},
	{names: []string{"timeout"}, value: "DURATION", help: "give up waiting for switchyardd after DURATION, such as 30s (default: wait as long as it takes); a change it was making may still complete"},
}

var helpFlag = flagSpec{names: []string{"h", "help"}, help: "show this help"}

var outputFlag = flagSpec{names: []string{"o", "output"}, value: "FORMAT", help: "table (default) or json"}

// yamlOutputFlag is the output flag of bindings, which also exports.
var yamlOutputFlag = flagSpec{names: []string{"o", "output"}, value: "FORMAT", help: "table (default), json, or yaml: a config file of all that is in force, for apply -f"}

// leadingFlags are the flags accepted before the command.
var leadingFlags = append([]flagSpec{helpFlag, {names: []string{"version"}, help: "print the versions (the version command)"}}, globalFlags...)

func run(ctx context.Context, env Env, args []string) error {
	inv := &invocation{ctx: ctx, env: env}
	lead := newFlagSet("switchyard", leadingFlags)
	if err := lead.Parse(args); err != nil {
		err = flagError(lead, args, err)
		if strings.HasPrefix(err.Error(), "unknown flag ") {
			return usagef("%v: the flags before the command are --netns PATH, --control PATH and --timeout DURATION; run 'switchyard help' for help", err)
		}
		return usagef("%v: run 'switchyard help' for help", err)
	}
	vals := values(lead)
	if len(vals["h"]) > 0 {
		return writeUsage(env.Stdout)
	}
	args = lead.Args()
	if len(vals["version"]) > 0 {
		args = append([]string{"version"}, args...)
	}
	inv.netns, inv.control = last(vals["netns"]), last(vals["control"])
	timeout := last(vals["timeout"])
	if len(args) == 0 {
		return usagef("no command given: run 'switchyard help' for the list of commands")
	}
	name := args[0]
	if name == "help" {
		return runHelp(env, args[1:])
	}
	cmd := findCommand(name)
	if cmd == nil {
		return usagef("unknown command %q: run 'switchyard help' for the list of commands", trunc(name))
	}
	inv.cmd = cmd

	fs, pos, err := parseInterspersed(cmd.flagSet, args[1:])
	if err != nil {
		return inv.usage("%v", err)
	}
	vals = values(fs)
	if len(vals["h"]) > 0 {
		return writeCommandHelp(env.Stdout, cmd)
	}
	if v := vals["netns"]; len(v) > 0 {
		inv.netns = last(v)
	}
	if v := vals["control"]; len(v) > 0 {
		inv.control = last(v)
	}
	if v := vals["timeout"]; len(v) > 0 {
		timeout = last(v)
	}
	if timeout != "" {
		d, err := time.ParseDuration(timeout)
		if err != nil || d <= 0 {
			return inv.usage("--timeout %q: give a positive duration such as 30s or 2m", trunc(timeout))
		}
		inv.timeout = d
		ctx, cancel := context.WithTimeout(inv.ctx, d)
		defer cancel()
		inv.ctx = ctx
	}
	inv.args, inv.flags = pos, vals
	if f := fs.Lookup("o"); f != nil {
		yaml := f.Usage == yamlOutputFlag.help
		switch f := inv.flag("o"); {
		case f == "", f == "table", f == "json":
		case f == "yaml" && yaml:
		case yaml:
			return inv.usage("output format %q: use -o table, -o json or -o yaml", trunc(f))
		default:
			return inv.usage("output format %q: use -o table or -o json", trunc(f))
		}
	}
	err = cmd.run(inv)
	if err != nil && inv.timeout > 0 && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: no answer from switchyardd within %v (--timeout); a change it was making may still complete: look with 'switchyard status' (%w)", cmd.name, inv.timeout, err)
	}
	return err
}

func (inv *invocation) json() bool { return inv.flag("o") == "json" }

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
