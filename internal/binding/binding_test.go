package binding

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Ports{
		"80": {80, 80}, "1": {1, 1}, "65535": {65535, 65535}, "00080": {80, 80},
		"8000-8999": {8000, 8999}, "5-5": {5, 5}, "1-65534": {1, 65534}, "2-65535": {2, 65535},
		"*": AnyPort, "1-65535": AnyPort,
	} {
		got, err := ParsePorts(in)
		if err != nil || got != want {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, says := range map[string]string{
		"":            `ports "": invalid: a port is a number from 1 to 65535`,
		"0":           `ports "0": invalid: port 0 is out of range 1-65535 (use '*' for every port)`,
		"65536":       "port 65536 is out of range",
		"99999":       "port 99999 is out of range",
		"100000":      "a port is a number",
		"http":        "a port is a number",
		"-80":         `ports "-80": invalid: a port is a number`,
		"80-":         `ports "80-": invalid: a port is a number`,
		"+80":         "a port is a number",
		" 80":         "a port is a number",
		"9000-8000":   `ports "9000-8000": invalid: range starts after it ends; write it as 8000-9000`,
		"1-2-3":       "a port is a number",
		"**":          "a port is a number",
		"0-80":        "port 0 is out of range",
		"80-65536":    "port 65536 is out of range",
		"0x50":        "a port is a number",
		"８０":          "a port is a number",
		"1-65535 ":    "a port is a number",
		"80\x00":      "a port is a number",
		"8000 - 8999": "a port is a number",
	} {
		_, err := ParsePorts(in)
		if err == nil || !strings.Contains(err.Error(), says) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePorts(%q): err %v, want ErrInvalid saying %q", in, err, says)
		}
	}
	long := strings.Repeat("9", 100)
	if _, err := ParsePorts(long); err == nil || strings.Contains(err.Error(), long) || !strings.Contains(err.Error(), long[:64]+"...") {
		t.Errorf("ParsePorts of 100 bytes: err %v, want the input cut to 64 bytes", err)
	}
}

func TestPortsMethods(t *testing.T) {
	t.Parallel()
	p := Ports{8000, 8999}
	if p.String() != "8000-8999" || (Ports{80, 80}).String() != "80" || AnyPort.String() != "*" {
		t.Errorf("String: %q %q %q", p, Ports{80, 80}, AnyPort)
	}
	if p.Width() != 1000 || AnyPort.Width() != 65536 || (Ports{7, 7}).Width() != 1 {
		t.Errorf("Width: %d %d %d", p.Width(), AnyPort.Width(), Ports{7, 7}.Width())
	}
	if !p.Contains(8000) || !p.Contains(8999) || p.Contains(7999) || p.Contains(9000) || !AnyPort.Contains(0) {
		t.Error("Contains is wrong at the ends of a range")
	}
	if !AnyPort.IsAny() || (Ports{1, 65535}).IsAny() || !(Ports{3, 3}).Single() || p.Single() {
		t.Error("IsAny or Single is wrong")
	}
	for _, tc := range []struct {
		a, b             Ports
		overlaps, nested bool
	}{
		{Ports{1, 10}, Ports{10, 20}, true, false},
		{Ports{1, 10}, Ports{11, 20}, false, false},
		{Ports{1, 10}, Ports{2, 9}, true, true},
		{Ports{1, 10}, Ports{1, 10}, true, true},
		{Ports{5, 5}, AnyPort, true, true},
		{Ports{5, 15}, Ports{1, 10}, true, false},
	} {
		for _, ab := range [][2]Ports{{tc.a, tc.b}, {tc.b, tc.a}} {
			if got := ab[0].Overlaps(ab[1]); got != tc.overlaps {
				t.Errorf("%v.Overlaps(%v) = %v", ab[0], ab[1], got)
			}
			if got := ab[0].Nested(ab[1]); got != tc.nested {
				t.Errorf("%v.Nested(%v) = %v", ab[0], ab[1], got)
			}
		}
	}
}

func TestParsePrefix(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"10.0.0.1/24":          "10.0.0.0/24",
		"10.0.0.1":             "10.0.0.1/32",
		"0.0.0.0/0":            "0.0.0.0/0",
		"255.255.255.255/1":    "128.0.0.0/1",
		"2001:db8::1/64":       "2001:db8::/64",
		"2001:db8::1":          "2001:db8::1/128",
		"::/0":                 "::/0",
		"::ffff:0:0/95":        "::fffe:0:0/95",
		"2001:DB8::/32":        "2001:db8::/32",
		"192.0.2.255/31":       "192.0.2.254/31",
		"::1":                  "::1/128",
		"fe80::1/10":           "fe80::/10",
		"2001:db8:0:0:0:0:0:1": "2001:db8::1/128",
	} {
		got, err := ParsePrefix(in)
		if err != nil || got.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for in, says := range map[string]string{
		"":                    `prefix "": invalid: expected an address or CIDR prefix such as 192.0.2.0/24 or 2001:db8::/64`,
		"10.0.0.300/8":        `prefix "10.0.0.300/8": invalid: expected an address or CIDR prefix`,
		"10.0.0.0/33":         `prefix "10.0.0.0/33": invalid`,
		"2001:db8::/129":      "expected an address or CIDR prefix",
		"10.0.0.0/-1":         "expected an address or CIDR prefix",
		"10.0.0/8":            "expected an address or CIDR prefix",
		"fe80::1%eth0":        `prefix "fe80::1%eth0": invalid: expected an address`,
		"fe80::1%eth0/64":     "invalid",
		"::ffff:10.0.0.0/104": `prefix "::ffff:10.0.0.0/104": invalid: IPv4-mapped IPv6 prefixes never match; IPv4 traffic matches IPv4 bindings, so write the IPv4 form`,
		"::ffff:10.0.0.1":     "IPv4-mapped IPv6 prefixes never match",
		"::ffff:0:0/96":       "IPv4-mapped IPv6 prefixes never match",
		"10.0.0.0/8 ":         "expected an address or CIDR prefix",
		"example.com":         "expected an address or CIDR prefix",
		"10.0.0.0/08":         "expected an address or CIDR prefix",
	} {
		_, err := ParsePrefix(in)
		if err == nil || !strings.Contains(err.Error(), says) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePrefix(%q): err %v, want ErrInvalid saying %q", in, err, says)
		}
	}
}

// ParsePrefix's fast path for IPv4 reads what the general one reads, the
// same way, and leaves the rest to it.
func TestParsePrefixIPv4FastPath(t *testing.T) {
	t.Parallel()
	octets := []string{"0", "1", "9", "10", "99", "100", "255", "256", "300", "999", "1000", "00", "01", "010", "0255", "", "-1", "+1", "1a", " 1"}
	lens := []string{"", "/0", "/1", "/8", "/24", "/32", "/33", "/00", "/08", "/032", "/", "/-1", "/+8", "/ 8", "/1 ", "/128"}
	n, fast := 0, 0
	for _, a := range octets {
		for _, b := range octets[:8] {
			for _, l := range lens {
				for _, s := range []string{a + ".0.0." + b + l, "1." + a + "." + b + ".1" + l, a + "." + b + l, a + ".1.2.3.4" + l} {
					want, werr := parsePrefix(s)
					got, err := ParsePrefix(s)
					if got != want || (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() {
						t.Errorf("ParsePrefix(%q) = %v, %v; without the fast path %v, %v", s, got, err, want, werr)
					}
					if _, ok := parseIPv4Prefix(s); ok {
						fast++
					}
					n++
				}
			}
		}
	}
	if fast == 0 || fast == n {
		t.Fatalf("the fast path took %d of %d inputs", fast, n)
	}
}

func TestValidateLabel(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "web", "dns-public", "x.y_z-1@host", "A9", strings.Repeat("l", MaxLabelLen)} {
		if err := ValidateLabel(ok); err != nil {
			t.Errorf("ValidateLabel(%q): %v", ok, err)
		}
	}
	for in, says := range map[string]string{
		"":                                 "label: invalid: must not be empty",
		strings.Repeat("l", MaxLabelLen+1): "256 bytes is longer than 255",
		"we b":                             `label "we b": invalid: byte 2 (' ') is not allowed; use letters, digits and . _ - @`,
		"a/b":                              "byte 1 ('/') is not allowed",
		"é":                                "byte 0 ('Ã') is not allowed", // the byte quoted as a rune
		"a\x00":                            "byte 1 ('\\x00') is not allowed",
		"web\n":                            "byte 3 ('\\n') is not allowed",
		"a:b":                              "is not allowed",
	} {
		err := ValidateLabel(in)
		if err == nil || !strings.Contains(err.Error(), says) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateLabel(%q): err %v, want ErrInvalid saying %q", in, err, says)
		}
	}
}

func TestParseProtocolFamily(t *testing.T) {
	t.Parallel()
	if p, err := ParseProtocol("tcp"); p != TCP || err != nil {
		t.Errorf("tcp: %v %v", p, err)
	}
	if p, err := ParseProtocol("udp"); p != UDP || err != nil {
		t.Errorf("udp: %v %v", p, err)
	}
	for _, s := range []string{"TCP", "sctp", "", "tcp "} {
		if _, err := ParseProtocol(s); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "use tcp or udp") {
			t.Errorf("ParseProtocol(%q): %v", s, err)
		}
	}
	if f, err := ParseFamily("ipv4"); f != IPv4 || err != nil {
		t.Errorf("ipv4: %v %v", f, err)
	}
	if f, err := ParseFamily("ipv6"); f != IPv6 || err != nil {
		t.Errorf("ipv6: %v %v", f, err)
	}
	for _, s := range []string{"inet", "IPv4", "", "4"} {
		if _, err := ParseFamily(s); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "use ipv4 or ipv6") {
			t.Errorf("ParseFamily(%q): %v", s, err)
		}
	}
	if s := Protocol(7).String(); s != "protocol(7)" {
		t.Errorf("Protocol(7) = %q", s)
	}
	if s := Family(5).String(); s != "family(5)" {
		t.Errorf("Family(5) = %q", s)
	}
	if FamilyOf(netip.MustParseAddr("10.0.0.1")) != IPv4 || FamilyOf(netip.MustParseAddr("::1")) != IPv6 ||
		FamilyOf(netip.MustParseAddr("::ffff:10.0.0.1")) != IPv6 {
		t.Error("FamilyOf is wrong")
	}
}

func mustParse(t testing.TB, label, proto, prefix, ports string) Binding {
	t.Helper()
	b, err := Parse(label, proto, prefix, ports)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseAndValidate(t *testing.T) {
	t.Parallel()
	b := mustParse(t, "web", "tcp", "10.0.0.9/24", "8000-8999")
	want := Binding{Label: "web", Protocol: TCP, Prefix: netip.MustParsePrefix("10.0.0.0/24"), Ports: Ports{8000, 8999}}
	if b != want || b.String() != "web tcp 10.0.0.0/24 8000-8999" || b.Key().String() != "tcp 10.0.0.0/24 8000-8999" {
		t.Errorf("Parse = %v (key %v), want %v", b, b.Key(), want)
	}
	if b.Family() != IPv4 || mustParse(t, "x", "udp", "2001:db8::/32", "*").Family() != IPv6 {
		t.Error("Family is wrong")
	}
	// The first part that is wrong is the one reported.
	for _, tc := range []struct {
		parts [4]string
		says  string
	}{
		{[4]string{"", "sctp", "x", "0"}, "label: invalid: must not be empty"},
		{[4]string{"web", "sctp", "x", "0"}, `protocol "sctp"`},
		{[4]string{"web", "tcp", "x", "0"}, `prefix "x"`},
		{[4]string{"web", "tcp", "10.0.0.0/8", "0"}, `ports "0"`},
	} {
		_, err := Parse(tc.parts[0], tc.parts[1], tc.parts[2], tc.parts[3])
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Parse%q: err %v, want one saying %q", tc.parts, err, tc.says)
		}
	}

	if err := b.Validate(); err != nil {
		t.Errorf("Validate(%v): %v", b, err)
	}
	for _, tc := range []struct {
		b    Binding
		says string
	}{
		{Binding{Label: "we b", Protocol: TCP, Prefix: want.Prefix, Ports: AnyPort}, "is not allowed"},
		{Binding{Label: "web", Protocol: 1, Prefix: want.Prefix, Ports: AnyPort}, "binding web protocol(1) 10.0.0.0/24 *: invalid: protocol must be tcp or udp"},
		{Binding{Label: "web", Protocol: TCP, Ports: AnyPort}, "not a valid prefix"},
		{Binding{Label: "web", Protocol: TCP, Prefix: netip.MustParsePrefix("10.0.0.1/24"), Ports: AnyPort}, "prefix has host bits set"},
		{Binding{Label: "web", Protocol: TCP, Prefix: netip.MustParsePrefix("::ffff:10.0.0.0/120"), Ports: AnyPort}, "IPv4-mapped"},
		{Binding{Label: "web", Protocol: UDP, Prefix: want.Prefix, Ports: Ports{90, 80}}, "bad port range"},
		{Binding{Label: "web", Protocol: UDP, Prefix: want.Prefix, Ports: Ports{0, 80}}, "bad port range"},
		{Binding{Label: "web", Protocol: UDP, Prefix: want.Prefix, Ports: Ports{0, 0}}, "bad port range"},
	} {
		err := tc.b.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.says) || !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate(%+v): err %v, want ErrInvalid saying %q", tc.b, err, tc.says)
		}
	}
}

// FuzzParse: whatever Parse accepts validates, prints as text Parse reads
// back to the same binding, and encodes as JSON that decodes to it.
func FuzzParse(f *testing.F) {
	f.Add("web", "tcp", "10.0.0.1/24", "80")
	f.Add("dns@x", "udp", "2001:db8::1", "*")
	f.Add("a", "tcp", "::ffff:1.2.3.4", "1-65535")
	f.Add("a", "udp", "0.0.0.0/0", "00001-00002")
	f.Fuzz(func(t *testing.T, label, proto, prefix, ports string) {
		fast, ferr := ParsePrefix(prefix)
		slow, serr := parsePrefix(prefix)
		if fast != slow || (ferr == nil) != (serr == nil) || ferr != nil && ferr.Error() != serr.Error() {
			t.Fatalf("ParsePrefix(%q) = %v, %v; without its fast path %v, %v", prefix, fast, ferr, slow, serr)
		}
		b, err := Parse(label, proto, prefix, ports)
		if fb, ok := ParseBytes([]byte(label), []byte(proto), []byte(prefix), []byte(ports)); ok {
			fb.Label = label
			if err != nil || fb != b {
				t.Fatalf("ParseBytes(%q, %q, %q, %q) = %v; Parse: %v, %v", label, proto, prefix, ports, fb, b, err)
			}
		} else if err == nil {
			t.Fatalf("ParseBytes(%q, %q, %q, %q) refuses what Parse reads as %v", label, proto, prefix, ports, b)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q, %q, %q, %q): %v does not wrap ErrInvalid", label, proto, prefix, ports, err)
			}
			return
		}
		if err := b.Validate(); err != nil {
			t.Fatalf("Parse gave %v, which does not validate: %v", b, err)
		}
		f := strings.Fields(b.String())
		if len(f) != 4 {
			t.Fatalf("%v prints as %d fields", b, len(f))
		}
		again, err := Parse(f[0], f[1], f[2], f[3])
		if err != nil || again != b {
			t.Fatalf("%v reads back as %v, %v", b, again, err)
		}
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		var back Binding
		if err := json.Unmarshal(data, &back); err != nil || back != b {
			t.Fatalf("%v: JSON %s reads back as %v, %v", b, data, back, err)
		}
	})
}

func TestBindingJSON(t *testing.T) {
	t.Parallel()
	b := mustParse(t, "web", "tcp", "192.0.2.0/24", "8000-8999")
	data, err := json.Marshal(b)
	if want := `{"label":"web","protocol":"tcp","prefix":"192.0.2.0/24","ports":"8000-8999"}`; err != nil || string(data) != want {
		t.Errorf("json.Marshal = %s, %v; want %s", data, err, want)
	}
	data, err = json.Marshal(struct {
		P Protocol
		F Family
		A Ports
	}{UDP, IPv6, AnyPort})
	if want := `{"P":"udp","F":"ipv6","A":"*"}`; err != nil || string(data) != want {
		t.Errorf("json.Marshal = %s, %v; want %s", data, err, want)
	}
	for _, v := range []any{Protocol(0), Family(0)} {
		if _, err := json.Marshal(v); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("json.Marshal(%v): err %v, want ErrInvalid", v, err)
		}
	}
	var back Binding
	if err := json.Unmarshal([]byte(`{"label":"x","protocol":"udp","prefix":"2001:db8::/64","ports":"1-65535"}`), &back); err != nil ||
		back != (Binding{Label: "x", Protocol: UDP, Prefix: netip.MustParsePrefix("2001:db8::/64"), Ports: AnyPort}) {
		t.Errorf("json.Unmarshal = %v, %v", back, err)
	}
	for in, says := range map[string]string{
		`{"protocol":"icmp"}`: `protocol "icmp": invalid`,
		`{"ports":"0"}`:       "port 0 is out of range",
		`{"ports":80}`:        "cannot unmarshal number",
	} {
		var b Binding
		if err := json.Unmarshal([]byte(in), &b); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("json.Unmarshal(%s): err %v, want one saying %q", in, err, says)
		}
	}
	var fam Family
	if err := json.Unmarshal([]byte(`"ipv4"`), &fam); err != nil || fam != IPv4 {
		t.Errorf("Family from JSON: %v %v", fam, err)
	}
	if err := json.Unmarshal([]byte(`"inet"`), &fam); err == nil || !strings.Contains(err.Error(), "use ipv4 or ipv6") {
		t.Errorf("Family from \"inet\": %v", err)
	}
}

func TestConflictAndPrecedence(t *testing.T) {
	t.Parallel()
	b := func(label, proto, prefix, ports string) Binding { return mustParse(t, label, proto, prefix, ports) }
	for _, tc := range []struct {
		a, b     Binding
		conflict bool
	}{
		{b("web", "tcp", "10.0.0.0/8", "80"), b("web", "tcp", "10.0.0.0/8", "80"), false},
		{b("web", "tcp", "10.0.0.0/8", "80"), b("api", "tcp", "10.0.0.0/8", "80"), true},
		{b("web", "tcp", "10.0.0.0/8", "80"), b("api", "udp", "10.0.0.0/8", "80"), false},
		{b("web", "tcp", "10.0.0.0/8", "80-90"), b("api", "tcp", "10.0.0.0/8", "85-95"), true},
		{b("web", "tcp", "10.0.0.0/8", "80-90"), b("web", "tcp", "10.0.0.0/8", "85-95"), true},
		{b("web", "tcp", "10.0.0.0/8", "80-90"), b("api", "tcp", "10.0.0.0/8", "85"), false},
		{b("web", "tcp", "10.0.0.0/8", "*"), b("api", "tcp", "10.0.0.0/8", "85-95"), false},
		{b("web", "tcp", "10.0.0.0/8", "80-90"), b("api", "tcp", "10.0.0.0/16", "85-95"), false},
		{b("web", "tcp", "10.0.0.0/8", "80-90"), b("api", "tcp", "10.0.0.0/8", "91-95"), false},
	} {
		if got := Conflict(tc.a, tc.b); got != tc.conflict {
			t.Errorf("Conflict(%v, %v) = %v", tc.a, tc.b, got)
		}
		if got := Conflict(tc.b, tc.a); got != tc.conflict {
			t.Errorf("Conflict(%v, %v) = %v", tc.b, tc.a, got)
		}
	}
	// The longer prefix wins over any port set; then the narrower ports.
	long, short := b("a", "tcp", "10.0.0.0/24", "*"), b("b", "tcp", "10.0.0.0/16", "80")
	if !MoreSpecific(long, short) || MoreSpecific(short, long) {
		t.Error("a longer prefix does not win")
	}
	narrow, wide := b("a", "tcp", "10.0.0.0/24", "80-81"), b("b", "tcp", "10.0.0.0/24", "70-90")
	if !MoreSpecific(narrow, wide) || MoreSpecific(wide, narrow) || MoreSpecific(narrow, narrow) {
		t.Error("the narrower port set does not win")
	}
}

func TestMatches(t *testing.T) {
	t.Parallel()
	v4 := mustParse(t, "a", "tcp", "10.0.0.0/24", "80-90")
	v6 := mustParse(t, "b", "udp", "::/0", "*")
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		b     Binding
		proto Protocol
		to    string
		want  bool
	}{
		{v4, TCP, "10.0.0.7:80", true},
		{v4, TCP, "10.0.0.255:90", true},
		{v4, TCP, "10.0.1.0:80", false},
		{v4, TCP, "10.0.0.7:91", false},
		{v4, UDP, "10.0.0.7:80", false},
		{v4, TCP, "[::ffff:10.0.0.7]:85", true}, // a v4-mapped destination is IPv4 traffic
		{v6, UDP, "[2001:db8::1]:53", true},
		{v6, UDP, "[::ffff:10.0.0.7]:53", false}, // and never matches an IPv6 binding
		{v6, UDP, "10.0.0.7:53", false},
	} {
		if got := tc.b.Matches(tc.proto, ap(tc.to)); got != tc.want {
			t.Errorf("%v matches %v %s: %v, want %v", tc.b, tc.proto, tc.to, got, tc.want)
		}
	}
}

func TestSortOrder(t *testing.T) {
	t.Parallel()
	// In display order.
	want := []Binding{
		mustParse(t, "z", "tcp", "10.0.0.0/8", "*"),
		mustParse(t, "a", "tcp", "10.0.0.0/16", "80"),
		mustParse(t, "b", "tcp", "10.0.0.0/16", "80"),
		mustParse(t, "a", "udp", "10.0.0.0/16", "53"),
		mustParse(t, "a", "udp", "10.0.0.0/16", "60-70"),
		mustParse(t, "a", "udp", "10.0.0.0/16", "60-80"),
		mustParse(t, "a", "tcp", "10.0.0.1", "80"),
		mustParse(t, "a", "tcp", "192.0.2.0/24", "80"),
		mustParse(t, "a", "tcp", "::/0", "*"),
		mustParse(t, "a", "tcp", "2001:db8::/32", "443"),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		got := slices.Clone(want)
		rng.Shuffle(len(got), func(i, j int) { got[i], got[j] = got[j], got[i] })
		Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("Sort gives\n%v\nwant\n%v", got, want)
		}
	}
	for i, a := range want {
		for j, b := range want {
			if c := Compare(a, b); (c < 0) != (i < j) || (c == 0) != (i == j) {
				t.Errorf("Compare(%v, %v) = %d", a, b, c)
			}
		}
	}
	if CompareKeys(want[1], want[2]) != 0 {
		t.Error("CompareKeys looks at labels")
	}
}

// TestSortLarge: Sort of a list long enough to be sorted by radix gives
// what a sort with Compare gives, for lists that mix families, prefix
// lengths, protocols, port ranges, labels and repeats, and for lists
// holding a binding that is not valid.
func TestSortLarge(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	random := func() Binding {
		b := Binding{Label: []string{"a", "b", "web", "web-2"}[rng.IntN(4)], Protocol: []Protocol{TCP, UDP}[rng.IntN(2)]}
		var a netip.Addr
		switch rng.IntN(3) {
		case 0:
			a = netip.AddrFrom4([4]byte{10, byte(rng.IntN(3)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		case 1:
			a = netip.AddrFrom4([4]byte{byte(rng.IntN(256)), 0, 0, 0})
		default:
			a = netip.AddrFrom16([16]byte{0: byte(rng.IntN(2)), 1: 1, 7: byte(rng.IntN(3)), 15: byte(rng.IntN(256))})
		}
		b.Prefix = netip.PrefixFrom(a, rng.IntN(a.BitLen()+1)).Masked()
		lo := uint16(1 + rng.IntN(300))
		b.Ports = []Ports{AnyPort, {lo, lo}, {lo, lo + uint16(rng.IntN(300))}}[rng.IntN(3)]
		return b
	}
	for round := range 5 {
		bs := make([]Binding, radixMin+rng.IntN(3*radixMin))
		for i := range bs {
			if i > 0 && rng.IntN(10) == 0 {
				bs[i] = bs[rng.IntN(i)] // a repeat
				continue
			}
			bs[i] = random()
		}
		switch round {
		case 3:
			bs[rng.IntN(len(bs))] = Binding{Label: "zero"}
		case 4:
			bs[rng.IntN(len(bs))].Protocol = 1
		}
		want := slices.Clone(bs)
		slices.SortFunc(want, Compare)
		Sort(bs)
		if !slices.Equal(bs, want) {
			i := 0
			for bs[i] == want[i] {
				i++
			}
			t.Fatalf("round %d: Sort of %d bindings differs from a sort with Compare at %d: %v, want %v", round, len(bs), i, bs[i], want[i])
		}
	}
}

// BenchmarkSortMillion sorts the bindings of tests/' file of 1,048,576
// (testenv.ScaleBinding, which this package may not import), by radix and
// with Compare.
func BenchmarkSortMillion(b *testing.B) {
	bs := make([]Binding, 1<<20)
	for i := range bs {
		x := i / 8
		c := &bs[i]
		c.Label, c.Protocol = "lbl-"+strconv.Itoa(i%1000), TCP
		switch i % 8 {
		case 0, 1, 2, 3:
			c.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
			p := [4]uint16{80, 443, 8080, 8443}[i%4]
			c.Ports = Ports{p, p}
		case 4, 5:
			c.Protocol = UDP
			c.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(11 + x>>16), byte(x >> 8), byte(x), 0}), 24)
			c.Ports = [2]Ports{{8000, 8999}, AnyPort}[i%2]
		default:
			c.Prefix = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(x >> 16), byte(x >> 8), byte(x)}), 64)
			c.Ports = [2]Ports{{53, 53}, AnyPort}[i%2]
		}
	}
	work := make([]Binding, len(bs))
	b.Run("radix", func(b *testing.B) {
		for b.Loop() {
			copy(work, bs)
			Sort(work)
		}
	})
	b.Run("compare", func(b *testing.B) {
		for b.Loop() {
			copy(work, bs)
			slices.SortFunc(work, Compare)
		}
	})
}

// bruteForce is the precedence rule written out from its description, as
// independently of the package as it can be: of the bindings of the
// protocol whose prefix holds the address (compared bit by bit; an
// IPv4-mapped IPv6 address is IPv4) and whose ports hold the port, those
// with the longest prefix, and of them those with the fewest ports.
func bruteForce(bs []Binding, proto Protocol, to netip.AddrPort) []Binding {
	addr := to.Addr()
	if addr.Is4In6() {
		addr = addr.Unmap()
	}
	bit := func(a []byte, i int) byte { return a[i/8] >> (7 - i%8) & 1 }
	var match []Binding
	for _, b := range bs {
		pa := b.Prefix.Addr()
		if b.Protocol != proto || pa.Is4() != addr.Is4() || to.Port() < b.Ports.Lo || to.Port() > b.Ports.Hi {
			continue
		}
		x, y := pa.AsSlice(), addr.AsSlice()
		in := true
		for i := 0; i < b.Prefix.Bits(); i++ {
			if bit(x, i) != bit(y, i) {
				in = false
				break
			}
		}
		if in {
			match = append(match, b)
		}
	}
	best := -1
	for _, b := range match {
		best = max(best, b.Prefix.Bits())
	}
	match = slices.DeleteFunc(match, func(b Binding) bool { return b.Prefix.Bits() != best })
	fewest := 1 << 17
	for _, b := range match {
		fewest = min(fewest, int(b.Ports.Hi)-int(b.Ports.Lo)+1)
	}
	return slices.DeleteFunc(match, func(b Binding) bool { return int(b.Ports.Hi)-int(b.Ports.Lo)+1 != fewest })
}

// TestLookupMatchesBruteForce: on random sets of bindings without
// conflicts, in random order, Lookup picks the one binding the brute-force
// rule leaves, and none when it leaves none.
func TestLookupMatchesBruteForce(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(11, 9))
	// A small space so that bindings overlap: addresses 10.0.0.0-10.0.3.255
	// and 2001:db8::-2001:db8::3ff, ports 1-40.
	randAddr := func(v6 bool) netip.Addr {
		n := rng.IntN(1024)
		if v6 {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(n >> 8), 15: byte(n)})
		}
		return netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)})
	}
	randPorts := func() Ports {
		switch rng.IntN(4) {
		case 0:
			return AnyPort
		case 1:
			p := uint16(1 + rng.IntN(40))
			return Ports{p, p}
		}
		lo := uint16(1 + rng.IntN(40))
		return Ports{lo, lo + uint16(rng.IntN(15))}
	}
	labels := []string{"a", "b", "c", "d"}
	lookups, hits := 0, 0
	for round := range 300 {
		var bs []Binding
		for range 1 + rng.IntN(60) {
			v6 := rng.IntN(3) == 0
			a := randAddr(v6)
			bits := a.BitLen() - rng.IntN(11)
			if rng.IntN(8) == 0 {
				bits = rng.IntN(a.BitLen() + 1)
			}
			b := Binding{Label: labels[rng.IntN(len(labels))], Protocol: []Protocol{TCP, UDP}[rng.IntN(2)],
				Prefix: netip.PrefixFrom(a, bits).Masked(), Ports: randPorts()}
			if err := b.Validate(); err != nil {
				t.Fatalf("generated %v: %v", b, err)
			}
			if !slices.ContainsFunc(bs, func(o Binding) bool { return o == b || Conflict(o, b) }) {
				bs = append(bs, b)
			}
		}
		for range 200 {
			proto := []Protocol{TCP, UDP}[rng.IntN(2)]
			v6 := rng.IntN(3) == 0
			a := randAddr(v6)
			if !v6 && rng.IntN(4) == 0 {
				a = netip.AddrFrom16(a.As16()) // v4-mapped
			}
			to := netip.AddrPortFrom(a, uint16(1+rng.IntN(45)))
			want := bruteForce(bs, proto, to)
			got, ok := Lookup(bs, proto, to)
			lookups++
			switch {
			case len(want) > 1:
				t.Fatalf("round %d: %v %v: %d bindings tie without a conflict: %v", round, proto, to, len(want), want)
			case len(want) == 0 && ok:
				t.Fatalf("round %d: %v %v: Lookup found %v, brute force nothing\nbindings: %v", round, proto, to, got, bs)
			case len(want) == 1 && (!ok || got != want[0]):
				t.Fatalf("round %d: %v %v: Lookup found %v (%v), brute force %v\nbindings: %v", round, proto, to, got, ok, want[0], bs)
			case ok:
				hits++
			}
			// The order of the bindings does not matter.
			rev := slices.Clone(bs)
			slices.Reverse(rev)
			if again, ok2 := Lookup(rev, proto, to); again != got || ok2 != ok {
				t.Fatalf("round %d: %v %v: Lookup depends on order: %v, reversed %v", round, proto, to, got, again)
			}
		}
	}
	// The space is small enough that most lookups hit something.
	if hits < lookups/4 {
		t.Fatalf("only %d of %d lookups matched a binding: the test exercises little", hits, lookups)
	}
}
