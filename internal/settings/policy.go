package settings

import (
	"fmt"
	"strconv"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// ErrInvalid matches every error of this package's parsers and checks; it
// is binding.ErrInvalid, so that callers branch on one sentinel for bad
// input.
var ErrInvalid = binding.ErrInvalid

// Kind is a label's connection policy. The zero value is None. Its numbers
// are not part of any format: every form spells the kind out.
type Kind uint8

const (
	None   Kind = iota // no sockmap program (the default)
	Bypass             // SK_MSG redirect between local sockets
	Splice             // the daemon accepts and splices to an upstream
)

func (k Kind) String() string {
	switch k {
	case None:
		return "none"
	case Bypass:
		return "bypass"
	case Splice:
		return "splice"
	}
	return "policy(" + strconv.Itoa(int(k)) + ")"
}

// ParseKind accepts "none", "bypass" or "splice".
func ParseKind(s string) (Kind, error) {
	switch s {
	case "none":
		return None, nil
	case "bypass":
		return Bypass, nil
	case "splice":
		return Splice, nil
	}
	return 0, fmt.Errorf("policy %s: %w: use none, bypass or splice", quote(s), ErrInvalid)
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) {
	if k > Splice {
		return nil, fmt.Errorf("policy %d: %w: use none, bypass or splice", uint8(k), ErrInvalid)
	}
	return []byte(k.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Engine is what moves a splice label's bytes. The zero value, Userspace,
// is the daemon's splice proxy; Kernel is the opt-in in-kernel SK_SKB
// engine.
type Engine string

const (
	Userspace Engine = ""
	Kernel    Engine = "kernel"
)

// ParseEngine accepts "kernel", or "" or "userspace" for the default.
func ParseEngine(s string) (Engine, error) {
	switch s {
	case "", "userspace":
		return Userspace, nil
	case "kernel":
		return Kernel, nil
	}
	return "", fmt.Errorf("engine %s: %w: use kernel, or leave it out for the userspace splice", quote(s), ErrInvalid)
}

func (e Engine) String() string {
	if e == Userspace {
		return "userspace"
	}
	return string(e)
}

// MarshalText implements encoding.TextMarshaler.
func (e Engine) MarshalText() ([]byte, error) {
	if _, err := ParseEngine(string(e)); err != nil {
		return nil, err
	}
	return []byte(e), nil
}

// UnmarshalText implements encoding.TextUnmarshaler. The empty string is
// not accepted: a form that has no engine leaves the field out.
func (e *Engine) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("engine \"\": %w: use kernel, or leave it out for the userspace splice", ErrInvalid)
	}
	v, err := ParseEngine(string(b))
	if err != nil {
		return err
	}
	*e = v
	return nil
}

// Policy is a label's connection policy with its arguments. Its JSON form
// is flat ("policy", "upstream", "engine"), so that a struct that embeds it
// reads as the control protocol and the state file always spelled it.
type Policy struct {
	Kind Kind `json:"policy"`
	// Upstream is where Splice connects to; zero for the other kinds.
	Upstream Upstream `json:"upstream,omitzero"`
	// Engine is what splices; Userspace for the other kinds.
	Engine Engine `json:"engine,omitempty"`
}

// ParsePolicy reads a policy from its three words as users write them
// (upstream and engine may be empty), and checks it (see Validate).
func ParsePolicy(kind, upstream, engine string) (Policy, error) {
	var p Policy
	var err error
	if p.Kind, err = ParseKind(kind); err != nil {
		return Policy{}, err
	}
	if upstream != "" {
		if p.Upstream, err = ParseUpstream(upstream); err != nil {
			return Policy{}, err
		}
	}
	if p.Engine, err = ParseEngine(engine); err != nil {
		return Policy{}, err
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// Field names the part of a policy that Validate blames.
const (
	FieldPolicy   = "policy"
	FieldUpstream = "upstream"
	FieldEngine   = "engine"
)

// Validate checks that the parts of p fit together: splice needs an
// upstream, the other kinds take none, and only splice has an engine.
func (p Policy) Validate() error {
	_, err := p.Check()
	return err
}

// Check is Validate that also names the field to blame (one of the
// Field... constants), for forms that point at a line.
func (p Policy) Check() (field string, err error) {
	switch {
	case p.Kind > Splice:
		return FieldPolicy, fmt.Errorf("policy %d: %w: use none, bypass or splice", uint8(p.Kind), ErrInvalid)
	case p.Kind == Splice && p.Upstream.IsZero():
		return FieldPolicy, invalidf("policy splice needs an upstream; give host:port, or host:same to keep the port the client dialled")
	case p.Kind != Splice && !p.Upstream.IsZero():
		return FieldUpstream, invalidf("upstream %s: policy %s takes no upstream; only splice does: set policy: splice or remove the upstream", p.Upstream, p.Kind)
	case p.Kind != Splice && p.Engine != Userspace:
		return FieldEngine, invalidf("engine %s: policy %s has no engine; only splice does", p.Engine, p.Kind)
	}
	if !p.Upstream.IsZero() {
		if err := checkHost(p.Upstream.Host); err != nil {
			return FieldUpstream, fmt.Errorf("upstream %s: %w", quote(p.Upstream.String()), err)
		}
	}
	if _, err := ParseEngine(string(p.Engine)); err != nil {
		return FieldEngine, err
	}
	return "", nil
}

// String describes p as the CLI takes it: "none", "bypass", "splice
// 10.0.0.5:same" or "splice 10.0.0.5:same engine kernel".
func (p Policy) String() string {
	s := p.Kind.String()
	if !p.Upstream.IsZero() {
		s += " " + p.Upstream.String()
	}
	if p.Engine != Userspace {
		s += " engine " + string(p.Engine)
	}
	return s
}

// invalid is an error that matches ErrInvalid and reads as its text alone.
type invalid struct{ msg string }

func (e *invalid) Error() string { return e.msg }
func (e *invalid) Unwrap() error { return ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalid{fmt.Sprintf(format, args...)}
}

// quote quotes s for an error message, shortened if it is long.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}
