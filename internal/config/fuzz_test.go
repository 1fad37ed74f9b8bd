package config

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error is an invalid
// config error, that the fast scanner and the YAML-only path agree
// exactly, and so does the fast scanner reading the bindings in parts as
// small as they can be, and that every accepted config is valid and
// survives Marshal/Parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte(generate(3, false)))
	f.Add([]byte(generate(3, true)))
	for _, tc := range parseErrorCases {
		f.Add([]byte(tc.src))
	}
	for _, tc := range acceptedCases {
		f.Add([]byte(tc.src))
	}
	for _, s := range []string{
		"version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: fe80::/10, ports: \"1\"}  # c\n  # c\n\nlabels: {a: {policy: bypass}}\n",
		"version: 1\nbindings:\n  - label: a\n    protocol: udp # c\n    prefix: 'a:b::/32'\n    ports: \"*\"\ndaemon: {}\n",
		"version: 1\nbindings:\n  - {label: x, protocol: tcp, prefix: 1.2.3.4, ports: 1}\nbindings:\n  - {label: y, protocol: tcp, prefix: 1.2.3.4, ports: 1}\n",
		"version: 1\ndaemon: {bypass_cgroup: \"x\nbindings:\n  - {label: a, protocol: tcp, prefix: 1.2.3.4, ports: 1}\n\"}\n",
		"%YAML 1.2\n---\nversion: 1\n",
		"version: 1\nbindings: &a\n  - {label: a, protocol: tcp, prefix: 1.2.3.4, ports: 1}\nlabels: *a\n",
		"version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: 1.2.3.4, ports: 1}\n...\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ferr := parseBytes(data, "", true)
		slow, serr := parseBytes(data, "", false)
		if (ferr == nil) != (serr == nil) || (ferr != nil && ferr.Error() != serr.Error()) {
			_, took := scanBindings(data)
			t.Fatalf("fast path (taken: %v) and YAML-only path disagree on %q:\n fast: %v\n slow: %v", took, data, ferr, serr)
		}
		parts, perr := parseBytesLimits(data, "", true, partLimits)
		if (ferr == nil) != (perr == nil) || (ferr != nil && ferr.Error() != perr.Error()) || !reflect.DeepEqual(fast, parts) {
			t.Fatalf("the fast path in one part and in parts disagree on %q:\n one: %v %+v\n parts: %v %+v", data, ferr, fast, perr, parts)
		}
		if ferr != nil {
			if !errors.Is(ferr, ErrInvalid) {
				t.Fatalf("error is not an invalid config error: %v", ferr)
			}
			return
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast path and YAML-only path disagree on %q:\n fast: %+v\n slow: %+v", data, fast, slow)
		}
		if err := fast.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v\n%q", err, data)
		}
		for _, b := range fast.Bindings {
			if b.Prefix != b.Prefix.Masked() {
				t.Fatalf("binding %v has host bits", b)
			}
		}
		out, err := Marshal(fast)
		if err != nil {
			t.Fatalf("Marshal of an accepted config: %v\n%q", err, data)
		}
		back, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("Parse(Marshal()): %v\n%s", err, out)
		}
		if !reflect.DeepEqual(back, fast) {
			t.Fatalf("round trip changed the config:\n%s\n got %+v\nwant %+v", out, back, fast)
		}
		if len(fast.Bindings) > 0 {
			if _, ok := scanBindings(out); !ok {
				t.Fatalf("Marshal output does not take the fast path:\n%s", out)
			}
		}
	})
}

// partLimits cuts any bindings list into three parts where it can.
var partLimits = limits{fileSize: MaxFileSize, bindings: MaxBindings, parts: 3, partBytes: 1, partItems: 1}
