package control

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// The wire format. Every datagram starts with a fixed header, big-endian:
//
//	offset size field
//	0      4    magic "SWYD"
//	4      2    protocol version
//	6      2    op
//	8      2    flags: 0x1 reply, 0x2 more datagrams follow
//	10     2    reserved, zero
//	12     4    total payload length of the message
//	16     4    payload length in this datagram (the rest of the datagram)
//
// A message is one or more datagrams whose payloads, concatenated, are one
// JSON object (an Apply message of version 2 adds packed lists, see
// packedBody). Magic and version stay where they are in every future
// version, so that any peer can say which versions it speaks.
const (
	headerLen = 20

	flagReply = 0x1
	flagMore  = 0x2

	// MaxChunk is the largest payload this package puts in one datagram. A
	// SOCK_SEQPACKET datagram must fit the sender's socket buffer (208 KiB
	// by default), so 32 KiB leaves a wide margin.
	MaxChunk = 32 << 10
	// MaxDatagram is the largest datagram accepted. Anything larger is
	// refused, so a receive buffer of this size never silently truncates.
	MaxDatagram = 64 << 10

	// MaxSmallMessage caps the payload of every request but Apply, and of
	// the replies that carry no list.
	MaxSmallMessage = 64 << 10
	// MaxMessage caps the payload of an Apply request and of the replies
	// that carry lists (Status, Apply). 128 MiB holds the 1,048,576
	// bindings a config may have at about 120 bytes each.
	MaxMessage = 128 << 20
	// MaxListMessage caps the payload of a ListBindings reply. The daemon
	// streams it (Conn.WriteBindings): it holds one datagram of the reply
	// at a time, so the cap only bounds what a client accepts. 1,048,576
	// bindings with 255-byte labels and IPv6 ranges are about 400 MiB.
	MaxListMessage = 1 << 30
)

var magic = [4]byte{'S', 'W', 'Y', 'D'}

type header struct {
	version uint16
	op      Op
	flags   uint16
	total   uint32
	length  uint32
}

func (h *header) put(b []byte) {
	copy(b[0:4], magic[:])
	binary.BigEndian.PutUint16(b[4:], h.version)
	binary.BigEndian.PutUint16(b[6:], uint16(h.op))
	binary.BigEndian.PutUint16(b[8:], h.flags)
	binary.BigEndian.PutUint16(b[10:], 0)
	binary.BigEndian.PutUint32(b[12:], h.total)
	binary.BigEndian.PutUint32(b[16:], h.length)
}

func versionError(v uint16) *Error {
	return Errorf(CodeUnsupported,
		"control protocol version %d is not supported: this side speaks versions %d to %d; upgrade switchyard and switchyardd to the same release",
		v, MinVersion, MaxVersion)
}

// parseHeader checks the parts of a datagram that do not depend on the ones
// before it.
func parseHeader(d []byte) (header, error) {
	var h header
	if n := min(len(d), len(magic)); !bytes.Equal(d[:n], magic[:n]) {
		return h, invalidf("control message: bad magic %q: the peer does not speak the switchyard control protocol; check the --control path", d[:n])
	}
	if len(d) < headerLen {
		return h, invalidf("control message: truncated: %d bytes is shorter than the %d byte header", len(d), headerLen)
	}
	h.version = binary.BigEndian.Uint16(d[4:])
	if !SupportedVersion(h.version) {
		return h, versionError(h.version)
	}
	h.op = Op(binary.BigEndian.Uint16(d[6:]))
	h.flags = binary.BigEndian.Uint16(d[8:])
	if h.flags&^(flagReply|flagMore) != 0 {
		return h, invalidf("control message: unknown flags %#x", h.flags)
	}
	if r := binary.BigEndian.Uint16(d[10:]); r != 0 {
		return h, invalidf("control message: reserved header field is %#x, not zero", r)
	}
	h.total = binary.BigEndian.Uint32(d[12:])
	h.length = binary.BigEndian.Uint32(d[16:])
	switch n := uint64(len(d) - headerLen); {
	case uint64(h.length) > n:
		return h, invalidf("control message: truncated: header announces %d payload bytes, datagram has %d", h.length, n)
	case uint64(h.length) < n:
		return h, invalidf("control message: %d bytes of trailing garbage after the payload", n-uint64(h.length))
	}
	return h, nil
}

// assembler collects the datagrams of one message.
type assembler struct {
	first   header
	started bool
	buf     []byte
	// limit, if positive and lower than the protocol's limit, caps the
	// payload of requests.
	limit int
	// keepPacked: see Conn.KeepPacked.
	keepPacked bool
}

// add takes the next datagram of a message. It reports done once the
// message is complete; no datagram may be added after that.
func (a *assembler) add(d []byte) (done bool, err error) {
	h, err := parseHeader(d)
	if err != nil {
		return false, err
	}
	if !a.started {
		reply := h.flags&flagReply != 0
		if !h.op.Known() && !(reply && h.op == 0) {
			return false, Errorf(CodeUnsupported, "control message: operation %d is not supported by this side; upgrade switchyard and switchyardd to the same release", uint16(h.op))
		}
		max := maxPayload(h.op, reply)
		// The limit holds for a reply too: a limited peer (a server's
		// non-root client) that flags its message a reply, which a
		// server refuses once it has it all, must not get a reply's
		// room (up to MaxListMessage) in the meantime.
		if a.limit > 0 && a.limit < max {
			if uint64(h.total) > uint64(a.limit) {
				return false, invalidf("control message: %s payload of %d bytes is over the limit of %d bytes this connection has (only root may send larger requests)", h.op, h.total, a.limit)
			}
		}
		if uint64(h.total) > uint64(max) {
			return false, invalidf("control message: %s payload of %d bytes is over the limit of %d bytes", h.op, h.total, max)
		}
		a.first, a.started = h, true
		// Grow as data arrives: a peer's claim alone must not make us
		// allocate the whole limit.
		a.buf = make([]byte, 0, min(int(h.total), 256<<10))
	} else if h.version != a.first.version || h.op != a.first.op ||
		h.flags&flagReply != a.first.flags&flagReply || h.total != a.first.total {
		return false, invalidf("control message: continuation datagram does not match the first one of its message")
	}
	if uint64(len(a.buf))+uint64(h.length) > uint64(a.first.total) {
		return false, invalidf("control message: datagrams carry more than the announced %d payload bytes", a.first.total)
	}
	if p := d[headerLen:]; len(a.buf)+len(p) > cap(a.buf) {
		// Double, up to the total: append grows a large slice by a
		// quarter at a time, which left five times a message's size
		// as garbage (60 MB for a million bindings' 12 MB).
		buf := make([]byte, len(a.buf), min(max(2*cap(a.buf), len(a.buf)+len(p)), int(a.first.total)))
		copy(buf, a.buf)
		a.buf = buf
	}
	a.buf = append(a.buf, d[headerLen:]...)
	more := h.flags&flagMore != 0
	complete := len(a.buf) == int(a.first.total)
	switch {
	case more && complete:
		return false, invalidf("control message: more datagrams announced after the whole payload")
	case more && h.length == 0:
		return false, invalidf("control message: empty continuation datagram")
	case !more && !complete:
		return false, invalidf("control message: truncated: payload ends after %d of %d bytes", len(a.buf), a.first.total)
	}
	return !more, nil
}

func (a *assembler) isReply() bool { return a.first.flags&flagReply != 0 }

// decode turns the complete message into a *Request or *Reply. nfds is the
// number of file descriptors that came with it.
func (a *assembler) decode(nfds int) (Message, error) {
	if a.isReply() {
		if nfds != 0 {
			return nil, invalidf("control message: %s reply carries %d file descriptors; replies carry none", a.first.op, nfds)
		}
		return decodeReply(a.first.version, a.first.op, a.buf)
	}
	return decodeRequest(a.first.version, a.first.op, a.buf, nfds, a.keepPacked)
}

// decodeRequest decodes a request; keep says to keep binding lists packed
// (Conn.KeepPacked).
func decodeRequest(version uint16, op Op, payload []byte, nfds int, keep bool) (*Request, error) {
	if lo, hi := op.fdRange(); nfds < lo || nfds > hi {
		if hi == 0 {
			return nil, invalidf("control message: %s request carries %d file descriptors; it takes none", op, nfds)
		}
		return nil, invalidf("control message: %s request carries %d file descriptors; it takes %d to %d", op, nfds, lo, hi)
	}
	body := newRequestBody(op)
	if err := decodePayload(version, op, payload, body, keep); err != nil {
		return nil, invalidf("control message: %s request: %v", op, err)
	}
	if err := body.Validate(); err != nil {
		return nil, invalidf("control message: %s request: %v", op, err)
	}
	return &Request{Version: version, Body: body}, nil
}

// wireReply is a reply's payload as it is sent: exactly one of the two
// fields is set.
type wireReply struct {
	Error  *Error       `json:"error,omitempty"`
	Result ResponseBody `json:"result,omitempty"`
}

// replyIn is a reply's payload as it is received. The slots record which
// keys were present, so that "both" and "neither" are refused.
type replyIn struct {
	Error  errorSlot  `json:"error"`
	Result resultSlot `json:"result"`
}

type errorSlot struct {
	err  *Error
	seen bool
}

func (s *errorSlot) UnmarshalJSON(b []byte) error {
	s.seen = true
	s.err = new(Error)
	return decodeJSON(b, s.err)
}

type resultSlot struct {
	body ResponseBody // nil: no result expected (op 0)
	seen bool
}

func (s *resultSlot) UnmarshalJSON(b []byte) error {
	s.seen = true
	if s.body == nil {
		return errors.New("a reply without an operation has no result")
	}
	return decodeJSON(b, s.body)
}

func decodeReply(version uint16, op Op, payload []byte) (*Reply, error) {
	var w replyIn
	if op != 0 {
		w.Result.body = newResponseBody(op)
	}
	if err := decodePayload(version, op, payload, &w, false); err != nil {
		return nil, invalidf("control message: %s reply: %v", op, err)
	}
	switch {
	case w.Error.seen && w.Result.seen:
		return nil, invalidf("control message: %s reply has both an error and a result", op)
	case w.Error.seen:
		if !w.Error.err.Code.Valid() {
			return nil, invalidf("control message: %s reply: unknown error code %q", op, trunc(string(w.Error.err.Code)))
		}
		return &Reply{Version: version, Op: op, Err: w.Error.err}, nil
	case w.Result.seen:
		if ar, ok := w.Result.body.(*ApplyResponse); ok && ar.Diff.AddRequest {
			if version < AddRequestVersion {
				return nil, invalidf("control message: %s reply: add_request is not in version %d", op, version)
			}
			if ar.Diff.AddBindings != nil {
				return nil, invalidf("control message: %s reply has both add_request and added bindings", op)
			}
		}
		return &Reply{Version: version, Op: op, Body: w.Result.body}, nil
	case op == 0:
		return nil, invalidf("control message: reply without an operation must carry an error")
	}
	return nil, invalidf("control message: %s reply has neither an error nor a result", op)
}

// decodeJSON decodes exactly one JSON object into v, refusing unknown
// fields and anything after the object.
func decodeJSON(b []byte, v any) error {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	if i == len(b) || b[i] != '{' {
		return errors.New("payload is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// From PackedVersion on, the payload of an Apply message is framed
// differently: the length of its JSON object (4 bytes, big-endian), the
// object with the body's binding lists left out (null or absent), then
// each list in binding.AppendPacked's form, in the order packedLists gives.
// An error reply has no lists. A million bindings take about 12 MB so,
// against 80 MB of JSON, and decode many times faster.

// packedBody is a body whose binding lists travel packed.
type packedBody interface {
	packedLists() []*binding.List
}

func (r *ApplyRequest) packedLists() []*binding.List { return []*binding.List{&r.Config.Bindings} }
func (r *ApplyResponse) packedLists() []*binding.List {
	return []*binding.List{&r.Diff.AddBindings, &r.Diff.RemoveBindings}
}

// seqBody is a body whose binding lists may be given as sequences
// (Diff.SetBindings), in the order of packedLists; nil where not.
type seqBody interface {
	seqs() []*bindingSeq
}

func (r *ApplyResponse) seqs() []*bindingSeq { return []*bindingSeq{r.Diff.add, r.Diff.remove} }

func packedOp(version uint16, op Op) bool { return version >= PackedVersion && op == OpApply }

// encodePayload encodes v, whose body (nil for none) may have packed lists.
func encodePayload(version uint16, op Op, v, body any) ([]byte, error) {
	if ar, ok := body.(*ApplyResponse); ok && ar.Diff.AddRequest {
		saved := ar.Diff
		defer func() { ar.Diff = saved }()
		if version < AddRequestVersion {
			// A client before it needs the list.
			ar.Diff.AddRequest = false
		} else {
			ar.Diff.AddBindings, ar.Diff.add = nil, nil
		}
	}
	if !packedOp(version, op) {
		if sb, ok := body.(seqBody); ok {
			// JSON (a client of protocol version 1) needs the lists.
			lists := body.(packedBody).packedLists()
			for i, sq := range sb.seqs() {
				if sq == nil || sq.n == 0 {
					continue
				}
				saved := *lists[i]
				l := make(binding.List, 0, sq.n)
				for b := range sq.all {
					l = append(l, *b)
				}
				*lists[i] = l
				defer func() { *lists[i] = saved }()
			}
		}
		return json.Marshal(v)
	}
	var lists []*binding.List
	var seqs []*bindingSeq
	if pb, ok := body.(packedBody); ok {
		lists = pb.packedLists()
	}
	if sb, ok := body.(seqBody); ok {
		seqs = sb.seqs()
	}
	saved := make([]binding.List, len(lists))
	for i, l := range lists {
		saved[i], *l = *l, nil
	}
	j, err := json.Marshal(v)
	for i, l := range lists {
		*l = saved[i]
	}
	if err != nil {
		return nil, err
	}
	if uint64(len(j)) > math.MaxUint32 {
		return nil, errors.New("JSON part too long")
	}
	out := make([]byte, 4, 4+len(j)+64)
	binary.BigEndian.PutUint32(out, uint32(len(j)))
	out = append(out, j...)
	for i, l := range saved {
		if i < len(seqs) && seqs[i] != nil {
			out = binding.AppendPackedSeq(out, seqs[i].n, seqs[i].all)
			continue
		}
		out = binding.AppendPacked(out, l)
	}
	return out, nil
}

// decodePayload decodes a payload into v, a body or a *replyIn; keep
// keeps the binding list of a request packed (Conn.KeepPacked).
func decodePayload(version uint16, op Op, payload []byte, v any, keep bool) error {
	if !packedOp(version, op) {
		return decodeJSON(payload, v)
	}
	if len(payload) < 4 {
		return errors.New("packed payload shorter than its length field")
	}
	n := binary.BigEndian.Uint32(payload)
	if uint64(n) > uint64(len(payload)-4) {
		return fmt.Errorf("packed payload: JSON part of %d bytes announced in %d", n, len(payload)-4)
	}
	rest := payload[4+n:]
	if err := decodeJSON(payload[4:4+n], v); err != nil {
		return err
	}
	var body any = v
	if w, ok := v.(*replyIn); ok {
		body = nil
		if w.Result.seen {
			body = w.Result.body
		}
	}
	if ar, ok := body.(*ApplyRequest); ok && keep {
		if ar.Config.Bindings != nil {
			return errors.New("packed payload: a binding list is in the JSON part")
		}
		p, r, err := binding.CutPacked(rest, func(i int, b *binding.Binding) error {
			if err := b.Validate(); err != nil {
				return fmt.Errorf("binding %d: %w", i+1, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		ar.Config.packed, rest = &p, r
	} else if pb, ok := body.(packedBody); ok {
		for _, l := range pb.packedLists() {
			if *l != nil {
				return errors.New("packed payload: a binding list is in the JSON part")
			}
			var err error
			if *l, rest, err = binding.ReadPacked(rest); err != nil {
				return err
			}
		}
	}
	if len(rest) != 0 {
		return fmt.Errorf("packed payload: %d bytes after the last list", len(rest))
	}
	return nil
}

// frame is one datagram: a header and a slice of the payload.
type frame struct {
	hdr     [headerLen]byte
	payload []byte
}

// frames splits a payload into datagrams of at most MaxChunk bytes.
func frames(version uint16, op Op, reply bool, payload []byte) ([]frame, error) {
	if max := maxPayload(op, reply); len(payload) > max {
		kind := "request"
		if reply {
			kind = "reply"
		}
		return nil, invalidf("control message: %s %s of %d bytes is over the limit of %d bytes", op, kind, len(payload), max)
	}
	n := max(1, (len(payload)+MaxChunk-1)/MaxChunk)
	fs := make([]frame, n)
	for i := range fs {
		chunk := payload[min(i*MaxChunk, len(payload)):min((i+1)*MaxChunk, len(payload))]
		h := header{version: version, op: op, total: uint32(len(payload)), length: uint32(len(chunk))}
		if reply {
			h.flags |= flagReply
		}
		if i < n-1 {
			h.flags |= flagMore
		}
		h.put(fs[i].hdr[:])
		fs[i].payload = chunk
	}
	return fs, nil
}

func encodeMessage(m Message) ([]frame, error) {
	switch m := m.(type) {
	case *Request:
		return encodeRequest(m)
	case *Reply:
		return encodeReply(m)
	}
	return nil, fmt.Errorf("control message: %w: %T is not a *Request or *Reply", ErrInvalid, m)
}

func encodeRequest(r *Request) ([]frame, error) {
	if r == nil || r.Body == nil {
		return nil, invalidf("control message: request has no body")
	}
	if !SupportedVersion(r.Version) {
		return nil, versionError(r.Version)
	}
	if r.Op() == 0 {
		return nil, invalidf("control message: %T is not a request of the protocol", r.Body)
	}
	if err := r.Body.Validate(); err != nil {
		return nil, AsError(fmt.Errorf("%s request: %w", r.Op(), err))
	}
	p, err := encodePayload(r.Version, r.Op(), r.Body, r.Body)
	if err != nil {
		return nil, invalidf("control message: %s request: %v", r.Op(), err)
	}
	return frames(r.Version, r.Op(), false, p)
}

func encodeReply(r *Reply) ([]frame, error) {
	if r == nil {
		return nil, invalidf("control message: nil reply")
	}
	if !SupportedVersion(r.Version) {
		return nil, versionError(r.Version)
	}
	var w wireReply
	switch {
	case r.Err != nil && r.Body != nil:
		return nil, invalidf("control message: reply has both an error and a result")
	case r.Err != nil:
		if !r.Err.Code.Valid() {
			return nil, invalidf("control message: reply has unknown error code %q", trunc(string(r.Err.Code)))
		}
		if r.Op != 0 && !r.Op.Known() {
			return nil, invalidf("control message: reply for unknown %s", r.Op)
		}
		w.Error = r.Err
	case r.Body == nil:
		return nil, invalidf("control message: reply has neither an error nor a result")
	case OpOf(r.Body) != r.Op || !r.Op.Known():
		return nil, invalidf("control message: %s reply carries a %T result", r.Op, r.Body)
	default:
		w.Result = r.Body
	}
	p, err := encodePayload(r.Version, r.Op, &w, w.Result)
	if err != nil {
		return nil, invalidf("control message: %s reply: %v", r.Op, err)
	}
	return frames(r.Version, r.Op, true, p)
}

func joinFrames(fs []frame) [][]byte {
	out := make([][]byte, len(fs))
	for i, f := range fs {
		out[i] = slices.Concat(f.hdr[:], f.payload)
	}
	return out
}

// EncodeRequest returns the datagrams of a request. Conn.Send uses the same
// encoding without the copies.
func EncodeRequest(r *Request) ([][]byte, error) {
	fs, err := encodeRequest(r)
	if err != nil {
		return nil, err
	}
	return joinFrames(fs), nil
}

// EncodeReply returns the datagrams of a reply.
func EncodeReply(r *Reply) ([][]byte, error) {
	fs, err := encodeReply(r)
	if err != nil {
		return nil, err
	}
	return joinFrames(fs), nil
}

func assemble(datagrams [][]byte) (*assembler, error) {
	if len(datagrams) == 0 {
		return nil, invalidf("control message: no datagrams")
	}
	var a assembler
	for i, d := range datagrams {
		done, err := a.add(d)
		if err != nil {
			return nil, err
		}
		if done && i != len(datagrams)-1 {
			return nil, invalidf("control message: %d datagrams after the end of the message", len(datagrams)-1-i)
		}
		if !done && i == len(datagrams)-1 {
			return nil, invalidf("control message: truncated: the last datagram announces more")
		}
	}
	return &a, nil
}

// DecodeRequest decodes the datagrams of one request, which arrived with
// nfds file descriptors. It never panics; every error is an *Error, with
// CodeUnsupported for an unknown version or operation and CodeInvalid for
// everything else. It does not close descriptors: that is the caller's job
// when it fails.
func DecodeRequest(datagrams [][]byte, nfds int) (*Request, error) {
	a, err := assemble(datagrams)
	if err != nil {
		return nil, err
	}
	if a.isReply() {
		return nil, invalidf("control message: got a %s reply where a request was expected", a.first.op)
	}
	return decodeRequest(a.first.version, a.first.op, a.buf, nfds, false)
}

// DecodeReply decodes the datagrams of one reply, like DecodeRequest.
// Replies carry no file descriptors.
func DecodeReply(datagrams [][]byte, nfds int) (*Reply, error) {
	a, err := assemble(datagrams)
	if err != nil {
		return nil, err
	}
	if !a.isReply() {
		return nil, invalidf("control message: got a %s request where a reply was expected", a.first.op)
	}
	m, err := a.decode(nfds)
	if err != nil {
		return nil, err
	}
	return m.(*Reply), nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
