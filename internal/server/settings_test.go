package server

import (
	"errors"
	"reflect"
	"testing"

	"github.com/switchyard-project/switchyard/internal/config"
)

// FuzzRecordedSettings: recorded label settings, which a restarting daemon
// reads, are refused with errBadSettings or read as settings that encode
// and read back the same.
func FuzzRecordedSettings(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"web":{"grants":{"UIDs":[4242],"GIDs":null,"Users":["knot"],"Groups":null}}}`,
		`{"proxied":{"grants":{},"policy":"splice","upstream":"127.0.0.1:same"}}`,
		`{"fast":{"grants":{},"policy":"bypass"}}`,
		`{"x":null}`,
		`{"":{"policy":"bogus"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeSettings(b)
		if err != nil {
			if !errors.Is(err, errBadSettings) {
				t.Fatalf("decode %q: %v, not errBadSettings", b, err)
			}
			return
		}
		enc, err := encodeSettings(m)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeSettings(enc)
		if err != nil {
			t.Fatalf("settings read from %q do not read back: %v", b, err)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("settings read from %q read back as %v, want %v", b, again, m)
		}
	})
}

// The record's form of settings is the one of the file older builds wrote,
// so that the daemon adopts those.
func TestSettingsOfOlderFile(t *testing.T) {
	file := []byte(`{
  "proxied": {
    "grants": {"UIDs": [953], "GIDs": null, "Users": null, "Groups": ["dns"]},
    "policy": "splice",
    "upstream": "127.0.0.1:53"
  }
}`)
	m, err := DecodeSettings(file)
	if err != nil {
		t.Fatal(err)
	}
	want := &LabelSettings{Grants: config.Grants{UIDs: []uint32{953}, Groups: []string{"dns"}}, Policy: "splice", Upstream: "127.0.0.1:53"}
	if got := m["proxied"]; len(m) != 1 || !reflect.DeepEqual(got, want) {
		t.Fatalf("read %+v, want %+v", got, want)
	}
}
