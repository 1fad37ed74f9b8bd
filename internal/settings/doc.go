// Package settings owns the one type of a label's settings beyond its
// bindings: who may register sockets for it (Grants) and its connection
// policy (Policy: a kind, a parsed upstream and an engine), with the one
// parser of each. The CLI, the config file, the control protocol and the
// daemon's recorded state all use these types; each form (YAML, the wire's
// JSON, the state's JSON) is read with the parsers here, so that what one
// accepts the others accept too.
//
// It does not own resolving names to ids (internal/config), putting a
// policy in force (internal/policy) or where settings are kept
// (internal/server, dispatch). It imports nothing of the BPF side, since
// the register package depends on it through the control protocol.
package settings
