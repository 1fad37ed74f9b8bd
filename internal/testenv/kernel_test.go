package testenv

import (
	"errors"
	"strings"
	"testing"
)

func TestFeatureVerdict(t *testing.T) {
	missing := errors.New("protocol not supported")
	absent := func() error { return missing }
	var loaded bool
	loadable := func() error {
		if loaded {
			return nil
		}
		return missing
	}
	loadOK := func(string) error { loaded = true; return nil }
	loadFails := func(string) error { return errors.New("modprobe: not found") }

	sctp := Feature{Name: "SCTP", Since: "2.6.0", Config: "CONFIG_IP_SCTP", Module: "sctp", Probe: absent}
	mptcp := Feature{Name: "MPTCP", Since: "5.6", Config: "CONFIG_MPTCP", Probe: absent}
	udplite := Feature{Name: "UDP-Lite", Since: "2.6.20", Probe: absent}
	for _, tc := range []struct {
		name    string
		f       Feature
		release string
		config  map[string]string
		load    func(string) error
		skip    bool
		want    string // in the message; "" means go on
	}{
		{"older kernel", mptcp, "5.4.0-generic", nil, loadFails, true, "older than 5.6"},
		{"configured out", sctp, "6.18.44-fc", map[string]string{}, loadFails, true, "built without CONFIG_IP_SCTP (/proc/config.gz)"},
		{"configured n", mptcp, "6.1.0", map[string]string{"CONFIG_MPTCP": "n"}, loadFails, true, "built without CONFIG_MPTCP"},
		{"built in but missing", mptcp, "6.1.0", map[string]string{"CONFIG_MPTCP": "y"}, loadFails, false, "built with CONFIG_MPTCP=y but has no MPTCP"},
		{"module not loadable", sctp, "6.1.0", map[string]string{"CONFIG_IP_SCTP": "m"}, loadFails, false, "could not be loaded"},
		{"no config, new kernel", sctp, "6.1.0", nil, loadFails, false, "no kernel configuration shows it built without CONFIG_IP_SCTP"},
		{"cannot be configured out", udplite, "6.18.0", map[string]string{}, loadFails, false, "cannot be configured out"},
		{"unparsable release fails", mptcp, "weird", nil, loadFails, false, "has no MPTCP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			skip, msg := featureVerdict(tc.f, missing, tc.release, tc.config, "/proc/config.gz", tc.load)
			if skip != tc.skip || !strings.Contains(msg, tc.want) || msg == "" {
				t.Errorf("skip=%v %q; want skip=%v and %q", skip, msg, tc.skip, tc.want)
			}
		})
	}

	// A module that is merely not loaded is loaded, and the test goes on.
	for _, config := range []map[string]string{{"CONFIG_IP_SCTP": "m"}, nil} {
		loaded = false
		f := sctp
		f.Probe = loadable
		if skip, msg := featureVerdict(f, missing, "6.1.0", config, "x", loadOK); skip || msg != "" {
			t.Errorf("config %v, loadable module: skip=%v %q; want to go on", config, skip, msg)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string][3]int{"6.18.44-fc-v1045": {6, 18, 44}, "5.6": {5, 6, 0}, "5.15.0-91-generic": {5, 15, 0}, "6.8.0+": {6, 8, 0}} {
		if got, err := parseVersion(in); err != nil || got != want {
			t.Errorf("parseVersion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "6", "a.b", "6.x.1"} {
		if _, err := parseVersion(in); err == nil {
			t.Errorf("parseVersion(%q) accepted", in)
		}
	}
}
