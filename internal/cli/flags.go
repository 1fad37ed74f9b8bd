package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Flags are parsed by a flag.FlagSet per command, made from the command's
// flagSpecs; help, the completion scripts and the man page list the flags
// of that FlagSet. Two things the standard parser does not do are added
// around it: flags may follow positional arguments (each positional
// argument ends one fs.Parse, and parsing resumes after it), and a flag may
// have several names (-o and --output set one value).

// flagSpec declares one flag.
type flagSpec struct {
	names  []string // first is canonical; each works with - or --
	value  string   // placeholder of the value; "" for a boolean flag
	repeat bool
	help   string
}

// flagValue is the flag.Value behind every name of one flagSpec. It keeps
// what was given: the last value, or all of them if the flag repeats.
type flagValue struct {
	spec  *flagSpec
	order int // position among the FlagSet's flags, for help
	vals  []string
}

func (v *flagValue) String() string {
	if v == nil || len(v.vals) == 0 {
		return ""
	}
	return v.vals[len(v.vals)-1]
}

// errNoValue is what a boolean flag's Set returns for a value
// (--dry-run=yes); flag calls Set("true") for the flag alone.
var errNoValue = errors.New("takes no value")

func (v *flagValue) Set(s string) error {
	if v.spec.value == "" && s != "true" {
		return errNoValue
	}
	if !v.spec.repeat {
		v.vals = v.vals[:0]
	}
	v.vals = append(v.vals, s)
	return nil
}

// IsBoolFlag tells flag that the flag takes no value.
func (v *flagValue) IsBoolFlag() bool { return v.spec.value == "" }

// newFlagSet makes a FlagSet of specs. It prints nothing: errors are
// returned, and help is the command's.
func newFlagSet(name string, specs []flagSpec) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for i := range specs {
		v := &flagValue{spec: &specs[i], order: i}
		for _, n := range specs[i].names {
			fs.Var(v, n, specs[i].help)
		}
	}
	return fs
}

// flagsOf lists the flags of fs, each once (with all its names), in the
// order they were declared.
func flagsOf(fs *flag.FlagSet) []*flagValue {
	var out []*flagValue
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := f.Value.(*flagValue); ok && !slices.Contains(out, v) {
			out = append(out, v)
		}
	})
	slices.SortFunc(out, func(a, b *flagValue) int { return a.order - b.order })
	return out
}

// specsOf are the flagSpecs of fs's flags, in the order declared.
func specsOf(fs *flag.FlagSet) []flagSpec {
	var out []flagSpec
	for _, v := range flagsOf(fs) {
		out = append(out, *v.spec)
	}
	return out
}

// parseInterspersed parses args with the FlagSet newFS makes, taking flags
// before, between and after positional arguments. Flags are written -name,
// --name, -name=value, --name=value or -name value; "--" ends the flags,
// and a lone "-" is positional. It returns the FlagSet, holding the flags'
// values, and the positional arguments.
func parseInterspersed(newFS func() *flag.FlagSet, args []string) (*flag.FlagSet, []string, error) {
	fs := newFS()
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, nil, flagError(fs, args, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return fs, pos, nil
		}
		// Parse stopped at a positional argument, or after a "--" that
		// ends the flags. A "--" may also be the value of a flag
		// (-f --): then the flags before it, parsed alone, lack a value.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			if err := newFS().Parse(args[:n-1]); err == nil {
				return fs, append(pos, rest...), nil
			}
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// flagError turns an error of fs.Parse(args) into one that quotes the flag
// as it was written.
func flagError(fs *flag.FlagSet, args []string, err error) error {
	msg := err.Error()
	// written is the first of args that names the flag, as written.
	written := func(name string) string {
		for _, a := range args {
			n, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
			if strings.HasPrefix(a, "-") && n == name {
				return a
			}
		}
		return "-" + name
	}
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown flag %s", written(name))
	}
	if s, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return fmt.Errorf("unknown flag %s", s)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		if v, ok := fs.Lookup(name).Value.(*flagValue); ok {
			return fmt.Errorf("flag %s needs a value (%s)", written(name), v.spec.value)
		}
	}
	// flag quotes a Set error with %v: a boolean flag given a value.
	if strings.HasSuffix(msg, ": "+errNoValue.Error()) {
		for _, a := range args {
			n, _, eq := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
			if f := fs.Lookup(n); f != nil && eq && strings.HasPrefix(a, "-") {
				if v, ok := f.Value.(*flagValue); ok && v.IsBoolFlag() {
					return fmt.Errorf("flag %s %w", a, errNoValue)
				}
			}
		}
	}
	return err
}

// values are the flags given, by canonical name.
func values(fs *flag.FlagSet) map[string][]string {
	vals := make(map[string][]string)
	for _, v := range flagsOf(fs) {
		if len(v.vals) > 0 {
			vals[v.spec.names[0]] = v.vals
		}
	}
	return vals
}
