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
// # Crash atomicity
//
// What a restarted process recovers the set in force from is the record:
// the bindings, and an opaque blob of label settings that the daemon stores
// with them (Replace, SetSettings, Settings). It is kept twice, as
// generations 0 (sy_bindings) and 1 (sy_bindings_b, with sy_settings holding
// the blobs of both), and sy_commit[0] names the generation in force and the
// state of a change: idle, begun, flipped, or sync (the other generation is
// stale). Every bpf syscall is one step: a SIGKILL lands between two, never
// inside one. A change from set A (generation g) to set B writes, in order:
//
//  1. sy_commit = {g, begun}; then sy_config.dirty = 1.
//  2. B's delta and settings into generation g^1 (which held A), and
//     beside it B into the data generation the program does not read.
//  3. sy_commit = {g^1, flipped}: the commit point, one store.
//  4. The program switched to the data generation holding B; once no
//     program can read the other (see commit.go), B into it, and beside
//     it B's delta into generation g.
//  5. sy_commit = {g^1, idle}; then sy_config.dirty = 0.
//
// A change of many groups returns to its caller after step 4's switch of
// the program: B is in force and recorded. Steps 4 and 5 go on under the
// same locks, so that the next operation, of this process or another,
// begins after them (Close waits for them too).
//
// The two writes of step 2, and the two of step 4, are independent of each
// other: they run side by side, and each pair is joined before the next
// step, so a crash may stop either of a pair anywhere, and which set is in
// force depends on neither.
//
// A crash before 3 leaves generation g whole and in force, holding A, and
// the program reading the data generation that holds A, untouched (the
// address and port words it reads for either generation have only lost
// bits, and a clear bit says nothing); the other data generation may hold
// part of B. Recovery (dirty is set)
// rewrites the data path from generation g, entry by entry where it
// differs, the generation the program does not read first, so that the
// program only ever reads A and the next change builds on A alone
// (recover.go: each generation is read in batches and compared with the
// set as it comes, and only if entries are missing are all the set's put
// again, so that recovery holds a batch beside the set, not the maps); it
// marks generation g^1 stale and logs that the old set is in force. A
// crash from 3 on leaves generation g^1 whole and in force, holding B
// (step 2 completed before 3 was written), and the data path anywhere
// between A and B: recovery rewrites the data path from generation g^1 in
// the same way, and logs that the new set is in force. If the data path
// cannot hold B (step 2 fails), the change stops at {g, begun}, and A is in
// force as after a crash before 3; if the program cannot be switched, one
// store puts {g, begun} back (generation g is still whole), with the same
// result. A failure in step 4 leaves B in force and the change unfinished,
// as a crash there would, and the next operation finishes it; the change
// returns ErrUnfinished, so that its caller keeps what goes with B. Recovery
// itself writes only the data path toward the generation in force and
// then the commit state, so a crash during it leaves what it found. A
// stale generation of the record is made equal to the one in force (in
// the same way: entries that differ are written, and all of the set's if
// some are missing) before the next change begins; until then nothing
// reads it. A read-only
// dispatcher reads the generation in force and writes nothing. State of a
// build without generations has no sy_commit: sy_bindings is the record,
// and the first writable Open adds the other maps and a sy_commit of
// {0, sync}, pinned only once written.
//
// State lives in Options.Root/netns-INODE. It is created under a temporary
// name and renamed into place, and every change holds a lock on the
// directory, so several processes may use it at once. This package knows
// nothing of the control protocol, authorization or configuration files.
package dispatch
