// Package policy applies connection policies to the connections that
// dispatched sockets accept, per label (README, "Connection policies"):
//
//   - bypass: a sockops program on a cgroup v2 directory puts both ends of a
//     TCP connection to a bypass label into a sockhash, and an SK_MSG
//     program moves each message straight into the peer's receive queue.
//     A message whose peer is not in the map (remote, or not yet known)
//     takes the normal path, and no later byte may overtake it: with the
//     fentry guard, redirecting resumes only once the peer has read all
//     that went the normal way; with Options.TrustReaders, that
//     connection's end takes the normal path for good.
//   - splice: a Proxy owns the label's listening sockets, dials the
//     upstream for each connection, and moves bytes with splice(2) through
//     a pipe (the default, bounded by the pipe and the socket buffers) or,
//     with EngineSockmap, in the kernel with an SK_SKB verdict program and a
//     bound on what may queue between the sockets.
//
// Which label a connection belongs to comes from bpf/lookup.h, the lookup
// the sk_lookup program makes: one source of truth. The programs share the
// dispatcher's pinned maps and pin this package's maps (sy_p_*) and the
// sockops link in the same state directory, so bypass outlives the daemon
// and a new Manager adopts it.
//
// This package does not own bindings, sockets or the sk_lookup program
// (package dispatch does), nor the control protocol or configuration.
package policy
