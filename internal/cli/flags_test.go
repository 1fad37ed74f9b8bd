package cli

import (
	"flag"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

var testSpecs = []flagSpec{
	helpFlag,
	{names: []string{"o", "output"}, value: "FORMAT"},
	{names: []string{"fd"}, value: "N", repeat: true},
	{names: []string{"dry-run", "n"}},
}

func testFlagSet() *flag.FlagSet { return newFlagSet("test", testSpecs) }

func TestParseInterspersed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		pos  []string
		vals map[string][]string
		err  string
	}{
		{args: []string{"a", "-o", "json", "b"}, pos: []string{"a", "b"}, vals: map[string][]string{"o": {"json"}}},
		{args: []string{"a", "b", "--output=yaml", "-n"}, pos: []string{"a", "b"}, vals: map[string][]string{"o": {"yaml"}, "dry-run": {"true"}}},
		{args: []string{"-o", "json", "-output", "table"}, vals: map[string][]string{"o": {"table"}}},
		{args: []string{"--fd", "3", "x", "--fd=-4"}, pos: []string{"x"}, vals: map[string][]string{"fd": {"3", "-4"}}},
		{args: []string{"a", "--", "-o", "b"}, pos: []string{"a", "-o", "b"}},
		{args: []string{"-o", "--", "-n"}, vals: map[string][]string{"o": {"--"}, "dry-run": {"true"}}},
		{args: []string{"-n", "--", "-n"}, pos: []string{"-n"}, vals: map[string][]string{"dry-run": {"true"}}},
		{args: []string{"-", "x"}, pos: []string{"-", "x"}},
		{args: []string{"x", "--frob"}, err: "unknown flag --frob"},
		{args: []string{"--frob=1"}, err: "unknown flag --frob=1"},
		{args: []string{"---o", "json"}, err: "unknown flag ---o"},
		{args: []string{"x", "-o"}, err: "flag -o needs a value (FORMAT)"},
		{args: []string{"--output"}, err: "flag --output needs a value (FORMAT)"},
		{args: []string{"x", "--dry-run=yes"}, err: "flag --dry-run=yes takes no value"},
		{args: []string{"-n=false"}, err: "flag -n=false takes no value"},
	} {
		fs, pos, err := parseInterspersed(testFlagSet, tc.args)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if tc.vals == nil {
			tc.vals = map[string][]string{}
		}
		if got := values(fs); !reflect.DeepEqual(pos, tc.pos) || !reflect.DeepEqual(got, tc.vals) {
			t.Errorf("%q: positional %q flags %q, want %q and %q", tc.args, pos, got, tc.pos, tc.vals)
		}
	}
}

// referenceParse is the CLI's flag parser before it used flag.FlagSet,
// kept as the reference for what the command line accepts. The one change
// is that a boolean flag takes "=true" (flag.Value cannot tell it from the
// flag alone).
func referenceParse(args []string, specs []flagSpec) (pos []string, vals map[string][]string, err error) {
	vals = make(map[string][]string)
	lookup := func(name string) *flagSpec {
		for i := range specs {
			for _, n := range specs[i].names {
				if n == name {
					return &specs[i]
				}
			}
		}
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		name, value, hasValue := strings.Cut(name, "=")
		spec := lookup(name)
		if spec == nil {
			return nil, nil, fmt.Errorf("unknown flag %s", a)
		}
		canon := spec.names[0]
		if spec.value == "" {
			if hasValue && value != "true" {
				return nil, nil, fmt.Errorf("flag %s takes no value", a)
			}
			vals[canon] = append(vals[canon][:0], "true")
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				return nil, nil, fmt.Errorf("flag %s needs a value (%s)", a, spec.value)
			}
			i++
			value = args[i]
		}
		if len(vals[canon]) > 0 && !spec.repeat {
			vals[canon] = vals[canon][:0]
		}
		vals[canon] = append(vals[canon], value)
	}
	return pos, vals, nil
}

// FuzzParseInterspersed checks the FlagSet parser against the reference:
// the same positional arguments and flag values, or both refusing.
func FuzzParseInterspersed(f *testing.F) {
	for _, s := range []string{
		"a -o json b", "--fd 3 x --fd=4 -n", "a -- -o b", "-o -- -n", "-n -- -n", "- x",
		"x --frob", "---o json", "x -o", "--dry-run=yes", "-h", "-o=", "-=x", "-", "--",
		"-o --fd x", "-fd -- -- x", "-n=true y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, " ")
		if len(args) > 16 {
			return
		}
		fs, pos, err := parseInterspersed(testFlagSet, args)
		rpos, rvals, rerr := referenceParse(args, testSpecs)
		if (err != nil) != (rerr != nil) {
			t.Fatalf("%q: error %v, reference %v", args, err, rerr)
		}
		if err != nil {
			return
		}
		if got := values(fs); !reflect.DeepEqual(pos, rpos) || !reflect.DeepEqual(got, rvals) {
			t.Fatalf("%q: positional %q flags %q, reference %q and %q", args, pos, got, rpos, rvals)
		}
	})
}
