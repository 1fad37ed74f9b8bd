// Package netns opens network namespaces by path and runs code inside them.
//
// switchyard's daemon and CLI act on a namespace named by a path such as
// /run/netns/NAME or /proc/PID/ns/net. This package resolves such paths to an
// open handle, identifies the namespace (inode and cookie), and runs a
// function on an OS thread switched into it, so that sockets created there
// belong to it. It owns no BPF state.
package netns
