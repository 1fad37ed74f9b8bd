// Package netns opens network namespaces by path, creates them, and runs
// code inside them.
//
// switchyard's daemon and CLI act on a namespace named by a path such as
// /run/netns/NAME or /proc/PID/ns/net. This package resolves such paths to an
// open handle (github.com/vishvananda/netns), identifies the namespace (inode
// and cookie), and runs a function on an OS thread switched into it (Run), so
// that sockets created there belong to it. Run is the project's one way to
// switch a thread's namespace: it locks the thread, switches, runs, switches
// back, and lets a thread that cannot switch back end rather than return to
// Go's pool. New makes a namespace and sets it up (LoUp, AddLocalRoute, with
// github.com/vishvananda/netlink) for the demo and the tests.
//
// It owns no BPF state and changes no namespace it did not create, except
// for what the caller's function does inside Run.
package netns
