package binding

import (
	"bytes"
	"encoding/json"
	"net/netip"
)

// List is a list of bindings with a JSON encoding that stays fast at
// 1,048,576 bindings. It encodes exactly as []Binding does with
// encoding/json: an array of objects with the fields label, protocol,
// prefix and ports.
//
// Decoding reads the compact form that MarshalJSON writes directly and
// hands anything else (white space, escapes, other key order or case) to
// encoding/json, so the result is the same either way (FuzzListJSON checks
// this). Unlike plain encoding/json, decoding refuses fields a binding does
// not have, as the control protocol refuses them everywhere.
type List []Binding

// All yields a pointer to each binding of l, in order.
func (l List) All(yield func(*Binding) bool) {
	for i := range l {
		if !yield(&l[i]) {
			return
		}
	}
}

// MarshalJSON implements json.Marshaler.
func (l List) MarshalJSON() ([]byte, error) {
	if l == nil {
		return []byte("null"), nil
	}
	out := make([]byte, 0, 2+len(l)*72)
	out = append(out, '[')
	for i, b := range l {
		if i > 0 {
			out = append(out, ',')
		}
		if _, err := b.Protocol.MarshalText(); err != nil {
			return nil, err
		}
		out = AppendJSON(out, &l[i])
	}
	return append(out, ']'), nil
}

// AppendJSON appends b as encoding/json writes a Binding whose protocol is
// TCP or UDP (for others, encoding/json fails; AppendJSON writes
// Protocol.String()).
func AppendJSON(out []byte, b *Binding) []byte {
	out = append(out, `{"label":`...)
	if plainJSON(b.Label) {
		out = append(out, '"')
		out = append(out, b.Label...)
		out = append(out, '"')
	} else {
		q, _ := json.Marshal(b.Label) // a string always encodes
		out = append(out, q...)
	}
	out = append(out, `,"protocol":"`...)
	out = append(out, b.Protocol.String()...)
	out = append(out, `","prefix":"`...)
	out = b.Prefix.AppendTo(out)
	out = append(out, `","ports":"`...)
	out = b.Ports.AppendTo(out)
	return append(out, `"}`...)
}

// plainJSON reports whether s is printable ASCII that encoding/json writes
// between quotes as it is (it escapes ", \, <, > and &).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// UnmarshalJSON implements json.Unmarshaler.
func (l *List) UnmarshalJSON(data []byte) error {
	if bs, ok := decodeCompact(data); ok {
		*l = bs
		return nil
	}
	var bs []Binding
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&bs); err != nil {
		return err
	}
	*l = bs
	return nil
}

// decodeCompact reads the form MarshalJSON writes, with values that parse.
// It reports false on anything else.
func decodeCompact(data []byte) (List, bool) {
	if string(data) == "null" {
		return nil, true
	}
	rest, ok := bytes.CutPrefix(data, []byte("["))
	if !ok {
		return nil, false
	}
	if string(rest) == "]" {
		return List{}, true
	}
	// Every binding takes at least 40 bytes: a bound on the list.
	out := make(List, 0, len(rest)/40+1)
	labels := map[string]string{} // one copy of each label
	fields := [...]string{`{"label":"`, `","protocol":"`, `","prefix":"`, `","ports":"`}
	for {
		var vals [4][]byte
		for i, f := range fields {
			if rest, ok = bytes.CutPrefix(rest, []byte(f)); !ok {
				return nil, false
			}
			n := plainValue(rest)
			if n < 0 {
				return nil, false
			}
			vals[i], rest = rest[:n], rest[n:]
		}
		if rest, ok = bytes.CutPrefix(rest, []byte(`"}`)); !ok {
			return nil, false
		}
		b, ok := compactBinding(vals, labels)
		if !ok {
			return nil, false
		}
		out = append(out, b)
		if len(rest) == 1 && rest[0] == ']' {
			return out, true
		}
		if rest, ok = bytes.CutPrefix(rest, []byte(",")); !ok {
			return nil, false
		}
	}
}

// plainValue returns the length of the string value at the start of b up to
// its closing quote, or -1 if it holds anything encoding/json would read
// differently from its bytes.
func plainValue(b []byte) int {
	for i, c := range b {
		switch {
		case c == '"':
			return i
		case c < ' ' || c > '~' || c == '\\':
			return -1
		}
	}
	return -1
}

// compactBinding parses the four values as encoding/json would through the
// fields' UnmarshalText methods.
func compactBinding(v [4][]byte, labels map[string]string) (Binding, bool) {
	var b Binding
	label, ok := labels[string(v[0])]
	if !ok {
		label = string(v[0])
		labels[label] = label
	}
	b.Label = label
	switch string(v[1]) {
	case "tcp":
		b.Protocol = TCP
	case "udp":
		b.Protocol = UDP
	default:
		return Binding{}, false
	}
	if len(v[2]) > 0 {
		p, err := netip.ParsePrefix(string(v[2]))
		if err != nil {
			return Binding{}, false
		}
		b.Prefix = p
	}
	p, err := ParsePorts(string(v[3]))
	if err != nil {
		return Binding{}, false
	}
	b.Ports = p
	return b, true
}
