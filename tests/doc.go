// Package tests holds switchyard's end-to-end tests. They build the real
// switchyard and switchyardd binaries, run the daemon in a network namespace
// of their own with a bpffs of their own, and drive it only as users do:
// through the CLI, the register package, systemd-socket-activate, and real
// clients such as curl and socat. They need root.
package tests
