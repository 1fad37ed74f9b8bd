// Package kernelsplice owns the in-kernel splice engine: bpf/kernelsplice.c's
// SK_SKB stream verdict program and its maps (sy_k_*), pinned in the
// dispatcher's state directory while the engine runs. A splice proxy hands
// it the two sockets of a proxied connection (Engine.Pair); the program
// redirects what one receives to the other's send path, within a bound on
// the bytes queued in between, and a direction that exceeds it, or whose
// data the program never saw, falls back to userspace for good, after the
// bytes redirected before it have reached the destination.
//
// The pairs are sockets of the process that runs the engine, so its state
// does not outlive that process: Open removes what an earlier one left.
// This package does not accept, dial or proxy connections (package splice
// does), nor decide which labels use the engine (package policy does).
package kernelsplice
