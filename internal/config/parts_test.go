package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// A bindings list read in parts on several CPUs gives the config, or the
// errors (each naming its line and entry), that reading it in one part and
// reading it with the YAML parser alone give, with mistakes on either side
// of every cut and an entry that spans lines.
func TestParseInParts(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("version: 1\nbindings:\n")
	for i := range 3000 {
		switch i {
		case 999, 1000, 2001:
			// Near the cuts of three parts: a bad prefix, a bad port
			// and a repeat of entry 5.
			fmt.Fprintf(&b, "  - {label: svc, protocol: tcp, prefix: %s, ports: \"%s\"}\n",
				map[int]string{999: "10.0.0.300/32", 1000: "10.0.1.0/24", 2001: "10.0.0.5"}[i], map[int]string{999: "80", 1000: "70000", 2001: "80"}[i])
		case 1500:
			b.WriteString("  - label: block\n    protocol: udp\n\n    prefix: 2001:db8::/64 # c\n    ports: '*'\n")
		default:
			fmt.Fprintf(&b, "  - {label: svc, protocol: tcp, prefix: 10.0.%d.%d/32, ports: \"80\"}\n", i>>8, i&255)
		}
	}
	b.WriteString("labels:\n  svc: {policy: bypass}\n")
	src := []byte(b.String())
	if cuts := cutPoints(src, strings.Index(b.String(), "  - "), 2, partLimits); len(cuts) != 2 {
		t.Fatalf("the list is cut at %v, want two cuts", cuts)
	}
	one, oerr := parseBytesLimits(src, "f.yaml", true, limits{fileSize: MaxFileSize, bindings: MaxBindings})
	yml, yerr := parseBytesLimits(src, "f.yaml", false, defaultLimits)
	parts, perr := parseBytesLimits(src, "f.yaml", true, partLimits)
	if oerr == nil || yerr == nil || perr == nil {
		t.Fatalf("errors: one part %v, YAML %v, parts %v; want an error from each", oerr, yerr, perr)
	}
	for _, want := range []string{"f.yaml:1002: bindings[999]", "f.yaml:1003: bindings[1000]", "f.yaml:2008: bindings[2001]", "repeats bindings[5] (line 8"} {
		if !strings.Contains(perr.Error(), want) {
			t.Errorf("the error read in parts does not say %q:\n%v", want, perr)
		}
	}
	if perr.Error() != oerr.Error() || perr.Error() != yerr.Error() || parts != nil || one != nil || yml != nil {
		t.Fatalf("in parts:\n%v\nin one part:\n%v\nYAML only:\n%v", perr, oerr, yerr)
	}

	// Without the mistakes, the same bindings.
	fixed := strings.NewReplacer("10.0.0.300/32", "10.0.3.232/32", "70000", "7000", "prefix: 10.0.0.5,", "prefix: 10.0.7.209,").Replace(b.String())
	src = []byte(fixed)
	one, oerr = parseBytesLimits(src, "", true, limits{fileSize: MaxFileSize, bindings: MaxBindings})
	parts, perr = parseBytesLimits(src, "", true, partLimits)
	yml, yerr = parseBytesLimits(src, "", false, defaultLimits)
	if oerr != nil || perr != nil || yerr != nil {
		t.Fatalf("fixed list: %v / %v / %v", oerr, perr, yerr)
	}
	if len(parts.Bindings) != 3000 || !reflect.DeepEqual(parts, one) || !reflect.DeepEqual(parts, yml) {
		t.Fatalf("in parts %d bindings, in one part %d, YAML only %d; or they differ", len(parts.Bindings), len(one.Bindings), len(yml.Bindings))
	}
}
