// Package control is the wire format and transport of switchyardd's control
// protocol: the messages that the CLI, the register package and services
// exchange with the daemon over a unix SOCK_SEQPACKET socket.
//
// What it owns: the table of operations (ops.go: each operation's number,
// name, request and reply types, size limits, descriptor range and who may
// call it), the request and reply types, their encoding and decoding, the
// error codes a client can match on (Error, ErrPermission and the other
// sentinels), passing sockets with SCM_RIGHTS, peer credentials
// (SO_PEERCRED), a Client with a generic typed Call (and a thin method per
// operation), and the default socket path per network namespace.
//
// What it does not do: it holds no daemon state, makes no authorization
// decision (the table says who may call what; the daemon checks it) and
// touches no BPF object. The daemon's request handling lives with the
// daemon; this package gives it ReadRequest, WriteReply and PeerCred. It
// imports only the standard library, golang.org/x/sys, internal/binding
// and internal/settings, because the light register package imports it.
//
// # Encoding
//
// Each datagram is a fixed 20-byte header followed by payload bytes:
//
//	magic "SWYD" | version u16 | op u16 | flags u16 | reserved u16 (0) |
//	total payload length u32 | payload length in this datagram u32
//
// all big-endian. Flags mark replies (0x1) and messages that continue in the
// next datagram (0x2). The payloads of a message's datagrams, concatenated,
// are one JSON object: the operation's request type, or for a reply
// {"error":{"code":...,"message":...}} or {"result":{...}}.
//
// Why this shape: SOCK_SEQPACKET keeps datagram boundaries, so no stream
// framing is needed, but one datagram must fit the sender's socket buffer
// (about 208 KiB by default). Lists of 100,000 bindings are megabytes, so a
// message may span several datagrams of at most MaxChunk (32 KiB) payload,
// each carrying the same header fields and the total length. The receiver
// checks the total against the limit of the operation before it reads on,
// grows its buffer only as data arrives, and refuses continuations that
// disagree with the first datagram, overshoot the total, or are empty; so a
// peer can neither make it allocate without bound nor spin it forever.
// JSON, decoded by the standard library, is simple to read in a debugger and
// with strace, and safe on hostile input: the decoder is memory safe, limits
// nesting, is bounded by the size caps, and is run with
// DisallowUnknownFields and a check that nothing follows the object; every
// decoded body is then validated (labels, prefixes, ports, policies). A
// binary TLV would be smaller but needs its own parser, which is exactly
// the kind of code that goes wrong on untrusted input; the one exception is
// Apply from version 2 on, whose binding lists (up to 1,048,576 bindings)
// travel packed after the JSON object (binding.ReadPacked, fuzzed), and are
// then validated like any other. A server may keep such a list packed as
// it arrived (Conn.KeepPacked, Config.TakeBindings), and answer with a
// diff it encodes as it sends it (Diff.SetBindings), so that it never
// holds a million bindings as a list; from version 3 on, a reply whose
// added bindings are all of the request's says so rather than list them
// (Diff.AddRequest). Magic and version sit
// at fixed offsets forever, so any two releases can tell each other which
// versions they speak.
//
// Limits (per operation in the table): MaxSmallMessage (64 KiB) for every request but Apply and for
// replies without lists; MaxMessage (128 MiB) for Apply requests and the
// replies of Status and Apply; MaxListMessage (1 GiB) for the streamed
// ListBindings reply; MaxDatagram (64 KiB) per
// datagram; MaxRegisterFiles (64) sockets per Register request, none on any
// other message. A server can lower the request limit per connection with
// Conn.SetRequestLimit, for example for peers that are not root.
//
// Strictness: a decoder refuses a wrong magic, a version outside
// [MinVersion, MaxVersion] (CodeUnsupported, naming the versions it speaks),
// an unknown operation (CodeUnsupported), unknown flags, a nonzero reserved
// field, a payload over the limit, a truncated datagram or message, bytes
// after the payload or after the JSON object, unknown JSON fields, a reply
// with both or neither of error and result, an unknown error code, and a
// number of file descriptors the operation does not take. Adding anything
// to the protocol therefore needs a new version (the one exception, a
// label's "engine", is explained at MinVersion). (encoding/json matches
// field names case-insensitively and lets a repeated key win; the values are
// validated all the same.)
//
// Descriptors: Recv reads with net.UnixConn.ReadMsgUnix (recvmsg with
// MSG_CMSG_CLOEXEC on Linux) into a control buffer that fits the kernel's
// SCM_MAX_FD descriptors, parsed with unix.ParseUnixRights. On MSG_CTRUNC or MSG_TRUNC,
// on descriptors that the message may not carry, or on any decoding error,
// every descriptor that did arrive is closed before Recv returns.
package control
