package settings

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Upstream is where the splice policy connects to: a host and a port, or the
// host and whatever port the client dialled ("host:same"), so that one label
// can proxy every port.
type Upstream struct {
	// Host is an IP address or a DNS name (see ParseUpstream).
	Host string
	// Port is the port to dial; 0 means the port the client dialled.
	Port uint16
}

// SamePortWord is the port part of an Upstream that keeps the dialled port.
const SamePortWord = "same"

// MaxUpstream is the longest upstream ParseUpstream reads, in bytes.
const MaxUpstream = 512

// IsZero reports whether u is unset.
func (u Upstream) IsZero() bool { return u == Upstream{} }

// SamePort reports whether u keeps the port the client dialled.
func (u Upstream) SamePort() bool { return u.Port == 0 }

// Dial returns the address to dial for a connection the client made to
// port dialled.
func (u Upstream) Dial(dialled uint16) string {
	p := u.Port
	if p == 0 {
		p = dialled
	}
	return net.JoinHostPort(u.Host, strconv.Itoa(int(p)))
}

func (u Upstream) String() string {
	if u.IsZero() {
		return ""
	}
	port := SamePortWord
	if u.Port != 0 {
		port = strconv.Itoa(int(u.Port))
	}
	return net.JoinHostPort(u.Host, port)
}

// MarshalText implements encoding.TextMarshaler.
func (u Upstream) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseUpstream.
func (u *Upstream) UnmarshalText(b []byte) error {
	v, err := ParseUpstream(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

const upstreamHelp = "write host:port or host:same, e.g. 10.0.0.5:8080, [2001:db8::5]:same or backend.example:443"

// ParseUpstream is the one parser of upstreams. It accepts "host:port" or
// "host:same", at most MaxUpstream bytes. The port is a decimal number from
// 1 to 65535 (no sign), or "same" for the port the client dialled. The host
// is one of:
//   - an IPv4 address in dotted decimal;
//   - an IPv6 address in brackets, optionally with a zone that can name
//     an interface ("[fe80::1%eth0]", "[fe80::1%eth0.100]", see zoneChars);
//   - a DNS name: at most 253 bytes (one trailing dot allowed), of labels
//     of 1 to 63 letters, digits, '-' and '_', none starting or ending with
//     '-', the last label not all digits (so that a mistyped IPv4 address
//     is not looked up as a name).
func ParseUpstream(s string) (Upstream, error) {
	if len(s) > MaxUpstream {
		return Upstream{}, fmt.Errorf("upstream %s: %w: longer than %d bytes", quote(s), ErrInvalid, MaxUpstream)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream %s: %w: %s", quote(s), ErrInvalid, upstreamHelp)
	}
	if err := checkHost(host); err != nil {
		return Upstream{}, fmt.Errorf("upstream %s: %w", quote(s), err)
	}
	u := Upstream{Host: host}
	if port == SamePortWord {
		return u, nil
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || port[0] == '+' {
		return Upstream{}, fmt.Errorf("upstream %s: %w: port %s is not a number from 1 to 65535 or %q; %s", quote(s), ErrInvalid, quote(port), SamePortWord, upstreamHelp)
	}
	u.Port = uint16(n)
	return u, nil
}

// checkHost checks the host of an upstream by the rules of ParseUpstream.
func checkHost(h string) error {
	if h == "" {
		return fmt.Errorf("%w: the host is empty; %s", ErrInvalid, upstreamHelp)
	}
	if strings.Contains(h, ":") {
		if a, err := netip.ParseAddr(h); err != nil || !a.Is6() || !zoneChars(a.Zone()) {
			return fmt.Errorf("%w: %s is not an IPv6 address; %s", ErrInvalid, quote(h), upstreamHelp)
		}
		return nil
	}
	if a, err := netip.ParseAddr(h); err == nil && a.Is4() {
		return nil
	}
	notName := fmt.Errorf("%w: %s is neither an IP address nor a DNS name; %s", ErrInvalid, quote(h), upstreamHelp)
	if len(h) > 253 {
		return fmt.Errorf("%w: host name is longer than 253 bytes", ErrInvalid)
	}
	var last string
	for part := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if part == "" || len(part) > 63 || part[0] == '-' || part[len(part)-1] == '-' {
			return notName
		}
		if !nameChars(part) {
			return notName
		}
		last = part
	}
	if strings.Trim(last, "0123456789") == "" {
		return notName
	}
	return nil
}

// zoneChars reports whether s can be the zone of an upstream's IPv6
// address: an interface's index, or its name as the kernel takes one
// (dev_valid_name, net/core/dev.c: not "." or "..", no '/', ':' or
// space), in printable ASCII without brackets, so that the upstream
// prints as host:port and reads back. VLAN interfaces are named with a
// dot ("eth0.100").
func zoneChars(s string) bool {
	if s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '[' || c == ']' {
			return false
		}
	}
	return true
}

// nameChars reports whether s has only letters, digits, '-' and '_' (the
// bytes of a host name label).
func nameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
