// Package testenv gives kernel-touching tests an isolated place to run: a
// fresh network namespace per test, a private bpffs instance per test, and a
// TestMain hook that fails the run on leaked file descriptors.
//
// What it owns:
//   - NetNS: an anonymous network namespace held by one file descriptor,
//     created by internal/netns.New. Its lo is up. Helpers run code inside
//     it (Do, which is internal/netns.Run), add local routes, addresses and
//     veth pairs (github.com/vishvananda/netlink), open MPTCP-free sockets
//     in it, and start other programs in it (Command, via nsenter).
//   - RequireFeature: skips a test only on a kernel that cannot have a
//     feature (older than the version that brought it, or built without
//     its option), loads a module that is merely not loaded, and fails the
//     test on any other kernel that lacks it.
//   - WaitFor and Poll: the one way tests wait for a condition that has no
//     readiness signal, failing with what was last seen.
//   - BPFFS: a bpffs instance mounted on a new temporary directory.
//   - CheckFDLeaks and RequireRoot, for TestMain and test preambles.
//   - ScaleBinding: the bindings of the tests and benchmarks at 1,048,576.
//
// What it does not do: it never changes the host's network namespace,
// routes, sysctls or /sys/fs/bpf, never creates named namespaces under
// /run/netns and never uses `ip netns exec` (which remounts /sys and would
// hide the test's bpffs). Everything it creates is removed by tb.Cleanup,
// also when the test fails. It does not load BPF programs or know anything
// about switchyard's maps: that is dispatch's job.
//
// Threads: the Go scheduler moves goroutines between OS threads, and a
// network namespace belongs to a thread. Do therefore runs its function on a
// new goroutine locked to its own thread, switches that thread into the
// namespace and back afterwards; a thread that cannot switch back exits
// instead of going back to the scheduler's pool in the wrong namespace. Sockets keep the namespace they were created in, so a socket
// opened inside Do may be used from any goroutine afterwards. Goroutines
// started by the function itself run on other threads, in the host
// namespace; dial IP literals only (name resolution may use other threads).
//
// Root: the helpers need CAP_SYS_ADMIN and CAP_NET_ADMIN. NewNetNS and BPFFS
// call RequireRoot, which skips the test when not run as root. CI runs as
// root, and with CI set in the environment RequireRoot fails the test
// instead of skipping, so the skip cannot hide failures there.
package testenv
