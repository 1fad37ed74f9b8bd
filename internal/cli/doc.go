// Package cli is the switchyard command: every subcommand of the CLI, as a
// function that tests can call in-process.
//
// Main(ctx, env, args) runs one command line and returns the exit status. All
// I/O goes through Env: output streams, the environment (LISTEN_PID,
// LISTEN_FDS, LISTEN_FDNAMES), the process id, opening files for apply, and
// taking over inherited descriptors for register. OSEnv wires Env to the real
// process; cmd/switchyard is one line that calls Main with it.
//
// What it owns: argument parsing (a flag.FlagSet per command, flags.go),
// help texts, completion scripts and the man page's text, exit codes (0
// success, 1 failure, 2 usage error), error messages that say what to do
// next, the human tables and the JSON of read commands (-o json), systemd
// socket activation on the client side (register), taking a socket out of
// another process with pidfd_getfd (register-pid), and the hidden `demo`
// command.
//
// What it does not own: it reaches switchyard's state through switchyardd,
// over package control, with these exceptions, each through package
// dispatch: read commands read the pinned state read-only when no daemon
// answers (pinned.go); `lookup` runs the dispatch program on it with
// BPF_PROG_TEST_RUN; `unload` removes it (refusing while a daemon serves
// the namespace, unless told to stop it); and `demo` (used by `make demo`)
// runs a dispatcher in-process, in a throwaway network namespace and bpffs
// of its own. Binding specs are parsed by package binding and config files
// by package config, so the CLI accepts exactly what the daemon and the
// config file accept, with the same messages.
package cli
