package settings

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestUpstream(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Upstream
		dial string
	}{
		{"10.0.0.5:same", Upstream{"10.0.0.5", 0}, "10.0.0.5:8080"},
		{"10.0.0.5:443", Upstream{"10.0.0.5", 443}, "10.0.0.5:443"},
		{"[2001:db8::5]:same", Upstream{"2001:db8::5", 0}, "[2001:db8::5]:8080"},
		{"[fe80::1%eth0]:80", Upstream{"fe80::1%eth0", 80}, "[fe80::1%eth0]:80"},
		// A VLAN interface's name has a dot; an index is a zone too.
		{"[fe80::1%eth0.100]:53", Upstream{"fe80::1%eth0.100", 53}, "[fe80::1%eth0.100]:53"},
		{"[fe80::1%2]:same", Upstream{"fe80::1%2", 0}, "[fe80::1%2]:8080"},
		{"backend.example.:65535", Upstream{"backend.example.", 65535}, "backend.example.:65535"},
		{"_srv.b-1.example:1", Upstream{"_srv.b-1.example", 1}, "_srv.b-1.example:1"},
		{"localhost:same", Upstream{"localhost", 0}, "localhost:8080"},
		{"1a.example.9x:2", Upstream{"1a.example.9x", 2}, "1a.example.9x:2"},
	} {
		u, err := ParseUpstream(tc.in)
		if err != nil || u != tc.want {
			t.Errorf("ParseUpstream(%q) = %+v, %v", tc.in, u, err)
			continue
		}
		if u.String() != tc.in {
			t.Errorf("String() = %q, want %q", u, tc.in)
		}
		if d := u.Dial(8080); d != tc.dial {
			t.Errorf("Dial(8080) = %q, want %q", d, tc.dial)
		}
	}
	for _, in := range []string{
		"", "host", ":80", "h:", "h:0", "h:65536", "h:+80", "h:-1", "2001:db8::1:80", "-h:80", "a..b:80",
		"h_:x", "[::1]:same:1", "bad!host:80", "-x:80", "a-.b:80", "10.0.0.300:80", "1.2.3:80", "[fe80::1%a b]:80", "[fe80::1%]:80",
		"[fe80::1%a/b]:80", "[fe80::1%.]:80", "[fe80::1%..]:80", "[fe80::1%a]b]:80",
		"back end:80", "h\x00:80", "é.example:80", strings.Repeat("a", 64) + ".example:80",
		strings.Repeat("a.", 127) + "aa:80", "[2001:db8::1]:http",
	} {
		if u, err := ParseUpstream(in); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseUpstream(%q) = %+v, %v, want an ErrInvalid", in, u, err)
		}
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"none", "bypass", "splice"} {
		k, err := ParseKind(s)
		if err != nil || k.String() != s {
			t.Errorf("ParseKind(%q) = %v, %v", s, k, err)
		}
	}
	if _, err := ParseKind("None"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseKind(None) = %v", err)
	}
	for _, tc := range []struct {
		kind, up, engine string
		want             string // error text, or "" for none
	}{
		{"splice", "backend:80", "", ""},
		{"splice", "10.0.0.1:same", "kernel", ""},
		{"splice", "[2001:db8::1]:65535", "userspace", ""},
		{"bypass", "", "", ""},
		{"none", "", "", ""},
		{"splice", "", "", "policy splice needs an upstream; give host:port, or host:same"},
		{"bypass", "h:1", "", "takes no upstream; only splice does"},
		{"none", "", "kernel", "engine kernel: policy none has no engine"},
		{"splice", "h:1", "sk_skb", `engine "sk_skb": invalid`},
		{"splice", "back end:80", "", `upstream "back end:80": invalid`},
	} {
		p, err := ParsePolicy(tc.kind, tc.up, tc.engine)
		if tc.want == "" {
			if err != nil || p.Validate() != nil {
				t.Errorf("ParsePolicy(%q, %q, %q) = %v", tc.kind, tc.up, tc.engine, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePolicy(%q, %q, %q) = %v, want %q", tc.kind, tc.up, tc.engine, err, tc.want)
		}
	}
}

// The control protocol's bytes for label settings, as 4362dae's clients
// send them and its daemon sends them, read as the same settings; what
// this build sends for them is the same bytes.
func TestNamedWire(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		wire string
		want Named
	}{
		{`{"label":"web","policy":"splice","upstream":"backend.example:8080","users":["1000","www-data"],"groups":["web"]}`,
			Named{Name: "web", Label: Label{Grants: Grants{UIDs: []uint32{1000}, Users: []string{"www-data"}, Groups: []string{"web"}}, Policy: Policy{Kind: Splice, Upstream: Upstream{"backend.example", 8080}}}}},
		{`{"label":"dns-public","policy":"none"}`, Named{Name: "dns-public"}},
		{`{"label":"k","policy":"splice","upstream":"[2001:db8::1]:same","engine":"kernel"}`,
			Named{Name: "k", Label: Label{Policy: Policy{Kind: Splice, Upstream: Upstream{Host: "2001:db8::1"}, Engine: Kernel}}}},
	} {
		var n Named
		if err := json.Unmarshal([]byte(tc.wire), &n); err != nil || !reflect.DeepEqual(n, tc.want) {
			t.Errorf("%s: read %+v, %v", tc.wire, n, err)
		}
		b, err := json.Marshal(tc.want)
		if err != nil || string(b) != tc.wire {
			t.Errorf("encoded %s, %v, want %s", b, err, tc.wire)
		}
	}
	for _, bad := range []string{
		`{"label":"a","policy":"fast"}`,
		`{"label":"a","policy":"splice","upstream":"bad!host:80"}`,
		`{"label":"a","policy":"none","colour":"red"}`,
		`{"label":"a","policy":"splice","upstream":"h:1","engine":""}`,
	} {
		var n Named
		if err := json.Unmarshal([]byte(bad), &n); err == nil {
			t.Errorf("%s: read %+v", bad, n)
		}
	}
}

// FuzzParseUpstream: an upstream that parses prints as itself and parses
// again to the same value; its host passes the strict rules.
func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{"10.0.0.5:same", "[fe80::1%eth0]:80", "backend.example.:65535", "bad!host:80", "a..b:80", "-x:80", "1.2.3.999:1", "h:+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUpstream(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseUpstream(%q): %v does not match ErrInvalid", s, err)
			}
			return
		}
		again, err := ParseUpstream(u.String())
		if err != nil || again != u {
			t.Fatalf("ParseUpstream(%q) = %+v; its String %q reads as %+v, %v", s, u, u.String(), again, err)
		}
		if u.IsZero() || u.Host == "" {
			t.Fatalf("ParseUpstream(%q) = zero upstream", s)
		}
		for i := 0; i < len(u.Host); i++ {
			if c := u.Host[i]; c <= ' ' || c >= 0x7f {
				t.Fatalf("ParseUpstream(%q): host %q has byte %#x", s, u.Host, c)
			}
		}
		if _, err := ParsePolicy("splice", s, ""); err != nil {
			t.Fatalf("ParsePolicy(splice, %q) = %v", s, err)
		}
	})
}
