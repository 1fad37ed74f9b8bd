package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/safepath"
	"github.com/switchyard-project/switchyard/internal/server"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Read commands work without the daemon: when no daemon answers on the
// control socket, they read the pinned state read-only, under the state's
// shared lock, as the kernel has it (README, "Reading without the daemon").

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
	stderr      io.Writer // where the notes of reading old settings go
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
	return &reader{d: d, controlPath: path, stderr: inv.env.Stderr}, nil
}

// pinnedStatus builds what the daemon's status would say from the pinned
// state: bindings, sockets and counters from the maps, where the sockets
// are bound from the kernel's socket diagnostics, and the policies from
// the settings file the daemon keeps beside its control socket, if it can
// be read. Policy state and counters need the daemon.
func (inv *invocation) pinnedStatus(r *reader, label string) (*control.StatusResponse, error) {
	counts, err := r.d.BindingCounts()
	if err != nil {
		return nil, err
	}
	// Leniently: status without the policies beats no status, but say
	// why they are missing.
	labels, err := r.settings()
	if err != nil {
		fmt.Fprintf(inv.env.Stderr, "switchyard: status: label settings not read, so no policy is shown: %v\n", err)
	}
	endpoints := func() map[uint64]netip.AddrPort {
		eps, _ := server.Endpoints(inv.netns)
		return eps
	}
	unknown := func(byLabel map[string]*control.LabelStatus) {
		for _, ls := range byLabel {
			if ls.Kind != settings.None {
				ls.PolicyState = "not known: switchyardd is not running (pinned bypass state and splice workers go on without it)"
			}
		}
	}
	st, err := server.BuildStatus(r.d, counts, labels, endpoints, unknown, label)
	if err != nil {
		return nil, err
	}
	if label != "" && len(st) == 0 {
		return nil, fmt.Errorf("status: label %s: %w: no binding, socket or setting has this label: run 'switchyard status' to see the labels", label, dispatch.ErrNotFound)
	}
	return &control.StatusResponse{NetNS: r.d.NetNSCookie(), Labels: st}, nil
}

// settings returns the label settings recorded with the bindings in force.
// State of a build that kept them only in the file beside the control
// socket has none recorded; then that file is read, with the daemon's own
// path checks and parser. No settings at all is an empty map.
func (r *reader) settings() (map[string]settings.Label, error) {
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
	m, notes, err := settings.DecodeState(blob)
	for _, n := range notes {
		// What the daemon logs when it reads the same state.
		fmt.Fprintf(r.stderr, "switchyard: label settings: %s\n", n)
	}
	return m, err
}
