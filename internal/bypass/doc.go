// Package bypass owns the bypass policy's kernel side: bpf/bypass.c's
// sockops program, which puts both ends of a local TCP connection to a
// bypass label into a sockhash (sy_p_bypass), its SK_MSG program, which
// moves each message straight into the peer's receive queue, the fentry
// programs that tell how receivers read, and the maps (sy_p_*) and links
// they pin in the dispatcher's state directory, so that bypass outlives
// the daemon and a new Open adopts it, with the layouts of earlier builds
// migrated.
//
// A message whose peer is not in the map (remote, or not yet known) takes
// the normal path, and no later byte may overtake it: with the fentry
// guard, redirecting resumes only once the peer has read all that went the
// normal way; with Options.TrustReaders, that connection's end takes the
// normal path for good.
//
// Which label a connection belongs to comes from bpf/lookup.h, the lookup
// the sk_lookup program makes. This package does not decide which labels
// have bypass, nor when its state is created or removed (package policy
// does), and owns no socket, binding or label id (package dispatch does).
package bypass
