package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// FuzzParseBinding checks the CLI binding parsers of package binding (which
// this package uses for every binding in a file): they never panic, refuse
// only with binding.ErrInvalid, accept only what their documentation says,
// and every accepted value is canonical: masked, valid, and unchanged by a
// trip through String and Parse.
func FuzzParseBinding(f *testing.F) {
	for _, s := range [][4]string{
		{"web", "tcp", "10.0.0.0/24", "80"},
		{"dns-public", "udp", "2001:db8::/64", "*"},
		{"a.b_c@d", "tcp", "10.1.2.3/8", "8000-8999"},
		{"x", "udp", "::ffff:1.2.3.4", "1"},
		{"x", "udp", "::ffff:0:0/96", "1"},
		{"x", "tcp", "fe80::1%eth0", "65535"},
		{"x", "tcp", "fe80::1%eth0/64", "1"},
		{"", "TCP", "1.2.3.4/33", "0"},
		{"l", "tcp", "::/0", "65535-1"},
		{"l", "udp", "1.2.3.4", "00080"},
		{"l", "tcp", "01.2.3.4", "1-"},
		{"l", "tcp", "1.2.3.4/08", "-1"},
		{"l", "tcp", "1.2.3.4/+8", "1--2"},
		{"l", "tcp", " 1.2.3.4", "80 "},
		{strings.Repeat("a", 256), "udp", "::", "65536"},
		{"é", "udp", "::1/128", "1-65535"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, label, proto, prefix, ports string) {
		b, err := binding.Parse(label, proto, prefix, ports)
		if err != nil {
			if !errors.Is(err, binding.ErrInvalid) {
				t.Fatalf("Parse error does not wrap ErrInvalid: %v", err)
			}
			if len(err.Error()) > 400 {
				t.Fatalf("error message of %d bytes: %v", len(err.Error()), err)
			}
		} else {
			if err := b.Validate(); err != nil {
				t.Fatalf("Parse accepted %v, Validate refuses it: %v", b, err)
			}
			if b.Label != label || b.Protocol.String() != proto {
				t.Fatalf("Parse(%q, %q) gave label %q protocol %v", label, proto, b.Label, b.Protocol)
			}
			// The CLI form: four words.
			f := strings.Fields(b.String())
			if len(f) != 4 {
				t.Fatalf("String() %q is not four words", b)
			}
			b2, err := binding.Parse(f[0], f[1], f[2], f[3])
			if err != nil || b2 != b {
				t.Fatalf("Parse(String()) = %v, %v; want %v", b2, err, b)
			}
			if b.Key() != (binding.Key{Protocol: b.Protocol, Prefix: b.Prefix, Ports: b.Ports}) {
				t.Fatal("Key() disagrees with the fields")
			}
			if binding.Conflict(b, b) {
				t.Fatalf("%v conflicts with itself", b)
			}
			other := b
			other.Label += "x"
			if len(other.Label) <= binding.MaxLabelLen && !binding.Conflict(b, other) {
				t.Fatalf("%v does not conflict with %v", b, other)
			}
		}

		if p, err := binding.ParsePrefix(prefix); err == nil {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("ParsePrefix(%q) = %v: not masked", prefix, p)
			}
			if p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("ParsePrefix(%q) = %v: mapped or zoned", prefix, p)
			}
			if !strings.Contains(prefix, "/") && p.Bits() != p.Addr().BitLen() {
				t.Fatalf("ParsePrefix(%q) = %v: a bare address must be a host prefix", prefix, p)
			}
			if p2, err := binding.ParsePrefix(p.String()); err != nil || p2 != p {
				t.Fatalf("ParsePrefix(%q) = %v, %v; want %v", p.String(), p2, err, p)
			}
			if binding.FamilyOf(p.Addr()) == binding.IPv4 != p.Addr().Is4() {
				t.Fatalf("FamilyOf(%v) is wrong", p.Addr())
			}
		} else if !errors.Is(err, binding.ErrInvalid) {
			t.Fatalf("ParsePrefix error does not wrap ErrInvalid: %v", err)
		}

		if pp, err := binding.ParsePorts(ports); err == nil {
			if ports != "*" && strings.Trim(ports, "0123456789-") != "" || strings.Count(ports, "-") > 1 {
				t.Fatalf("ParsePorts accepted %q", ports)
			}
			if pp.Lo > pp.Hi || pp.Lo == 0 && !pp.IsAny() || pp.Width() < 1 {
				t.Fatalf("ParsePorts(%q) = %+v", ports, pp)
			}
			if pp2, err := binding.ParsePorts(pp.String()); err != nil || pp2 != pp {
				t.Fatalf("ParsePorts(%q) = %v, %v; want %v", pp.String(), pp2, err, pp)
			}
			var pp3 binding.Ports
			if txt, err := pp.MarshalText(); err != nil || pp3.UnmarshalText(txt) != nil || pp3 != pp {
				t.Fatalf("Ports text round trip of %v failed", pp)
			}
		} else if !errors.Is(err, binding.ErrInvalid) {
			t.Fatalf("ParsePorts error does not wrap ErrInvalid: %v", err)
		}

		labelOK := len(label) >= 1 && len(label) <= binding.MaxLabelLen && strings.Trim(label,
			"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@") == ""
		if err := binding.ValidateLabel(label); (err == nil) != labelOK {
			t.Fatalf("ValidateLabel(%q) = %v, want ok=%v", label, err, labelOK)
		}

		if p, err := binding.ParseProtocol(proto); err == nil {
			var p2 binding.Protocol
			if txt, err := p.MarshalText(); err != nil || string(txt) != proto || p2.UnmarshalText(txt) != nil || p2 != p {
				t.Fatalf("Protocol text round trip of %q failed", proto)
			}
		}

		if u, err := settings.ParseUpstream(prefix + ":" + ports); err == nil {
			if u2, err := settings.ParseUpstream(u.String()); err != nil || u2 != u {
				t.Fatalf("settings.ParseUpstream(%q) = %v, %v; want %v", u.String(), u2, err, u)
			}
		}
	})
}
