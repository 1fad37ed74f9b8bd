// Package dispatch owns switchyard's kernel state in one network namespace:
// the sk_lookup program, its link, and the maps it reads, all pinned in a
// bpf filesystem so that dispatching outlives any process.
//
// A Dispatcher adds and removes bindings (protocol, prefix, ports -> label),
// registers sockets as the destinations of labels, and reads the program's
// per-label counters. The program picks, for each new TCP connection or UDP
// datagram, the most specific binding: the longest prefix, then the narrowest
// port set. If the winning label has no usable socket the lookup fails (TCP is
// refused), and traffic that matches no binding is left to the kernel.
//
// Layout: bindings are compiled per (protocol, prefix) into one hash entry
// holding the label of every port (inline segments, an overflow table, or an
// exact-port map). A lookup visits only the prefix lengths in use, longest
// first, and a bitmap filter skips the hash probe for lengths that cannot
// match, so its cost does not grow with the number of bindings. Changes are
// written to two generations and switched with one store, so a lookup sees
// all of a change or none of it.
//
// State lives in Options.Root/netns-INODE. It is created under a temporary
// name and renamed into place, and every change holds a lock on the
// directory, so several processes may use it at once. This package knows
// nothing of the control protocol, authorization or configuration files.
package dispatch
