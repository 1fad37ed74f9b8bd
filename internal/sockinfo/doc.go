// Package sockinfo inspects a socket that a service hands to switchyard and
// decides whether switchyard can dispatch traffic to it.
//
// Inspect reads what the kernel knows about a file descriptor (family,
// protocol, whether it listens, is bound or connected, its SO_COOKIE and the
// cookie of its network namespace). Check applies switchyard's rules to that
// description, and Validate does both and also checks that the socket lives in
// the expected network namespace.
//
// Every refusal wraps one of the sentinel errors (ErrNotSocket,
// ErrUnsupportedFamily, ErrUnsupportedProtocol, ErrMPTCP, ErrNotListening,
// ErrUnbound, ErrConnected, ErrWrongNamespace) so that callers can branch on
// it with errors.Is, and its message says how to fix the socket. IsRefusal
// tells a refusal (the caller's socket is unsuitable) from a failure to
// inspect it (a system call failed).
//
// The package only reads socket state; it never changes, keeps or closes the
// file descriptor it is given. Whether a socket's protocol fits a label's
// bindings is decided by the daemon, not here.
package sockinfo
