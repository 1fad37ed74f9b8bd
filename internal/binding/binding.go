package binding

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// MaxLabelLen is the longest label accepted, in bytes. It matches systemd's
// limit on FileDescriptorName so that a socket unit's name can be a label.
const MaxLabelLen = 255

// ErrInvalid is wrapped by every parse and validation error in this package.
var ErrInvalid = errors.New("invalid")

// Protocol is a transport protocol, using the IANA numbers.
type Protocol uint8

const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	default:
		return fmt.Sprintf("protocol(%d)", uint8(p))
	}
}

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) {
	if p != TCP && p != UDP {
		return nil, fmt.Errorf("protocol %d: %w", uint8(p), ErrInvalid)
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Protocol) UnmarshalText(b []byte) error {
	v, err := ParseProtocol(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParseProtocol accepts "tcp" or "udp".
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: %w: use tcp or udp", trunc(s), ErrInvalid)
}

// Family is an address family of a socket or of traffic.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	default:
		return fmt.Sprintf("family(%d)", uint8(f))
	}
}

// ParseFamily accepts "ipv4" or "ipv6".
func ParseFamily(s string) (Family, error) {
	switch s {
	case "ipv4":
		return IPv4, nil
	case "ipv6":
		return IPv6, nil
	}
	return 0, fmt.Errorf("family %q: %w: use ipv4 or ipv6", trunc(s), ErrInvalid)
}

// MarshalText implements encoding.TextMarshaler.
func (f Family) MarshalText() ([]byte, error) {
	if f != IPv4 && f != IPv6 {
		return nil, fmt.Errorf("family %d: %w", uint8(f), ErrInvalid)
	}
	return []byte(f.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *Family) UnmarshalText(b []byte) error {
	v, err := ParseFamily(string(b))
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// FamilyOf returns the family of a prefix or address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Ports is an inclusive port range. Every port is {0, 65535}.
type Ports struct {
	Lo, Hi uint16
}

// AnyPort matches every port.
var AnyPort = Ports{0, 65535}

// IsAny reports whether p is the every-port set.
func (p Ports) IsAny() bool { return p == AnyPort }

// Single reports whether p is one port.
func (p Ports) Single() bool { return p.Lo == p.Hi }

// Width is the number of ports in p.
func (p Ports) Width() int { return int(p.Hi) - int(p.Lo) + 1 }

// Contains reports whether port is in p.
func (p Ports) Contains(port uint16) bool { return p.Lo <= port && port <= p.Hi }

// Overlaps reports whether p and q share a port.
func (p Ports) Overlaps(q Ports) bool { return p.Lo <= q.Hi && q.Lo <= p.Hi }

// Nested reports whether one of p and q contains the other.
func (p Ports) Nested(q Ports) bool {
	return (p.Lo <= q.Lo && q.Hi <= p.Hi) || (q.Lo <= p.Lo && p.Hi <= q.Hi)
}

func (p Ports) String() string {
	switch {
	case p.IsAny():
		return "*"
	case p.Single():
		return strconv.Itoa(int(p.Lo))
	default:
		return fmt.Sprintf("%d-%d", p.Lo, p.Hi)
	}
}

// AppendTo appends p as String writes it to b.
func (p Ports) AppendTo(b []byte) []byte {
	switch {
	case p.IsAny():
		return append(b, '*')
	case p.Single():
		return strconv.AppendUint(b, uint64(p.Lo), 10)
	default:
		b = strconv.AppendUint(b, uint64(p.Lo), 10)
		b = append(b, '-')
		return strconv.AppendUint(b, uint64(p.Hi), 10)
	}
}

// MarshalText implements encoding.TextMarshaler.
func (p Ports) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Ports) UnmarshalText(b []byte) error {
	v, err := ParsePorts(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParsePorts accepts one port ("80"), an inclusive range ("8000-8999") or
// every port ("*"). The range 1-65535 is the same as "*".
func ParsePorts(s string) (Ports, error) {
	if s == "*" {
		return AnyPort, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := parsePort(lo)
	if err != nil {
		return Ports{}, fmt.Errorf("ports %q: %w", trunc(s), err)
	}
	if !isRange {
		return Ports{a, a}, nil
	}
	b, err := parsePort(hi)
	if err != nil {
		return Ports{}, fmt.Errorf("ports %q: %w", trunc(s), err)
	}
	if a > b {
		return Ports{}, fmt.Errorf("ports %q: %w: range starts after it ends; write it as %d-%d", trunc(s), ErrInvalid, b, a)
	}
	if a == 1 && b == 65535 {
		// Every usable port: the same set as '*', so the same binding.
		return AnyPort, nil
	}
	return Ports{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || !allDigits(s) {
		return 0, fmt.Errorf("%w: a port is a number from 1 to 65535, a range like 8000-8999, or '*' for every port", ErrInvalid)
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%w: port %d is out of range 1-65535 (use '*' for every port)", ErrInvalid, n)
	}
	return uint16(n), nil
}

func allDigits[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ParsePrefix accepts an IPv4 or IPv6 CIDR prefix or a bare address (meaning
// /32 or /128). Host bits are cleared: 10.0.0.1/24 is 10.0.0.0/24. IPv4-mapped
// IPv6 prefixes and zoned addresses are refused, since no traffic can match
// them.
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, ok := parseIPv4Prefix(s); ok {
		return p, nil
	}
	return parsePrefix(s)
}

// parsePrefix is ParsePrefix without its fast path.
func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("prefix %q: %w: expected an address or CIDR prefix such as 192.0.2.0/24 or 2001:db8::/64", trunc(s), ErrInvalid)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("prefix %q: %w: expected an address or CIDR prefix such as 192.0.2.0/24 or 2001:db8::/64", trunc(s), ErrInvalid)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.IsValid() {
		p = p.Masked()
	}
	if err := checkPrefix(p); err != nil {
		return netip.Prefix{}, fmt.Errorf("prefix %q: %w", trunc(s), err)
	}
	return p.Masked(), nil
}

// parseIPv4Prefix reads the common case of ParsePrefix, an IPv4 address
// in its canonical form (four decimal numbers up to 255 without leading
// zeros), alone or with a prefix length up to 32 without leading zeros,
// several times faster than net/netip. It reports false for everything
// else, which ParsePrefix then reads as before, with its errors.
func parseIPv4Prefix[T string | []byte](s T) (netip.Prefix, bool) {
	var a [4]byte
	i := 0
	for k := range a {
		if k > 0 {
			if i >= len(s) || s[i] != '.' {
				return netip.Prefix{}, false
			}
			i++
		}
		v, n := smallDecimal(s[i:])
		if n == 0 || v > 255 {
			return netip.Prefix{}, false
		}
		a[k] = byte(v)
		i += n
	}
	bits := 32
	if i < len(s) {
		if s[i] != '/' {
			return netip.Prefix{}, false
		}
		v, n := smallDecimal(s[i+1:])
		if n == 0 || i+1+n != len(s) || v > 32 {
			return netip.Prefix{}, false
		}
		bits = v
	}
	return netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked(), true
}

// smallDecimal reads 1 to 3 decimal digits, without a leading zero unless
// it is the only digit, from the start of s; n is 0 if there are none.
func smallDecimal[T string | []byte](s T) (v, n int) {
	for n < len(s) && n < 4 && s[n] >= '0' && s[n] <= '9' {
		v = v*10 + int(s[n]-'0')
		n++
	}
	if n == 4 || n > 1 && s[0] == '0' {
		return 0, 0
	}
	return v, n
}

func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%w: not a valid prefix", ErrInvalid)
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("%w: IPv4-mapped IPv6 prefixes never match; IPv4 traffic matches IPv4 bindings, so write the IPv4 form", ErrInvalid)
	}
	if p.Addr().Zone() != "" {
		return fmt.Errorf("%w: zoned addresses are not supported", ErrInvalid)
	}
	return nil
}

// ValidateLabel checks that s can name a destination: 1 to 255 bytes of ASCII
// letters, digits and ". _ - @".
func ValidateLabel(s string) error {
	if s == "" {
		return fmt.Errorf("label: %w: must not be empty", ErrInvalid)
	}
	if len(s) > MaxLabelLen {
		return fmt.Errorf("label %q: %w: %d bytes is longer than %d", trunc(s), ErrInvalid, len(s), MaxLabelLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '@') {
			return fmt.Errorf("label %q: %w: byte %d (%q) is not allowed; use letters, digits and . _ - @", trunc(s), ErrInvalid, i, c)
		}
	}
	return nil
}

// Binding steers traffic of one protocol to a prefix and set of ports to a
// label.
type Binding struct {
	Label    string       `json:"label"`
	Protocol Protocol     `json:"protocol"`
	Prefix   netip.Prefix `json:"prefix"`
	Ports    Ports        `json:"ports"`
}

// Key identifies a binding without its label: two bindings with the same key
// cannot coexist.
type Key struct {
	Protocol Protocol
	Prefix   netip.Prefix
	Ports    Ports
}

// Key returns b's identity without the label.
func (b Binding) Key() Key { return Key{b.Protocol, b.Prefix, b.Ports} }

// Family is the address family the binding matches.
func (b Binding) Family() Family { return FamilyOf(b.Prefix.Addr()) }

func (b Binding) String() string {
	return fmt.Sprintf("%s %s %s %s", b.Label, b.Protocol, b.Prefix, b.Ports)
}

func (k Key) String() string {
	return fmt.Sprintf("%s %s %s", k.Protocol, k.Prefix, k.Ports)
}

// Parse builds a binding from its four textual parts, as the CLI takes them.
func Parse(label, protocol, prefix, ports string) (Binding, error) {
	if err := ValidateLabel(label); err != nil {
		return Binding{}, err
	}
	proto, err := ParseProtocol(protocol)
	if err != nil {
		return Binding{}, err
	}
	pfx, err := ParsePrefix(prefix)
	if err != nil {
		return Binding{}, err
	}
	pp, err := ParsePorts(ports)
	if err != nil {
		return Binding{}, err
	}
	return Binding{Label: label, Protocol: proto, Prefix: pfx, Ports: pp}, nil
}

// ParseBytes is Parse of the four parts of a binding given in byte slices,
// for what it reads without allocating: a valid label, tcp or udp, an
// IPv4 prefix in ParsePrefix's fast form, and valid ports. For other
// prefixes it allocates their text once. It reports false for everything
// else, and for parts Parse refuses: then Parse of the parts as strings
// gives the binding, or the error. The Label of the binding is left empty
// for the caller to set to a string equal to label.
func ParseBytes(label, protocol, prefix, ports []byte) (Binding, bool) {
	var b Binding
	if len(label) == 0 || len(label) > MaxLabelLen {
		return b, false
	}
	for _, c := range label {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '@') {
			return b, false
		}
	}
	switch string(protocol) {
	case "tcp":
		b.Protocol = TCP
	case "udp":
		b.Protocol = UDP
	default:
		return b, false
	}
	var ok bool
	if b.Prefix, ok = parseIPv4Prefix(prefix); !ok {
		var err error
		if b.Prefix, err = ParsePrefix(string(prefix)); err != nil {
			return b, false
		}
	}
	if b.Ports, ok = parsePortsBytes(ports); !ok {
		return b, false
	}
	return b, true
}

// parsePortsBytes is ParsePorts of what it accepts.
func parsePortsBytes(s []byte) (Ports, bool) {
	if string(s) == "*" {
		return AnyPort, true
	}
	lo, hi, isRange := bytes.Cut(s, []byte("-"))
	a, ok := parsePortBytes(lo)
	if !ok {
		return Ports{}, false
	}
	if !isRange {
		return Ports{a, a}, true
	}
	b, ok := parsePortBytes(hi)
	if !ok || a > b {
		return Ports{}, false
	}
	if a == 1 && b == 65535 {
		return AnyPort, true
	}
	return Ports{a, b}, true
}

// parsePortBytes is parsePort of what it accepts.
func parsePortBytes(s []byte) (uint16, bool) {
	if len(s) == 0 || len(s) > 5 || !allDigits(s) {
		return 0, false
	}
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// Validate checks a binding built in code or decoded from the wire.
func (b Binding) Validate() error {
	if err := ValidateLabel(b.Label); err != nil {
		return err
	}
	if b.Protocol != TCP && b.Protocol != UDP {
		return fmt.Errorf("binding %s: %w: protocol must be tcp or udp", b, ErrInvalid)
	}
	if err := checkPrefix(b.Prefix); err != nil {
		return fmt.Errorf("binding %s: %w", b, err)
	}
	if b.Prefix != b.Prefix.Masked() {
		return fmt.Errorf("binding %s: %w: prefix has host bits set", b, ErrInvalid)
	}
	if b.Ports.Lo > b.Ports.Hi || (b.Ports.Lo == 0 && !b.Ports.IsAny()) {
		return fmt.Errorf("binding %s: %w: bad port range", b, ErrInvalid)
	}
	return nil
}

// Conflict reports whether a and b, both of the same protocol, would make the
// choice between them ambiguous: the same prefix with partially overlapping
// port ranges, or the same prefix and ports with different labels.
func Conflict(a, b Binding) bool {
	if a.Protocol != b.Protocol || a.Prefix != b.Prefix {
		return false
	}
	if a.Ports == b.Ports {
		return a.Label != b.Label
	}
	return a.Ports.Overlaps(b.Ports) && !a.Ports.Nested(b.Ports)
}

// MoreSpecific reports whether a takes precedence over b for traffic that
// matches both: the longer prefix wins, then the narrower port set.
func MoreSpecific(a, b Binding) bool {
	if a.Prefix.Bits() != b.Prefix.Bits() {
		return a.Prefix.Bits() > b.Prefix.Bits()
	}
	return a.Ports.Width() < b.Ports.Width()
}

// Matches reports whether traffic of protocol proto to addr:port matches b.
func (b Binding) Matches(proto Protocol, addr netip.AddrPort) bool {
	a := addr.Addr().Unmap()
	if addr.Addr().Is4In6() && b.Family() == IPv6 {
		return false
	}
	return b.Protocol == proto && b.Prefix.Contains(a) && b.Ports.Contains(addr.Port())
}

// CompareKeys orders bindings for display without looking at labels: IPv4
// before IPv6, then by prefix address and length, protocol and ports.
func CompareKeys(a, b Binding) int {
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Ports.Lo, b.Ports.Lo); c != 0 {
		return c
	}
	return cmp.Compare(a.Ports.Hi, b.Ports.Hi)
}

// Compare orders bindings for display: by CompareKeys, then label.
func Compare(a, b Binding) int {
	if c := CompareKeys(a, b); c != 0 {
		return c
	}
	return strings.Compare(a.Label, b.Label)
}

// Sort sorts bs with Compare.
func Sort(bs []Binding) {
	if len(bs) < radixMin || !sortRadix(bs) {
		slices.SortFunc(bs, Compare)
	}
}

// radixMin is the fewest bindings Sort sorts by radix.
const radixMin = 1 << 14

// sortRadix sorts bs as slices.SortFunc(bs, Compare) does, in about half
// the time at a million bindings (the CLI sorts what the first apply of a
// file adds): by a radix sort of a key of each binding that orders as
// Compare does where keys differ, then with Compare within each run of
// equal keys. It reports false, with bs as it was, if a binding has an
// address or protocol no binding may have.
func sortRadix(bs []Binding) bool {
	type item struct {
		key uint64
		i   uint32
	}
	items := make([]item, len(bs))
	// IPv4 bindings first, as netip.Addr.Compare orders them. An IPv4
	// key holds the address, prefix length, protocol, first port and the
	// top bits of the last; an IPv6 key the address's first half.
	v4, v6 := 0, len(bs)
	for i := range bs {
		b := &bs[i]
		a := b.Prefix.Addr()
		var proto uint64
		switch b.Protocol {
		case TCP:
		case UDP:
			proto = 1
		default:
			return false
		}
		if !a.IsValid() || a.Zone() != "" || b.Prefix.Bits() < 0 {
			return false
		}
		if a.Is4() {
			a4 := a.As4()
			addr := uint64(a4[0])<<24 | uint64(a4[1])<<16 | uint64(a4[2])<<8 | uint64(a4[3])
			items[v4] = item{addr<<32 | uint64(b.Prefix.Bits())<<26 | proto<<25 | uint64(b.Ports.Lo)<<9 | uint64(b.Ports.Hi)>>7, uint32(i)}
			v4++
		} else {
			a16 := a.As16()
			v6--
			items[v6] = item{uint64(a16[0])<<56 | uint64(a16[1])<<48 | uint64(a16[2])<<40 | uint64(a16[3])<<32 |
				uint64(a16[4])<<24 | uint64(a16[5])<<16 | uint64(a16[6])<<8 | uint64(a16[7]), uint32(i)}
		}
	}
	// Least significant byte first, skipping the bytes every key of a
	// family shares.
	tmp := make([]item, len(bs))
	for _, r := range [][2]int{{0, v4}, {v4, len(bs)}} {
		src, dst := items[r[0]:r[1]], tmp[r[0]:r[1]]
		var counts [8][256]int
		for _, it := range src {
			for d := range 8 {
				counts[d][byte(it.key>>(8*d))]++
			}
		}
		for d := range 8 {
			c := &counts[d]
			if len(src) == 0 || c[byte(src[0].key>>(8*d))] == len(src) {
				continue
			}
			at := 0
			for v := range c {
				c[v], at = at, at+c[v]
			}
			for _, it := range src {
				k := byte(it.key >> (8 * d))
				dst[c[k]] = it
				c[k]++
			}
			src, dst = dst, src
		}
		copy(items[r[0]:r[1]], src)
	}
	// Put bs[items[k].i] at k, cycle by cycle, marking each item done;
	// then order each run of equal keys with Compare.
	const done = ^uint32(0)
	for k := range items {
		if items[k].i == done {
			continue
		}
		first := bs[k]
		at := k
		for {
			from := items[at].i
			items[at].i = done
			if int(from) == k {
				bs[at] = first
				break
			}
			bs[at] = bs[from]
			at = int(from)
		}
	}
	for _, r := range [][2]int{{0, v4}, {v4, len(bs)}} {
		for a := r[0]; a < r[1]; {
			b := a + 1
			for b < r[1] && items[b].key == items[a].key {
				b++
			}
			if b-a > 1 {
				slices.SortFunc(bs[a:b], Compare)
			}
			a = b
		}
	}
	return true
}

// Lookup returns the binding that wins for traffic of protocol proto to addr,
// following switchyard's precedence rules, as a reference implementation for
// tests and tools. ok is false if no binding matches.
func Lookup(bs []Binding, proto Protocol, addr netip.AddrPort) (best Binding, ok bool) {
	for _, b := range bs {
		if !b.Matches(proto, addr) {
			continue
		}
		if !ok || MoreSpecific(b, best) {
			best, ok = b, true
		}
	}
	return best, ok
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
