package cli

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/safepath"
	"github.com/switchyard-project/switchyard/internal/server"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

// Read commands work without the daemon: when no daemon answers on the
// control socket, they read the pinned state read-only, under the state's
// shared lock, as the kernel has it (DESIGN.md, "State and lifecycle").

var bpffsFlag = flagSpec{names: []string{"bpffs"}, value: "DIR", help: "bpf filesystem directory of switchyard's pinned state, read when switchyardd does not answer (default: " + dispatch.DefaultRoot + ")"}

func (inv *invocation) bpffsRoot() string {
	if r := inv.flag("bpffs"); r != "" {
		return r
	}
	return dispatch.DefaultRoot
}

// daemonGone reports whether a dial error means that no daemon serves the
// control socket (rather than one that refuses or is unreachable).
func daemonGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED)
}

// reader is a read command's source: the daemon, or else the pinned state.
type reader struct {
	c           *control.Client      // the daemon, or nil
	d           *dispatch.Dispatcher // the pinned state when no daemon answers
	controlPath string
}

func (r *reader) Close() {
	if r.c != nil {
		r.c.Close()
	}
	if r.d != nil {
		r.d.Close()
	}
}

// dialOrPinned connects to the daemon or, if none answers, opens the
// pinned state of the namespace read-only and says so on stderr.
func (inv *invocation) dialOrPinned() (*reader, error) {
	path, err := inv.controlPath()
	if err != nil {
		return nil, err
	}
	c, err := control.Dial(inv.ctx, path)
	if err == nil {
		return &reader{c: c, controlPath: path}, nil
	}
	if !daemonGone(err) {
		return nil, inv.dialError(path, err)
	}
	derr := inv.dialError(path, err)
	d, err := dispatch.Open(inv.netns, dispatch.Options{Root: inv.bpffsRoot(), ReadOnly: true})
	switch {
	case errors.Is(err, dispatch.ErrNotFound):
		return nil, fmt.Errorf("%w; and there is no pinned state in %s either", derr, inv.bpffsRoot())
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return nil, fmt.Errorf("%w; reading the pinned state instead needs root", derr)
	case err != nil:
		return nil, fmt.Errorf("%w; reading the pinned state instead failed: %w", derr, err)
	}
	fmt.Fprintf(inv.env.Stderr, "switchyard: switchyardd is not running: read from the pinned state in %s\n", d.Dir())
	return &reader{d: d, controlPath: path}, nil
}

// pinnedStatus builds what the daemon's status would say from the pinned
// state: bindings, sockets and counters from the maps, where the sockets
// are bound from the kernel's socket diagnostics, and the policies from
// the settings file the daemon keeps beside its control socket, if it can
// be read. Policy state and counters need the daemon.
func (inv *invocation) pinnedStatus(r *reader, label string) (*control.StatusResponse, error) {
	d := r.d
	counts, err := d.BindingCounts()
	if err != nil {
		return nil, err
	}
	dests, err := d.Destinations()
	if err != nil {
		return nil, err
	}
	counters, _, err := d.Counters()
	if err != nil {
		return nil, err
	}
	byLabel := map[string]*control.LabelStatus{}
	get := func(name string) *control.LabelStatus {
		ls := byLabel[name]
		if ls == nil {
			ls = &control.LabelStatus{Label: name}
			byLabel[name] = ls
		}
		return ls
	}
	for name, n := range counts {
		get(name).Bindings = n
	}
	eps := inv.endpoints()
	for _, dst := range dests {
		ls := get(dst.Label)
		ls.Sockets = append(ls.Sockets, control.SocketStatus{Protocol: dst.Protocol, Family: dst.Family, Local: eps[dst.Cookie], Cookie: dst.Cookie})
	}
	// Leniently: status without the policies beats no status.
	settings, _ := r.settings()
	for name := range settings {
		get(name)
	}
	for name, c := range counters {
		ls := get(name)
		ls.Lookups, ls.Hits, ls.Missing, ls.BadSocket = c.Lookups, c.Hits, c.Missing, c.BadSocket
	}
	for name, s := range settings {
		ls := get(name)
		ls.Policy, _ = control.ParsePolicy(s.Policy) // DecodeSettings checked it
		ls.Upstream = s.Upstream
		if ls.Policy != control.PolicyNone {
			ls.PolicyState = "not known: switchyardd is not running (pinned bypass state and splice workers go on without it)"
		}
	}
	st := &control.StatusResponse{NetNS: d.NetNSCookie()}
	for _, name := range slices.Sorted(maps.Keys(byLabel)) {
		if label != "" && name != label {
			continue
		}
		st.Labels = append(st.Labels, *byLabel[name])
	}
	if label != "" && len(st.Labels) == 0 {
		return nil, fmt.Errorf("status: label %s: %w: no binding, socket or setting has this label: run 'switchyard status' to see the labels", label, dispatch.ErrNotFound)
	}
	return st, nil
}

// endpoints are where the sockets of the namespace are bound, by cookie;
// empty if the kernel does not say.
func (inv *invocation) endpoints() map[uint64]netip.AddrPort {
	eps := map[uint64]netip.AddrPort{}
	ns, err := netns.Open(inv.netns)
	if err != nil {
		return eps
	}
	defer ns.Close()
	ns.Do(func() error {
		found, err := sockinfo.Endpoints()
		if err == nil {
			eps = found
		}
		return err
	})
	return eps
}

// settings returns the label settings recorded with the bindings in force.
// State of a build that kept them only in the file beside the control
// socket has none recorded; then that file is read, with the daemon's own
// path checks and parser. No settings at all is an empty map.
func (r *reader) settings() (map[string]*server.LabelSettings, error) {
	blob, ok, err := r.d.Settings()
	if err != nil {
		return nil, fmt.Errorf("read the recorded label settings: %w", err)
	}
	if !ok {
		path := server.DefaultStatePath(r.controlPath)
		blob, err = safepath.ReadFile("label settings", path, server.MaxStateFile)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	if len(blob) == 0 {
		return nil, nil
	}
	return server.DecodeSettings(blob)
}
