package settings

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzRecordedSettings: recorded label settings, which a restarting daemon
// reads, are refused with ErrBadState or read as settings that encode and
// read back the same.
func FuzzRecordedSettings(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"web":{"grants":{"UIDs":[4242],"GIDs":null,"Users":["knot"],"Groups":null}}}`,
		`{"proxied":{"grants":{},"policy":"splice","upstream":"127.0.0.1:same"}}`,
		`{"k":{"grants":{},"policy":"splice","upstream":"backend:443","engine":"kernel"}}`,
		`{"fast":{"grants":{},"policy":"bypass"}}`,
		`{"old":{"grants":{},"policy":"splice","upstream":"bad!host:80"}}`,
		`{"x":null}`,
		`{"":{"policy":"bogus"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, _, err := DecodeState(b)
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("decode %q: %v, not ErrBadState", b, err)
			}
			return
		}
		enc, err := EncodeState(m)
		if err != nil {
			t.Fatal(err)
		}
		again, notes, err := DecodeState(enc)
		if err != nil || len(notes) > 0 {
			t.Fatalf("settings read from %q do not read back: %v %q", b, err, notes)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("settings read from %q read back as %v, want %v", b, again, m)
		}
	})
}

// The settings file and records 4362dae wrote (its encodeSettings and
// persist, json of server.LabelSettings) read as the same settings.
func TestStateOf4362dae(t *testing.T) {
	t.Parallel()
	file := []byte(`{
  "proxied": {
    "grants": {"UIDs": [953], "GIDs": null, "Users": null, "Groups": ["dns"]},
    "policy": "splice",
    "upstream": "127.0.0.1:53"
  },
  "fast": {"grants":{"UIDs":null,"GIDs":null,"Users":null,"Groups":null},"policy":"bypass"},
  "plain": {"grants":{"UIDs":null,"GIDs":[7],"Users":["knot"],"Groups":null}},
  "every": {"grants":{"UIDs":null,"GIDs":null,"Users":null,"Groups":null},"policy":"splice","upstream":"[2001:db8::5]:same"},
  "vlan": {"grants":{"UIDs":null,"GIDs":null,"Users":null,"Groups":null},"policy":"splice","upstream":"[fe80::1%eth0.100]:53"}
}`)
	m, notes, err := DecodeState(file)
	if err != nil || len(notes) > 0 {
		t.Fatal(err, notes)
	}
	want := map[string]Label{
		"proxied": {Grants: Grants{UIDs: []uint32{953}, Groups: []string{"dns"}}, Policy: Policy{Kind: Splice, Upstream: Upstream{"127.0.0.1", 53}}},
		"fast":    {Policy: Policy{Kind: Bypass}},
		"plain":   {Grants: Grants{GIDs: []uint32{7}, Users: []string{"knot"}}},
		"every":   {Policy: Policy{Kind: Splice, Upstream: Upstream{Host: "2001:db8::5"}}},
		"vlan":    {Policy: Policy{Kind: Splice, Upstream: Upstream{"fe80::1%eth0.100", 53}}},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("read %+v, want %+v", m, want)
	}
	// What this build writes keeps 4362dae's field names and spellings,
	// so that the older build reads it too.
	enc, err := EncodeState(map[string]Label{"proxied": want["proxied"]})
	if err != nil {
		t.Fatal(err)
	}
	const wantEnc = `{"proxied":{"grants":{"UIDs":[953],"GIDs":null,"Users":null,"Groups":["dns"]},"policy":"splice","upstream":"127.0.0.1:53"}}`
	if string(enc) != wantEnc {
		t.Fatalf("encoded %s, want %s", enc, wantEnc)
	}
}

// An upstream that 4362dae's looser check let through, and that no
// resolver would look up, does not stop the daemon: the label keeps its
// grants, its policy is none, and a note says why.
func TestStateLooseUpstream(t *testing.T) {
	t.Parallel()
	for _, up := range []string{"bad!host:80", "a..b:80", "-x:80", "a..b:same"} {
		b := []byte(`{"old":{"grants":{"UIDs":[5],"GIDs":null,"Users":null,"Groups":null},"policy":"splice","upstream":"` + up + `"}}`)
		m, notes, err := DecodeState(b)
		if err != nil {
			t.Fatalf("%s: %v", up, err)
		}
		if got := m["old"]; got.Kind != None || !got.Upstream.IsZero() || !reflect.DeepEqual(got.Grants.UIDs, []uint32{5}) {
			t.Errorf("%s: read %+v", up, got)
		}
		if len(notes) != 1 || !strings.Contains(notes[0], "label old: policy splice to "+`"`+up+`"`+" dropped to none") {
			t.Errorf("%s: notes %q", up, notes)
		}
	}
	// Damage that no build wrote is still refused.
	for _, b := range []string{
		`{"old":{"policy":"splice","upstream":"host:0"}}`,
		`{"old":{"policy":"splice","upstream":"host"}}`,
		`{"old":{"policy":"bypass","upstream":"bad!host:80"}}`,
		`{"old":{"policy":"splice","upstream":"bad!host:80","engine":"kernel"}}`,
		`{"old":{"policy":"splice","upstream":"h:1","engine":""}}`,
		`{"old":{"grants":{"UIDs":[4294967295]}}}`,
	} {
		if m, _, err := DecodeState([]byte(b)); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: read %+v, %v", b, m, err)
		}
	}
}
