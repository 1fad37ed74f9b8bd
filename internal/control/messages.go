package control

import (
	"fmt"
	"net/netip"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Protocol versions. A peer sends ProtocolVersion and accepts any version in
// [MinVersion, MaxVersion]; a reply uses the version of its request. Adding
// a field, an operation or an error code needs a new version, since decoding
// refuses what it does not know.
//
// Version 2 differs from 1 in Apply only: its request and reply carry their
// binding lists packed (see wire.go) rather than in JSON. Version 3 differs
// from 2 in Apply's reply only: when the bindings it adds are every binding
// of the request, it says so (Diff.AddRequest) rather than list them again
// (a million bindings, 12 MB packed, the first time a file is applied),
// and Client.Apply puts them back from the request it sent. One field came
// without a version: a label's "engine" (settings.Policy), in every version.
// It is left out unless a label opts in to the in-kernel engine, so peers of
// releases before it read every message as before until that opt-in is in
// use; then they refuse the message that carries it (unknown field), which
// is loud, where leaving it out for them would let an export and apply of
// theirs drop the opt-in silently. Version 4 differs from 3 in Status's
// reply only: a label's policy_kernel_bytes, the bytes of its policy that
// the kernel moved. A daemon leaves it out of its replies to requests of
// earlier versions, whose clients would refuse it. A client sends Apply
// requests as ApplyVersion, Status requests as StatusVersion and
// everything else as ProtocolVersion, so that it still speaks to a daemon
// of version 1 for everything else.
const (
	MinVersion         uint16 = 1
	MaxVersion         uint16 = 4
	ProtocolVersion    uint16 = 1
	PackedVersion      uint16 = 2
	AddRequestVersion  uint16 = 3
	KernelBytesVersion uint16 = 4
	// ApplyVersion is the version a client sends Apply requests in.
	ApplyVersion = AddRequestVersion
	// StatusVersion is the version a client sends Status requests in.
	StatusVersion = KernelBytesVersion
)

// SupportedVersion reports whether v is a protocol version this package
// speaks.
func SupportedVersion(v uint16) bool { return v >= MinVersion && v <= MaxVersion }

// MaxRegisterFiles is the most sockets one Register request may carry.
const MaxRegisterFiles = 64

// RequestBody is the typed argument of one operation: a pointer to one of
// the request types of the table (ops.go).
type RequestBody interface {
	// Validate checks the arguments without any daemon state.
	Validate() error
}

// ResponseBody is the typed result of one operation: a pointer to one of
// the response types of the table (ops.go).
type ResponseBody = any

// VersionRequest asks for the daemon's version. It doubles as a ping.
type VersionRequest struct{}

// VersionResponse is the daemon's build version and the protocol versions it
// speaks.
type VersionResponse struct {
	Version   string   `json:"version"`
	Protocols []uint16 `json:"protocols"`
}

// BindRequest adds one binding. Binding an existing identical binding
// succeeds; one that conflicts fails with CodeConflict.
type BindRequest struct {
	Binding binding.Binding `json:"binding"`
}

// BindResponse is empty.
type BindResponse struct{}

// UnbindRequest removes one binding; the label must match too.
type UnbindRequest struct {
	Binding binding.Binding `json:"binding"`
}

// UnbindResponse is empty.
type UnbindResponse struct{}

// ListBindingsRequest lists bindings, all of them or those of one label.
type ListBindingsRequest struct {
	Label string `json:"label,omitempty"`
}

// ListBindingsResponse holds the bindings, in the daemon's order.
type ListBindingsResponse struct {
	Bindings binding.List `json:"bindings"`
}

// RegisterRequest registers the sockets attached to the message (SCM_RIGHTS,
// 1 to MaxRegisterFiles of them) as destinations of Label. The daemon works
// out protocol and family from each socket.
type RegisterRequest struct {
	Label string `json:"label"`
}

// RegisterResult describes one registered socket, in the order the sockets
// were attached.
type RegisterResult struct {
	Protocol binding.Protocol `json:"protocol"`
	Family   binding.Family   `json:"family"`
	// Local is the address the socket is bound to.
	Local netip.AddrPort `json:"local"`
	// Replaced is true if the socket took the place of another live
	// socket registered for the same label, protocol and family, as the
	// dispatcher found it (dispatch.Destination.Replaced).
	Replaced bool `json:"replaced,omitempty"`
}

// RegisterResponse has one result per socket.
type RegisterResponse struct {
	Results []RegisterResult `json:"results"`
}

// UnregisterRequest removes the socket of a destination.
type UnregisterRequest struct {
	Label    string           `json:"label"`
	Protocol binding.Protocol `json:"protocol"`
	Family   binding.Family   `json:"family"`
}

// UnregisterResponse is empty.
type UnregisterResponse struct{}

// StatusRequest asks for the state of every label, or of one.
type StatusRequest struct {
	Label string `json:"label,omitempty"`
}

// StatusResponse is the daemon's view of its namespace.
type StatusResponse struct {
	Version string        `json:"version"`
	NetNS   uint64        `json:"netns"`
	Labels  []LabelStatus `json:"labels"`
}

// LabelStatus is the state of one label.
type LabelStatus struct {
	Label string `json:"label"`
	// Policy is the label's policy setting ("policy", "upstream",
	// "engine" in JSON).
	settings.Policy
	Bindings int            `json:"bindings"`
	Sockets  []SocketStatus `json:"sockets,omitempty"`
	// Lookups that chose this label; of those, the ones delivered, the
	// ones refused for want of a socket (rule 5 of the design), and the
	// ones the kernel would not assign to the registered socket.
	Lookups   uint64 `json:"lookups"`
	Hits      uint64 `json:"hits"`
	Missing   uint64 `json:"missing"`
	BadSocket uint64 `json:"bad_socket"`
	// PolicyState says what of the policy is in force, or why not.
	PolicyState string `json:"policy_state,omitempty"`
	// Bytes and connections the policy's fast path took on.
	PolicyBytes       uint64 `json:"policy_bytes,omitempty"`
	PolicyConnections uint64 `json:"policy_connections,omitempty"`
	// Of PolicyBytes, those the kernel moved (bypass: all; splice: the
	// in-kernel engine's). Since KernelBytesVersion.
	PolicyKernelBytes uint64 `json:"policy_kernel_bytes,omitempty"`
}

// SocketStatus is one registered destination of a label.
type SocketStatus struct {
	Protocol binding.Protocol `json:"protocol"`
	Family   binding.Family   `json:"family"`
	Local    netip.AddrPort   `json:"local"`
	Cookie   uint64           `json:"cookie"`
}

// SetPolicyRequest sets a label's connection policy.
type SetPolicyRequest struct {
	Label string `json:"label"`
	settings.Policy
}

// SetPolicyResponse is empty.
type SetPolicyResponse struct{}

// Config is a whole desired state: what `switchyard apply` sends.
type Config struct {
	Bindings binding.List     `json:"bindings"`
	Labels   []settings.Named `json:"labels,omitempty"`
	// packed holds the bindings instead of Bindings in a request
	// received with Conn.KeepPacked; they were validated as it arrived.
	packed *binding.Packed
}

// NumBindings is the number of bindings of c.
func (c *Config) NumBindings() int {
	if c.packed != nil {
		return c.packed.Len()
	}
	return len(c.Bindings)
}

// TakeBindings returns the number of bindings of c and a function that
// yields them as AllBindings does, and leaves c without them: once the
// caller drops the function, their memory can go (at a million, the 12 MB
// of a request received with Conn.KeepPacked).
func (c *Config) TakeBindings() (n int, all func(yield func(*binding.Binding) bool)) {
	n = c.NumBindings()
	if p := c.packed; p != nil {
		c.packed = nil
		return n, p.All
	}
	l := c.Bindings
	c.Bindings = nil
	return n, l.All
}

// AllBindings yields the bindings of c in order, from Bindings or, in a
// request received with Conn.KeepPacked, from their packed form; then the
// *Binding it yields is reused.
func (c *Config) AllBindings(yield func(*binding.Binding) bool) {
	if c.packed != nil {
		c.packed.All(yield)
		return
	}
	c.Bindings.All(yield)
}

// ApplyRequest makes the daemon's bindings and label settings equal to
// Config. With DryRun the daemon only computes the diff.
type ApplyRequest struct {
	Config Config `json:"config"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// ApplyResponse reports what changed, or would change with DryRun.
type ApplyResponse struct {
	Applied bool `json:"applied"`
	Diff    Diff `json:"diff"`
}

// Diff is the difference between the daemon's state and a Config. A binding
// whose label changes is removed and added.
type Diff struct {
	AddBindings    binding.List  `json:"add_bindings,omitempty"`
	RemoveBindings binding.List  `json:"remove_bindings,omitempty"`
	Labels         []LabelChange `json:"labels,omitempty"`
	// AddRequest, set by the daemon, says that the bindings added are
	// every binding of the request, which had no repeats. A reply of
	// AddRequestVersion or later then leaves AddBindings out, and
	// Client.Apply puts them back from its request, sorted with
	// binding.Compare, and clears AddRequest; a reply of an earlier
	// version lists them as before.
	AddRequest bool `json:"add_request,omitempty"`
	// add and remove, when set (SetBindings), stand for AddBindings and
	// RemoveBindings when the reply is encoded.
	add, remove *bindingSeq
}

// bindingSeq is a list of bindings that a sender encodes without holding
// it: n bindings that all yields, the same each time it is called.
type bindingSeq struct {
	n   int
	all func(yield func(*binding.Binding) bool)
}

// SetBindings makes the reply list the nadd bindings that add yields as
// AddBindings and the nremove that remove yields as RemoveBindings, encoded
// as they are sent rather than held as lists (a million bindings take 64
// MB as a List). Each function may be called several times and must
// yield the same bindings each time, in order; the *Binding may be
// reused.
func (d *Diff) SetBindings(nadd int, add func(yield func(*binding.Binding) bool), nremove int, remove func(yield func(*binding.Binding) bool)) {
	d.AddBindings, d.RemoveBindings = nil, nil
	d.add, d.remove = &bindingSeq{nadd, add}, &bindingSeq{nremove, remove}
}

// Empty reports whether d changes nothing.
func (d Diff) Empty() bool {
	return len(d.AddBindings) == 0 && len(d.RemoveBindings) == 0 && len(d.Labels) == 0 &&
		(d.add == nil || d.add.n == 0) && (d.remove == nil || d.remove.n == 0)
}

// LabelChange is a change of one label's settings. Old is nil for a label
// that is new, New is nil for one that goes away.
type LabelChange struct {
	Label string          `json:"label"`
	Old   *settings.Named `json:"old,omitempty"`
	New   *settings.Named `json:"new,omitempty"`
}

// Validate implements RequestBody.
func (*VersionRequest) Validate() error { return nil }

// Validate implements RequestBody.
func (r *BindRequest) Validate() error { return r.Binding.Validate() }

// Validate implements RequestBody.
func (r *UnbindRequest) Validate() error { return r.Binding.Validate() }

// Validate implements RequestBody.
func (r *ListBindingsRequest) Validate() error { return optionalLabel(r.Label) }

// Validate implements RequestBody.
func (r *RegisterRequest) Validate() error { return binding.ValidateLabel(r.Label) }

// Validate implements RequestBody.
func (r *UnregisterRequest) Validate() error {
	if err := binding.ValidateLabel(r.Label); err != nil {
		return err
	}
	if r.Protocol != binding.TCP && r.Protocol != binding.UDP {
		return fmt.Errorf("unregister: %w: protocol must be tcp or udp", binding.ErrInvalid)
	}
	if r.Family != binding.IPv4 && r.Family != binding.IPv6 {
		return fmt.Errorf("unregister: %w: family must be ipv4 or ipv6", binding.ErrInvalid)
	}
	return nil
}

// Validate implements RequestBody.
func (r *StatusRequest) Validate() error { return optionalLabel(r.Label) }

// Validate implements RequestBody.
func (r *SetPolicyRequest) Validate() error {
	if err := binding.ValidateLabel(r.Label); err != nil {
		return err
	}
	return r.Policy.Validate()
}

// Validate implements RequestBody. It checks every binding and label
// setting on its own; conflicts between bindings are the daemon's to find.
func (r *ApplyRequest) Validate() error { return r.Config.Validate() }

// Validate checks each binding and each label's settings, and that no label
// has settings twice.
func (c *Config) Validate() error {
	for i := range c.Bindings {
		if err := c.Bindings[i].Validate(); err != nil {
			return fmt.Errorf("binding %d: %w", i+1, err)
		}
	}
	seen := make(map[string]bool, len(c.Labels))
	for i := range c.Labels {
		s := &c.Labels[i]
		if err := binding.ValidateLabel(s.Name); err != nil {
			return err
		}
		if err := s.Validate(); err != nil {
			return fmt.Errorf("label %q: %w", s.Name, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("label %q: %w: settings given twice; merge them", s.Name, binding.ErrInvalid)
		}
		seen[s.Name] = true
	}
	return nil
}

func optionalLabel(l string) error {
	if l == "" {
		return nil
	}
	return binding.ValidateLabel(l)
}

// Message is a *Request or a *Reply.
type Message interface {
	isMessage()
}

// Request is one request: the protocol version it speaks and its body, which
// also gives the operation.
type Request struct {
	Version uint16
	Body    RequestBody
}

// NewRequest returns a request of the current protocol version:
// ApplyVersion for a body with packed lists (Apply), else ProtocolVersion.
func NewRequest(body RequestBody) *Request {
	if _, ok := body.(packedBody); ok {
		return &Request{Version: ApplyVersion, Body: body}
	}
	return &Request{Version: ProtocolVersion, Body: body}
}

// Op is the request's operation.
func (r *Request) Op() Op { return OpOf(r.Body) }

// Reply answers one request: either Err is set, or Body holds the result of
// the request's operation.
type Reply struct {
	Version uint16
	Op      Op
	Err     *Error
	Body    ResponseBody
}

// NewReply returns a successful reply to req.
func NewReply(req *Request, body ResponseBody) *Reply {
	return &Reply{Version: req.Version, Op: OpOf(body), Body: body}
}

// NewErrorReply returns a failed reply for op, with the code AsError picks
// for err. A reply to a request that could not be decoded may use op 0 (and
// version ProtocolVersion); the client still sees the error.
func NewErrorReply(version uint16, op Op, err error) *Reply {
	if !SupportedVersion(version) {
		version = ProtocolVersion
	}
	e := AsError(err)
	if e == nil {
		e = Errorf(CodeInternal, "unknown error")
	}
	return &Reply{Version: version, Op: op, Err: e}
}

func (*Request) isMessage() {}
func (*Reply) isMessage()   {}
