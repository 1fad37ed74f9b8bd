package settings

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Label is the settings of one label: the one type the CLI, the config,
// the control protocol and the daemon's state use. The zero Label is
// root-only registration and policy none.
//
// Its JSON form (json.Marshal) is the daemon's state form, the one of
// the recorded settings and the settings file:
//
//	{"grants":{"UIDs":[953],"GIDs":null,"Users":null,"Groups":["dns"]},
//	 "policy":"splice","upstream":"127.0.0.1:53","engine":"kernel"}
//
// The control protocol carries a label as Named.
type Label struct {
	// Grants lists who, besides root, may register sockets for the label.
	Grants Grants `json:"grants"`
	// Policy is applied to the connections the label's socket accepts.
	Policy
}

// Validate checks l's policy and grants.
func (l Label) Validate() error {
	if err := l.Policy.Validate(); err != nil {
		return err
	}
	return l.Grants.Validate()
}

// Equal reports whether a and b are the same settings.
func (a Label) Equal(b Label) bool {
	return a.Policy == b.Policy && a.Grants.Equal(b.Grants)
}

// String describes l on one line: "policy splice upstream 10.0.0.5:same
// uids 953,954 users bind".
func (l Label) String() string {
	var s strings.Builder
	s.WriteString("policy ")
	s.WriteString(l.Kind.String())
	if !l.Upstream.IsZero() {
		s.WriteString(" upstream ")
		s.WriteString(l.Upstream.String())
	}
	if l.Engine != Userspace {
		s.WriteString(" engine ")
		s.WriteString(string(l.Engine))
	}
	list := func(name string, n int, item func(int) string) {
		if n == 0 {
			return
		}
		s.WriteString(" " + name + " ")
		for i := range n {
			if i > 0 {
				s.WriteByte(',')
			}
			s.WriteString(item(i))
		}
	}
	g := l.Grants
	list("uids", len(g.UIDs), func(i int) string { return strconv.FormatUint(uint64(g.UIDs[i]), 10) })
	list("gids", len(g.GIDs), func(i int) string { return strconv.FormatUint(uint64(g.GIDs[i]), 10) })
	list("users", len(g.Users), func(i int) string { return g.Users[i] })
	list("groups", len(g.Groups), func(i int) string { return g.Groups[i] })
	return s.String()
}

// Grants names users and groups, by id or by name. Names are resolved to
// ids only when the daemon needs them (config.Resolver), so settings can
// be read on a machine without those accounts.
type Grants struct {
	UIDs   []uint32
	GIDs   []uint32
	Users  []string
	Groups []string
}

// IsZero reports whether g grants nothing.
func (g Grants) IsZero() bool {
	return len(g.UIDs) == 0 && len(g.GIDs) == 0 && len(g.Users) == 0 && len(g.Groups) == 0
}

// Equal reports whether a and b list the same ids and names in the same
// order.
func (a Grants) Equal(b Grants) bool {
	return slices.Equal(a.UIDs, b.UIDs) && slices.Equal(a.GIDs, b.GIDs) && slices.Equal(a.Users, b.Users) && slices.Equal(a.Groups, b.Groups)
}

// Validate checks each id and name (see ValidateID, ValidateName).
func (g Grants) Validate() error {
	for _, ids := range []struct {
		what string
		list []uint32
	}{{"uids", g.UIDs}, {"gids", g.GIDs}} {
		for i, id := range ids.list {
			if err := ValidateID(id); err != nil {
				return fmt.Errorf("grants.%s[%d]: %w", ids.what, i, err)
			}
		}
	}
	for _, names := range []struct {
		what string
		list []string
	}{{"users", g.Users}, {"groups", g.Groups}} {
		for i, name := range names.list {
			if err := ValidateName(name); err != nil {
				return fmt.Errorf("grants.%s[%d]: %w", names.what, i, err)
			}
		}
	}
	return nil
}

// ValidateID refuses (uid_t)-1, which names nobody.
func ValidateID(id uint32) error {
	if id == ^uint32(0) {
		return fmt.Errorf("%w: id %d is (uid_t)-1, which names nobody", ErrInvalid, id)
	}
	return nil
}

// ValidateName checks the syntax of a user or group name; whether it
// exists is only known when it is resolved. A name is 1 to 256 bytes, not
// all digits (numeric ids are listed as ids), without space, control,
// ':', '/', ',' or DEL bytes.
func ValidateName(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty name", ErrInvalid)
	}
	if len(s) > 256 {
		return fmt.Errorf("%w: name %s is longer than 256 bytes", ErrInvalid, quote(s))
	}
	if strings.Trim(s, "0123456789") == "" {
		return fmt.Errorf("%w: name %s is a number: list numeric ids under uids or gids", ErrInvalid, quote(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == ':' || c == '/' || c == ',' || c == 0x7f {
			return fmt.Errorf("%w: name %s contains %q, which no user or group name has", ErrInvalid, quote(s), c)
		}
	}
	return nil
}

// Named is a label's settings with its name, in the control protocol's
// form: grants are one list of users and one of groups, each a name or a
// decimal id.
//
//	{"label":"web","policy":"splice","upstream":"10.0.0.5:same",
//	 "users":["953","knot"],"groups":["dns"]}
type Named struct {
	Name string
	Label
}

// wireNamed is Named's JSON form.
type wireNamed struct {
	Name string `json:"label"`
	Policy
	Users  []string `json:"users,omitempty"`
	Groups []string `json:"groups,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (n Named) MarshalJSON() ([]byte, error) {
	w := wireNamed{Name: n.Name, Policy: n.Policy}
	for _, id := range n.Grants.UIDs {
		w.Users = append(w.Users, strconv.FormatUint(uint64(id), 10))
	}
	w.Users = append(w.Users, n.Grants.Users...)
	for _, id := range n.Grants.GIDs {
		w.Groups = append(w.Groups, strconv.FormatUint(uint64(id), 10))
	}
	w.Groups = append(w.Groups, n.Grants.Groups...)
	return json.Marshal(w)
}

// UnmarshalJSON implements json.Unmarshaler. It refuses unknown fields;
// a user or group that is a decimal number is an id.
func (n *Named) UnmarshalJSON(b []byte) error {
	var w wireNamed
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("label settings: %w: trailing data", ErrInvalid)
	}
	out := Named{Name: w.Name, Label: Label{Policy: w.Policy}}
	for _, u := range w.Users {
		if id, err := strconv.ParseUint(u, 10, 32); err == nil {
			out.Grants.UIDs = append(out.Grants.UIDs, uint32(id))
		} else {
			out.Grants.Users = append(out.Grants.Users, u)
		}
	}
	for _, g := range w.Groups {
		if id, err := strconv.ParseUint(g, 10, 32); err == nil {
			out.Grants.GIDs = append(out.Grants.GIDs, uint32(id))
		} else {
			out.Grants.Groups = append(out.Grants.Groups, g)
		}
	}
	*n = out
	return nil
}
