// Package policy applies connection policies to the connections that
// dispatched sockets accept, per label (README, "Connection policies"). It
// coordinates the packages that carry them out and keeps the kernel
// objects of each only while some label uses it:
//
//   - bypass (internal/bypass): both ends of a local TCP connection skip
//     the TCP/IP stack; its maps and programs exist while a label has
//     bypass, and go once none has and the connections bypass took on
//     have closed;
//   - splice (internal/splice): a proxy owns the label's listening
//     sockets and dials the upstream for each connection, moving bytes
//     with splice(2) in userspace (engine userspace, the default), or
//   - with engine kernel, in the kernel (internal/kernelsplice), whose
//     maps and program exist while a label uses it or a connection it
//     spliced is open.
//
// Manager holds each label's policy against the dispatcher's label ids and
// says what is in force (Status) and what moved (Counters).
//
// This package does not own bindings, sockets or the sk_lookup program
// (package dispatch does), nor the control protocol, the label settings
// or the configuration (packages control, server and config do).
package policy
