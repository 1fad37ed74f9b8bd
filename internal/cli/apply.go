package cli

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// mayBeOlderDaemon reports whether err is what a daemon that does not speak
// a request's version gives: a version refusal, or (for a large request,
// such as a packed Apply) a connection it hung up.
func mayBeOlderDaemon(err error) bool {
	return errors.Is(err, errors.ErrUnsupported) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// apply sends cfg to the daemon on *c with Apply. A daemon of an older
// release (the CLI was upgraded first) refuses the request's version, or
// hangs up on its first datagram if it is large: then apply asks on a new
// connection, which replaces *c (the old one closed), which versions it
// speaks and, if it does not speak control.ApplyVersion, sends the newest
// form of Apply it reads (packed, or the JSON every daemon reads). Every
// command that sends Apply (apply, export) goes through here.
func (inv *invocation) apply(c **control.Client, cfg control.Config, dryRun bool) (*control.ApplyResponse, error) {
	res, err := (*c).Apply(inv.ctx, cfg, dryRun)
	if err == nil {
		return res, nil
	}
	protocols, err := inv.redialOlder(c, err, control.ApplyVersion)
	if err != nil {
		return nil, err
	}
	if slices.Contains(protocols, control.PackedVersion) {
		return (*c).ApplyIn(inv.ctx, control.PackedVersion, cfg, dryRun)
	}
	return (*c).ApplyIn(inv.ctx, control.ProtocolVersion, cfg, dryRun)
}

// status asks the daemon on *c for the status of label ("" for all) in
// control.StatusVersion, or, from a daemon of an older release, in the
// version every daemon reads (without the policies' kernel bytes).
func (inv *invocation) status(c **control.Client, label string) (*control.StatusResponse, error) {
	st, err := (*c).StatusIn(inv.ctx, control.StatusVersion, label)
	if err == nil {
		return st, nil
	}
	if _, err := inv.redialOlder(c, err, control.StatusVersion); err != nil {
		return nil, err
	}
	return (*c).Status(inv.ctx, label)
}

// redialOlder looks at err, the failure of a request of version want on
// *c. If it is what a daemon of an older release gives (mayBeOlderDaemon),
// it replaces *c with a new connection (the old one closed) and returns
// the protocol versions the daemon speaks, for the caller to ask again in
// one of them; else, or if the daemon speaks want after all, it returns
// err.
func (inv *invocation) redialOlder(c **control.Client, err error, want uint16) ([]uint16, error) {
	if !mayBeOlderDaemon(err) {
		return nil, err
	}
	(*c).Close()
	nc, derr := inv.dial()
	if derr != nil {
		return nil, derr // *c stays, closed: closing it again is harmless
	}
	*c = nc
	v, verr := nc.Version(inv.ctx)
	if verr != nil || slices.Contains(v.Protocols, want) {
		return nil, err
	}
	return v.Protocols, nil
}

func runApply(inv *invocation) error {
	if err := inv.wantArgs(0, 0); err != nil {
		return err
	}
	file := inv.flag("f")
	if file == "" {
		return inv.usage("no config file given: pass -f FILE ('-' for stdin)")
	}
	// What apply allocates stays live until it is done (the file, the
	// bindings, the request, their sorted copy), so the collector has
	// little to take back: at a million bindings its second run cost a
	// tenth of the parse's CPU. Letting the heap grow to five times what
	// is live between runs, rather than twice, spares that run at the
	// same peak.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	cfg, err := loadConfig(inv.env, file)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	req, err := toControlConfig(cfg)
	if err != nil {
		return fmt.Errorf("apply: %s: %w: fix the file and apply it again", file, err)
	}
	dryRun := inv.has("dry-run")

	c, err := inv.dial()
	if err != nil {
		return err
	}
	defer func() { c.Close() }()
	res, err := inv.apply(&c, req, dryRun)
	if err != nil {
		return inv.requestError("", err)
	}
	w := inv.stdout()
	if res.Diff.Empty() {
		fmt.Fprintln(w, "no changes")
		return nil
	}
	config.WriteDiff(w, res.Diff.AddBindings, res.Diff.RemoveBindings)
	io.WriteString(w, formatLabelChanges(res.Diff.Labels))
	if dryRun || !res.Applied {
		fmt.Fprintln(w, "dry run: nothing changed; run without --dry-run to apply")
	}
	return nil
}

// loadConfig reads and validates a config file; "-" is stdin. Problems in the
// file come back one per line, each naming its line in the file.
func loadConfig(env Env, file string) (*config.Config, error) {
	var r io.Reader
	if file == "-" {
		r = env.Stdin
	} else {
		f, err := env.Open(file)
		if err != nil {
			return nil, fmt.Errorf("%w: check the path given with -f", err)
		}
		defer f.Close()
		r = f
	}
	cfg, err := config.Parse(r)
	if err == nil {
		return cfg, nil
	}
	if !errors.Is(err, config.ErrInvalid) {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var lines []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			lines = append(lines, e.Error())
		}
	} else {
		lines = []string{err.Error()}
	}
	if len(lines) == 1 {
		return nil, fmt.Errorf("%s: %w: fix the file and apply it again", file, err)
	}
	return nil, fmt.Errorf("%s has %d problems; fix them and apply it again:\n%w", file, len(lines), err)
}

// toControlConfig turns a config file into the request that apply sends.
func toControlConfig(cfg *config.Config) (control.Config, error) {
	out := control.Config{Bindings: cfg.Bindings}
	if out.Bindings == nil {
		out.Bindings = []binding.Binding{}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Labels)) {
		out.Labels = append(out.Labels, settings.Named{Name: name, Label: cfg.Labels[name]})
	}
	// config.Parse gives only bindings that validate (FuzzParse holds it
	// to that), and sending validates them again: check the labels here,
	// not a million bindings twice more.
	labels := control.Config{Labels: out.Labels}
	if err := labels.Validate(); err != nil {
		return control.Config{}, err
	}
	return out, nil
}

// formatLabelChanges renders label changes in the style of
// config.FormatLabelDiff, a removed and an added line for a changed label:
//
//	$ switchyard apply -f switchyard.yaml
//	- label web policy none
//	+ label web policy splice upstream 10.0.0.5:same users knot
func formatLabelChanges(cs []control.LabelChange) string {
	var b strings.Builder
	for _, c := range cs {
		if c.Old != nil {
			fmt.Fprintf(&b, "- label %s %s\n", c.Label, describeSettings(c.Old))
		}
		if c.New != nil {
			fmt.Fprintf(&b, "+ label %s %s\n", c.Label, describeSettings(c.New))
		}
	}
	return b.String()
}

func describeSettings(s *settings.Named) string {
	d := "policy " + s.Kind.String()
	if !s.Upstream.IsZero() {
		d += " upstream " + s.Upstream.String()
	}
	if s.Engine != settings.Userspace {
		d += " engine " + string(s.Engine)
	}
	list := func(ids []uint32, names []string) string {
		var out []string
		for _, id := range ids {
			out = append(out, strconv.FormatUint(uint64(id), 10))
		}
		return strings.Join(append(out, names...), ",")
	}
	if u := list(s.Grants.UIDs, s.Grants.Users); u != "" {
		d += " users " + u
	}
	if g := list(s.Grants.GIDs, s.Grants.Groups); g != "" {
		d += " groups " + g
	}
	return d
}
