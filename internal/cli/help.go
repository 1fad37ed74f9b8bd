package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// command is one subcommand.
type command struct {
	name    string
	args    string // arguments for the synopsis, flags included
	summary string
	help    string // what it does, examples
	flags   []flagSpec
	hidden  bool
	run     func(inv *invocation) error
}

func (c *command) synopsis() string { return strings.TrimSpace(c.args) }

// flagSet makes the command's FlagSet: help, the global flags and its own.
func (c *command) flagSet() *flag.FlagSet {
	return newFlagSet(c.name, append(append([]flagSpec{helpFlag}, globalFlags...), c.flags...))
}

// ownFlags are the flags of the command's FlagSet that are its own.
func (c *command) ownFlags() []flagSpec { return specsOf(c.flagSet())[1+len(globalFlags):] }

var commands []*command

func init() {
	commands = []*command{
		{
			name:    "bind",
			args:    "LABEL tcp|udp PREFIX PORTS",
			summary: "send new connections or datagrams for PREFIX and PORTS to LABEL's socket",
			help: `Adds a binding: traffic of the protocol to an address in PREFIX and a port
in PORTS goes to the socket registered for LABEL. The most specific binding
wins: the longest prefix, then the narrowest port set. Binding the same thing
twice is fine; a binding that would make the choice ambiguous is refused.
Needs root.

PREFIX is an IPv4 or IPv6 CIDR prefix; a bare address means /32 or /128.
PORTS is one port (80), a range (8000-8999) or every port ('*', quoted so
the shell leaves it alone).

Examples:
  switchyard bind dns-public udp 192.0.2.0/24 53
  switchyard bind web tcp 2001:db8::/64 '*'`,
			run: runBind,
		},
		{
			name:    "unbind",
			args:    "LABEL tcp|udp PREFIX PORTS",
			summary: "remove a binding",
			help: `Removes a binding. All four parts must match an existing binding, the
label included (see 'switchyard bindings'). Needs root.

Example:
  switchyard unbind dns-public udp 192.0.2.0/24 53`,
			run: runUnbind,
		},
		{
			name:    "bindings",
			args:    "[LABEL] [-o json|yaml]",
			summary: "list the bindings, all or those of LABEL; -o yaml exports the config",
			help: `Lists bindings in the daemon's order. With -o json it prints
{"bindings": [{"label": ..., "protocol": ..., "prefix": ..., "ports": ...}]},
ports as the text form ("80", "8000-8999" or "*").

With -o yaml it prints everything in force, the bindings and every label's
settings (policy, upstream, grants), as a config file: 'switchyard apply -f'
accepts it and, applied where it came from, changes nothing. Needs root.

When switchyardd does not answer, the bindings are read from the pinned
state (root only), and a line on stderr says so.

Example:
  switchyard bindings -o yaml > switchyard.yaml`,
			flags: []flagSpec{yamlOutputFlag, bpffsFlag},
			run:   runBindings,
		},
		{
			name:    "register",
			args:    "[--fd N]... [LABEL]",
			summary: "register inherited sockets (systemd socket activation, or --fd)",
			help: `Registers sockets this process inherited as destinations of a label.

By default the sockets come from systemd socket activation: LISTEN_FDS
descriptors starting at 3, for this process (LISTEN_PID), named by
LISTEN_FDNAMES (the socket unit's FileDescriptorName=, by default the unit's
name). With LABEL, the sockets named LABEL (or LABEL.socket) are registered
for it, or every socket if systemd gave no names. Without LABEL each socket is
registered under its own name.

--fd N registers inherited descriptor N instead (repeatable; needs LABEL).

--wait DURATION (default 5s) tries again while switchyardd is starting (no
control socket yet, or nobody accepting on it), so that a unit started at
boot beside the daemon does not lose the race; 0 fails at once.

A TCP socket must be listening, a UDP socket bound and not connected.
Registering needs root, or a grant for the label in the daemon's config.
The daemon keeps no copy: when the service closes its socket, the label has
none.

Example unit (register-socket pattern):
  [Service]
  Type=oneshot
  Sockets=web.socket
  ExecStart=/usr/bin/switchyard register web`,
			flags: []flagSpec{
				{names: []string{"fd"}, value: "N", repeat: true, help: "register inherited file descriptor N (repeatable)"},
				{names: []string{"wait"}, value: "DURATION", help: "while switchyardd is starting, try again for this long (default 5s; 0: not at all)"},
			},
			run: runRegister,
		},
		{
			name:    "register-pid",
			args:    "PID LABEL tcp|udp ADDR:PORT",
			summary: "register a socket taken from a running process",
			help: `Finds the socket of process PID that is bound to ADDR:PORT (listening for
tcp, unconnected for udp), takes a copy of it with pidfd_getfd and registers
it for LABEL. 0.0.0.0 or [::] as ADDR means the wildcard bind. Needs
CAP_SYS_PTRACE over the process (root), and the right to register for LABEL.

Example:
  switchyard register-pid 1234 dns-public udp 0.0.0.0:53`,
			run: runRegisterPID,
		},
		{
			name:    "unregister",
			args:    "LABEL tcp|udp ipv4|ipv6",
			summary: "remove the socket of a label for one protocol and family",
			help: `Empties a destination: traffic bound to LABEL for that protocol and family
is refused (TCP) or dropped (UDP) until a socket is registered again.`,
			run: runUnregister,
		},
		{
			name:    "status",
			args:    "[LABEL] [-o json]",
			summary: "show labels with their policies, sockets and counters",
			help: `Shows every label the daemon knows (or only LABEL): its policy, how many
bindings it has, its registered sockets, and how many lookups chose it
(hits) and found no socket (missing). -o json prints the same as an object
with the fields version, netns and labels (label, policy, upstream,
bindings, sockets (protocol, family, local, cookie), hits, missing).

When switchyardd does not answer, the status is read from the pinned state
(root only): bindings, sockets and counters from the maps, policies from
the daemon's settings file; the first line says the daemon is not running
(-o json: "daemon_running": false).`,
			flags: []flagSpec{outputFlag, bpffsFlag},
			run:   runStatus,
		},
		{
			name:    "policy",
			args:    "LABEL none|bypass|splice [UPSTREAM]",
			summary: "set what is done to the connections of a label",
			help: `Sets a label's connection policy:
  none    nothing (the default)
  bypass  local TCP connections skip the TCP/IP stack (SK_MSG redirect)
  splice  switchyardd accepts the connections and splices them to UPSTREAM,
          host:port, or host:same to keep the port the client dialled
UPSTREAM's host is an IPv4 address, an IPv6 address in brackets, or a DNS
name (labels of letters, digits, '-' and '_', not starting or ending with
'-', the last not all digits). --engine kernel (splice only) moves the bytes
with the in-kernel SK_SKB engine instead of the userspace splice. Needs root.

Example:
  switchyard policy web splice 10.0.0.5:same`,
			flags: []flagSpec{
				{names: []string{"engine"}, value: "ENGINE", help: "splice engine: kernel (default: the userspace splice)"},
			},
			run: runPolicy,
		},
		{
			name:    "apply",
			args:    "-f FILE [--dry-run]",
			summary: "make the bindings and label settings equal to a config file",
			help: `Reads a YAML config file (the format of switchyardd --config; '-' reads
stdin) and makes the daemon's bindings and label settings equal to it, in one
step that never misdirects traffic. Prints the changes, "- " for what goes and
"+ " for what comes, or "no changes". --dry-run only prints them. The file's
daemon section is ignored. Needs root.`,
			flags: []flagSpec{
				{names: []string{"f", "file"}, value: "FILE", help: "config file to apply ('-' for stdin)"},
				{names: []string{"dry-run", "n"}, help: "print the changes without making them"},
			},
			run: runApply,
		},
		{
			name:    "lookup",
			args:    "tcp|udp ADDR:PORT [--from ADDR:PORT] [-o json]",
			summary: "tell which binding, label and socket get traffic to ADDR:PORT",
			help: `Runs the dispatch program on the namespace's pinned state with
BPF_PROG_TEST_RUN, as for a new connection or datagram to ADDR:PORT, and
prints the binding that wins (or none), its label, the socket chosen (where
it is bound, its cookie, the processes that hold it) and the verdict:
delivered, refused (the label has no usable socket) or left to the kernel's
own lookup (no binding matches). Nothing is sent and nothing changes: what
the test run counts is taken back, so the label's counters do not show it.
Works with or without switchyardd. Needs root.

-o json prints the same as an object: protocol, destination, source,
binding, label, socket (protocol, family, local, cookie, reuseport, owners),
verdict (delivered, refused or kernel), reason, counters_counted.

Examples:
  switchyard lookup udp 192.0.2.7:53
  switchyard lookup tcp [2001:db8::1]:443 --from [2001:db8::99]:40000`,
			flags: []flagSpec{
				{names: []string{"from"}, value: "ADDR:PORT", help: "the client's address (does not change the choice of binding)"},
				outputFlag, bpffsFlag,
			},
			run: runLookup,
		},
		{
			name:    "unload",
			args:    "[--stop-daemon] [--bpffs DIR]",
			summary: "take switchyard out of the namespace",
			help: `Detaches the dispatch program and removes everything switchyard made for
the network namespace: the pinned maps and links (bypass state included),
the splice workers (stopped, with their connections) and the files beside
the control socket. The kernel's own socket lookup is then in force: a
socket bound the ordinary way gets the traffic a binding used to steer.
Prints what it removed; with nothing left it says so and succeeds.

It refuses while switchyardd serves the namespace, unless --stop-daemon,
which stops the daemon first (SIGTERM, as systemctl stop does; under
systemd, stop the unit instead, or it may start the daemon again).
Needs root.`,
			flags: []flagSpec{
				{names: []string{"stop-daemon"}, help: "stop the namespace's switchyardd first"},
				bpffsFlag,
			},
			run: runUnload,
		},
		{
			name:    "version",
			args:    "[-o json]",
			summary: "print the versions of switchyard and, if it answers, switchyardd",
			help: `Prints this program's version and control protocol, and the daemon's if
it answers. An unreachable daemon is reported but is not an error.`,
			flags: []flagSpec{outputFlag},
			run:   runVersion,
		},
		{
			name:    "completion",
			args:    "bash|zsh",
			summary: "print a shell completion script",
			help: `Prints a completion script for bash or zsh: commands, flags, and labels,
which it asks the daemon for (or reads from the pinned state) as you type.
make install puts both where the shells look. To try one:
  source <(switchyard completion bash)`,
			run: runCompletion,
		},
		{
			name:    "__labels",
			summary: "print the labels the daemon knows, one a line (for completion)",
			help:    `Prints the labels of 'switchyard status', one a line, for completion scripts.`,
			hidden:  true,
			run:     runLabels,
		},
		{
			name:    "demo",
			summary: "show dispatching in a throwaway namespace (needs root)",
			help: `Creates a throwaway network namespace and bpffs, runs a dispatcher in
this process, binds every port of 10.99.0.0/16 to one socket and dials it at
random addresses and ports. Removes everything at the end. Needs root.`,
			hidden: true,
			run:    runDemo,
		},
	}
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

const usageHead = `switchyard steers new connections and datagrams for whole prefixes and
port ranges to the sockets of services, through switchyardd (sk_lookup).

Usage: switchyard [--netns PATH] [--control PATH] COMMAND [ARGS]

Commands:
`

const usageTail = `
Global flags (before or after the command):
  --netns PATH     network namespace to work in, such as /run/netns/NAME
                   (default: this process's)
  --control PATH   control socket of switchyardd (default: the namespace's,
                   /run/switchyard/netns-INODE/control.sock)

PORTS is one port (80), a range (8000-8999) or every port ('*'). PREFIX is an
IPv4 or IPv6 CIDR prefix; a bare address means /32 or /128. A LABEL is 1 to
255 bytes of letters, digits and . _ - @.
Read commands print JSON with -o json. Exit status: 0 success, 1 failure,
2 wrong usage. Run 'switchyard COMMAND -h' for a command's help.
`

func writeUsage(w io.Writer) error {
	io.WriteString(w, usageHead)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		if c.hidden {
			continue
		}
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintf(tw, "  help [COMMAND]\tthis help, or a command's\n")
	tw.Flush()
	io.WriteString(w, usageTail)
	return nil
}

func writeCommandHelp(w io.Writer, c *command) error {
	fmt.Fprintf(w, "Usage: switchyard [--netns PATH] [--control PATH] %s %s\n\n", c.name, c.args)
	fmt.Fprintf(w, "%s.\n\n%s\n", capitalize(c.summary), c.help)
	if own := c.ownFlags(); len(own) > 0 {
		fmt.Fprintf(w, "\nFlags:\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, f := range own {
			var names []string
			for _, n := range f.names {
				if len(n) == 1 {
					names = append(names, "-"+n)
				} else {
					names = append(names, "--"+n)
				}
			}
			arg := strings.Join(names, ", ")
			if f.value != "" {
				arg += " " + f.value
			}
			fmt.Fprintf(tw, "  %s\t%s\n", arg, f.help)
		}
		tw.Flush()
	}
	return nil
}

func runHelp(env Env, args []string) error {
	if len(args) == 0 {
		return writeUsage(env.Stdout)
	}
	if len(args) > 1 {
		return usagef("help: expected at most one COMMAND, got %d arguments: run 'switchyard help'", len(args))
	}
	c := findCommand(args[0])
	if c == nil {
		return usagef("help: unknown command %q: run 'switchyard help' for the list of commands", trunc(args[0]))
	}
	return writeCommandHelp(env.Stdout, c)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
