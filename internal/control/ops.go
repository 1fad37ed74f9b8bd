package control

import (
	"fmt"
	"reflect"
)

// Op is an operation of the control protocol. The numbers are part of the
// protocol.
type Op uint16

const (
	OpVersion      Op = 1 // daemon version and supported protocol versions; also a ping
	OpBind         Op = 2
	OpUnbind       Op = 3
	OpListBindings Op = 4
	OpRegister     Op = 5 // carries one or more sockets by SCM_RIGHTS
	OpUnregister   Op = 6
	OpStatus       Op = 7
	OpSetPolicy    Op = 8
	OpApply        Op = 9
)

// The control protocol, described once. Each row is one operation: its
// number and name, its request and reply types, the largest payload of
// each, how many file descriptors a request carries, and who may call it.
// Encoding, decoding, the connection's checks and the daemon's access
// check all read this table; adding an operation is a row here, its two
// types, a case in the daemon's handler and the CLI command that sends it.
var operations = []OpSpec{
	spec[VersionRequest, VersionResponse](OpVersion, "version", MaxSmallMessage, MaxSmallMessage, 0, 0, Anyone),
	spec[BindRequest, BindResponse](OpBind, "bind", MaxSmallMessage, MaxSmallMessage, 0, 0, Root),
	spec[UnbindRequest, UnbindResponse](OpUnbind, "unbind", MaxSmallMessage, MaxSmallMessage, 0, 0, Root),
	spec[ListBindingsRequest, ListBindingsResponse](OpListBindings, "list-bindings", MaxSmallMessage, MaxListMessage, 0, 0, Anyone),
	spec[RegisterRequest, RegisterResponse](OpRegister, "register", MaxSmallMessage, MaxSmallMessage, 1, MaxRegisterFiles, Granted),
	spec[UnregisterRequest, UnregisterResponse](OpUnregister, "unregister", MaxSmallMessage, MaxSmallMessage, 0, 0, Granted),
	spec[StatusRequest, StatusResponse](OpStatus, "status", MaxSmallMessage, MaxMessage, 0, 0, Anyone),
	spec[SetPolicyRequest, SetPolicyResponse](OpSetPolicy, "set-policy", MaxSmallMessage, MaxSmallMessage, 0, 0, Root),
	spec[ApplyRequest, ApplyResponse](OpApply, "apply", MaxMessage, MaxMessage, 0, 0, Root),
}

// Access says who may call an operation. The daemon enforces it; the
// protocol only carries it.
type Access uint8

const (
	// Anyone who can connect to the control socket, within the daemon's
	// limits on connections and reply memory.
	Anyone Access = iota
	// Granted: root, or a user or group the label's grants name. The
	// request names the label (GrantedLabel).
	Granted
	// Root only (uid 0).
	Root
)

func (a Access) String() string {
	switch a {
	case Anyone:
		return "anyone"
	case Granted:
		return "root or granted"
	case Root:
		return "root"
	}
	return fmt.Sprintf("access(%d)", uint8(a))
}

// GrantedLabel is implemented by the requests of Granted operations: the
// label whose grants decide.
type GrantedLabel interface {
	GrantedLabel() string
}

// OpSpec is one row of the protocol's table.
type OpSpec struct {
	Op   Op
	Name string
	// MaxRequest and MaxReply cap the total payload of each message.
	MaxRequest, MaxReply int
	// MinFiles and MaxFiles bound the descriptors a request carries
	// (SCM_RIGHTS, on its first datagram). Replies carry none.
	MinFiles, MaxFiles int
	Access             Access

	request, response reflect.Type // the body types, not pointers
}

// spec makes a row for request type Req and reply type Resp.
func spec[Req, Resp any](op Op, name string, maxReq, maxRep, minFiles, maxFiles int, access Access) OpSpec {
	s := OpSpec{Op: op, Name: name, MaxRequest: maxReq, MaxReply: maxRep, MinFiles: minFiles, MaxFiles: maxFiles, Access: access,
		request: reflect.TypeFor[Req](), response: reflect.TypeFor[Resp]()}
	if _, ok := any(new(Req)).(RequestBody); !ok {
		panic(fmt.Sprintf("control: %s: *%s is not a RequestBody", name, s.request))
	}
	if _, ok := any(new(Req)).(GrantedLabel); access == Granted && !ok {
		panic(fmt.Sprintf("control: %s: a Granted operation's *%s must name its label (GrantedLabel)", name, s.request))
	}
	return s
}

var (
	specByOp     = map[Op]*OpSpec{}
	opByRequest  = map[reflect.Type]Op{}
	opByResponse = map[reflect.Type]Op{}
)

func init() {
	for i := range operations {
		s := &operations[i]
		if specByOp[s.Op] != nil || s.Op == 0 {
			panic(fmt.Sprintf("control: operation %d listed twice or zero", s.Op))
		}
		specByOp[s.Op] = s
		opByRequest[s.request] = s.Op
		opByResponse[s.response] = s.Op
	}
}

// Spec returns the table's row for op.
func Spec(op Op) (OpSpec, bool) {
	s := specByOp[op]
	if s == nil {
		return OpSpec{}, false
	}
	return *s, true
}

// MaxRequest is the largest request payload of the operations that a peer
// may call, root or not: a server lowers a connection's limit to it
// (Conn.SetRequestLimit) once it knows the peer.
func MaxRequest(root bool) int {
	n := 0
	for _, s := range operations {
		if root || s.Access != Root {
			n = max(n, s.MaxRequest)
		}
	}
	return n
}

// Operations returns the table, in operation order.
func Operations() []OpSpec { return append([]OpSpec(nil), operations...) }

// OpOf is the operation of a request or reply body (a pointer to one of
// the table's types), or 0.
func OpOf(body any) Op {
	t := reflect.TypeOf(body)
	if t == nil || t.Kind() != reflect.Pointer {
		return 0
	}
	if op, ok := opByRequest[t.Elem()]; ok {
		return op
	}
	return opByResponse[t.Elem()]
}

func (o Op) String() string {
	if s := specByOp[o]; s != nil {
		return s.Name
	}
	return fmt.Sprintf("op(%d)", uint16(o))
}

// Known reports whether o is an operation of this protocol version.
func (o Op) Known() bool { return specByOp[o] != nil }

// fdRange is how many file descriptors a request of the op must carry.
func (o Op) fdRange() (lo, hi int) {
	if s := specByOp[o]; s != nil {
		return s.MinFiles, s.MaxFiles
	}
	return 0, 0
}

// maxPayload is the largest total payload of a message.
func maxPayload(op Op, reply bool) int {
	s := specByOp[op]
	switch {
	case s == nil:
		return MaxSmallMessage // an error reply without an operation
	case reply:
		return s.MaxReply
	}
	return s.MaxRequest
}

// newRequestBody returns a zero body for op, or nil for an unknown op.
func newRequestBody(op Op) RequestBody {
	s := specByOp[op]
	if s == nil {
		return nil
	}
	return reflect.New(s.request).Interface().(RequestBody)
}

// newResponseBody returns a zero body for op, or nil for an unknown op.
func newResponseBody(op Op) ResponseBody {
	s := specByOp[op]
	if s == nil {
		return nil
	}
	return reflect.New(s.response).Interface()
}

// GrantedLabel implements GrantedLabel.
func (r *RegisterRequest) GrantedLabel() string { return r.Label }

// GrantedLabel implements GrantedLabel.
func (r *UnregisterRequest) GrantedLabel() string { return r.Label }
