package binding

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// The packed form of a list of bindings is what the control protocol sends
// for apply (its version 2): a million bindings take about 12 MB instead of
// about 80 MB of JSON, and read back in a fraction of the time. Integers
// are unsigned varints (encoding/binary), and labels are sent once each:
//
//	labels   count, then each label: length, bytes
//	nil      0 for a nil list (and nothing follows), else 1
//	bindings count, then each binding:
//	  kind   one byte: 0x01 udp (else tcp), 0x02 IPv6 (else IPv4),
//	         0x0c ports: 0x00 every port, 0x04 one port, 0x08 a range
//	  bits   one byte, the prefix length
//	  addr   4 or 16 bytes, the prefix address
//	  label  index into labels
//	  ports  nothing, the port (2 bytes big-endian), or both ends (4)
//
// ReadPacked checks only the form: the bindings it returns are as the sender
// gave them, and the receiver validates them as it would from JSON.

const (
	packedUDP      = 0x01
	packedIPv6     = 0x02
	packedPortMask = 0x0c
	packedOnePort  = 0x04
	packedRange    = 0x08

	// packedMinBinding is the fewest bytes a binding takes: a bound on
	// what a count may claim.
	packedMinBinding = 1 + 1 + 4 + 1
)

// MaxPacked is the most bindings (and labels) ReadPacked reads in one
// list: as many bindings as one namespace may hold. Without it, 128 MiB of input could claim 19
// million bindings, 1.2 GiB once decoded.
const MaxPacked = 1 << 20

// errPacked is wrapped by every error of ReadPacked.
var errPacked = errors.New("packed bindings")

// AppendPacked appends the packed form of bs to dst.
func AppendPacked(dst []byte, bs []Binding) []byte {
	if bs == nil {
		return AppendPackedSeq(dst, -1, nil)
	}
	return AppendPackedSeq(dst, len(bs), List(bs).All)
}

// AppendPackedSeq appends the packed form of the n bindings that all
// yields, in its order, to dst; n < 0 writes a nil list. all is called
// twice (labels first, then the bindings) and must yield the same
// bindings both times: a sender can so encode a list it never holds
// whole.
func AppendPackedSeq(dst []byte, n int, all func(yield func(*Binding) bool)) []byte {
	index := make(map[string]uint64)
	var labels []string
	// Each binding's label index, from the first pass for the second.
	var li []uint32
	// A slot per hash of a label, before the map: a map lookup per
	// binding was a third of the encoding.
	var recent [1024]struct {
		label string
		index uint64 // + 1; 0 for an empty slot
	}
	lookup := func(l string) uint64 {
		h := uint32(2166136261) // FNV-1a
		for i := 0; i < len(l); i++ {
			h = (h ^ uint32(l[i])) * 16777619
		}
		slot := &recent[h%uint32(len(recent))]
		if slot.index != 0 && slot.label == l {
			return slot.index - 1
		}
		x, ok := index[l]
		if !ok {
			x = uint64(len(labels))
			index[l] = x
			labels = append(labels, l)
		}
		slot.label, slot.index = l, x+1
		return x
	}
	// The first pass finds the labels and the exact size, so that dst
	// grows once, to what it needs (12 MB for a million bindings).
	size := 1 + uvarintLen(uint64(max(n, 0)))
	if n > 0 {
		li = make([]uint32, 0, n)
		for b := range all {
			nl := len(labels)
			x := lookup(b.Label)
			if len(labels) > nl {
				size += uvarintLen(uint64(len(b.Label))) + len(b.Label)
			}
			li = append(li, uint32(x))
			size += 2 + b.Prefix.Addr().BitLen()/8 + uvarintLen(x)
			switch p := b.Ports; {
			case p.IsAny():
			case p.Single():
				size += 2
			default:
				size += 4
			}
		}
	}
	size += uvarintLen(uint64(len(labels)))
	dst = growBytes(dst, size)
	dst = binary.AppendUvarint(dst, uint64(len(labels)))
	for _, l := range labels {
		dst = binary.AppendUvarint(dst, uint64(len(l)))
		dst = append(dst, l...)
	}
	if n < 0 {
		return binary.AppendUvarint(dst, 0)
	}
	dst = binary.AppendUvarint(dst, 1)
	dst = binary.AppendUvarint(dst, uint64(n))
	if n == 0 {
		return dst
	}
	k := 0
	for b := range all {
		var kind byte
		if b.Protocol == UDP {
			kind |= packedUDP
		}
		a := b.Prefix.Addr()
		if !a.Is4() {
			kind |= packedIPv6
		}
		switch p := b.Ports; {
		case p.IsAny():
		case p.Single():
			kind |= packedOnePort
		default:
			kind |= packedRange
		}
		dst = append(dst, kind, byte(b.Prefix.Bits()))
		if a.Is4() {
			a4 := a.As4()
			dst = append(dst, a4[:]...)
		} else {
			a16 := a.As16()
			dst = append(dst, a16[:]...)
		}
		if k < len(li) {
			dst = binary.AppendUvarint(dst, uint64(li[k]))
		} else {
			// all yielded more than the first time.
			dst = binary.AppendUvarint(dst, lookup(b.Label))
		}
		k++
		switch kind & packedPortMask {
		case packedOnePort:
			dst = binary.BigEndian.AppendUint16(dst, b.Ports.Lo)
		case packedRange:
			dst = binary.BigEndian.AppendUint16(dst, b.Ports.Lo)
			dst = binary.BigEndian.AppendUint16(dst, b.Ports.Hi)
		}
	}
	return dst
}

// uvarintLen is the length of v as an unsigned varint.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func growBytes(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	out := make([]byte, len(b), len(b)+n)
	copy(out, b)
	return out
}

// ReadPacked reads one packed list from the start of b and returns it and
// what follows it. A nil list reads back as nil, an empty one as empty, as
// JSON's null and [] do. It refuses malformed input with an error wrapping
// ErrInvalid, and never allocates more than b can hold. It does not
// validate the bindings (a label's bytes, a prefix's host bits, a port
// range's order): the caller does, as it does for bindings read from JSON.
func ReadPacked(b []byte) (List, []byte, error) {
	s, err := startPacked(b)
	if err != nil {
		return nil, nil, err
	}
	if s.isNil {
		return nil, s.r.b, nil
	}
	out := make(List, s.n)
	for i := range out {
		if err := s.next(i, &out[i]); err != nil {
			return nil, nil, err
		}
	}
	return out, s.r.b, nil
}

// Packed is a list of bindings kept in its packed form, as CutPacked
// found it well formed: a receiver reads the bindings one at a time and
// never holds them all (a million take 64 MB as a List, 12 MB packed).
type Packed struct {
	b     []byte
	n     int
	isNil bool
}

// CutPacked checks the packed list at the start of b as ReadPacked
// does, without decoding it into a List, and returns it and what follows
// it. check, if not nil, is called with each binding in order; its error
// stops the read and is returned. The Packed refers to b.
func CutPacked(b []byte, check func(i int, b *Binding) error) (Packed, []byte, error) {
	s, err := startPacked(b)
	if err != nil {
		return Packed{}, nil, err
	}
	if s.isNil {
		return Packed{isNil: true}, s.r.b, nil
	}
	var x Binding
	for i := range s.n {
		if err := s.next(i, &x); err != nil {
			return Packed{}, nil, err
		}
		if check != nil {
			if err := check(i, &x); err != nil {
				return Packed{}, nil, err
			}
		}
	}
	return Packed{b: b[:len(b)-len(s.r.b)], n: s.n}, s.r.b, nil
}

// Len is the number of bindings of p.
func (p Packed) Len() int { return p.n }

// IsNil reports whether p is a nil list.
func (p Packed) IsNil() bool { return p.isNil }

// All yields the bindings of p in order. The *Binding it yields is
// reused: copy what is kept.
func (p Packed) All(yield func(*Binding) bool) {
	if p.isNil || p.n == 0 {
		return
	}
	s, err := startPacked(p.b)
	if err != nil {
		panic("binding: packed list changed after CutPacked: " + err.Error())
	}
	var x Binding
	for i := range s.n {
		if err := s.next(i, &x); err != nil {
			panic("binding: packed list changed after CutPacked: " + err.Error())
		}
		if !yield(&x) {
			return
		}
	}
}

// packedScan reads the bindings of one packed list, one at a time.
type packedScan struct {
	r      packedReader
	labels []string
	n      int
	isNil  bool
}

// startPacked reads a packed list's labels and count.
func startPacked(b []byte) (*packedScan, error) {
	s := &packedScan{r: packedReader{b: b}}
	r := &s.r
	nl := r.count(2)
	if nl > MaxPacked {
		// A list names no more labels than it has bindings.
		r.fail("%d labels, at most %d", nl, MaxPacked)
	}
	s.labels = make([]string, 0, min(nl, 1<<16))
	for range nl {
		n := r.uvarint()
		if r.err == nil && (n > MaxLabelLen || n == 0) {
			r.fail("label of %d bytes", n)
		}
		if r.err != nil {
			return s, r.err
		}
		s.labels = append(s.labels, string(r.bytes(int(n))))
	}
	if r.uvarint() == 0 && r.err == nil {
		s.isNil = true
		return s, nil
	}
	s.n = r.count(packedMinBinding)
	if r.err == nil && s.n > MaxPacked {
		r.fail("%d bindings, at most %d", s.n, MaxPacked)
	}
	return s, r.err
}

// next reads the i-th binding into x.
func (s *packedScan) next(i int, x *Binding) error {
	r := &s.r
	kind, bits := r.byte(), r.byte()
	if kind&^(packedUDP|packedIPv6|packedPortMask) != 0 || kind&packedPortMask == packedPortMask {
		r.fail("binding %d: kind %#x", i, kind)
	}
	x.Protocol = TCP
	if kind&packedUDP != 0 {
		x.Protocol = UDP
	}
	var a netip.Addr
	if kind&packedIPv6 != 0 {
		a = netip.AddrFrom16([16]byte(r.bytes(16)))
	} else {
		a = netip.AddrFrom4([4]byte(r.bytes(4)))
	}
	if int(bits) > a.BitLen() {
		r.fail("binding %d: prefix length %d", i, bits)
	}
	x.Prefix = netip.PrefixFrom(a, int(bits))
	if li := r.uvarint(); li < uint64(len(s.labels)) {
		x.Label = s.labels[li]
	} else {
		r.fail("binding %d: label %d of %d", i, li, len(s.labels))
	}
	switch kind & packedPortMask {
	case 0:
		x.Ports = AnyPort
	case packedOnePort:
		p := r.uint16()
		x.Ports = Ports{p, p}
	case packedRange:
		x.Ports = Ports{r.uint16(), r.uint16()}
	}
	return r.err
}

// packedReader reads b from the front; the first error sticks, and reads
// after it return zeros.
type packedReader struct {
	b   []byte
	err error
}

func (r *packedReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %w: %s", ErrInvalid, errPacked, fmt.Sprintf(format, args...))
	}
}

func (r *packedReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("truncated or overlong number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a number of items of at least min bytes each.
func (r *packedReader) count(min int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/min) {
		r.fail("%d items announced in %d bytes", n, len(r.b))
		return 0
	}
	return int(n)
}

func (r *packedReader) bytes(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.fail("truncated")
		return make([]byte, n) // n is at most MaxLabelLen

	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *packedReader) byte() byte { return r.bytes(1)[0] }

func (r *packedReader) uint16() uint16 { return binary.BigEndian.Uint16(r.bytes(2)) }
