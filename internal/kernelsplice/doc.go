// Package kernelsplice owns the in-kernel splice engine: bpf/kernelsplice.c's
// SK_SKB stream verdict program and its maps (sy_k_*), pinned in the
// dispatcher's state directory while the engine runs. A splice proxy hands
// it the two sockets of a proxied connection (Engine.Pair); the program
// redirects what one receives to the other's send path, within a bound on
// the bytes queued in between, and a direction that exceeds it, or whose
// data the program never saw, falls back to userspace for good, after the
// bytes redirected before it have reached the destination. Both sockets
// are in the map the program redirects through (sy_k_peers) before either
// gets the program (sy_k_pairs), and what they received before that is run
// through the program as the pair starts, so bytes a client or upstream
// sends first, even while the pair is being set up, move in the kernel too.
//
// The pairs are sockets of the process that runs the engine, so its state
// does not outlive that process: Open removes what an earlier one left.
// This package does not accept, dial or proxy connections (package splice
// does), nor decide which labels use the engine (package policy does).
package kernelsplice
