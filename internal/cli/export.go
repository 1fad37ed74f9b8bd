package cli

import (
	"errors"
	"fmt"
	"maps"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// exportConfig prints what is in force as a config file that apply accepts
// and that applies as "no changes": every binding and every label's
// settings (policy, upstream, grants).
//
// From the daemon, both come from one dry run of apply with an empty
// config, whose diff names every binding and the whole settings of every
// label, at one instant; the control protocol has no other request that
// returns the grants, and a dry run changes nothing. It needs root, as
// apply does. Without a daemon, the bindings come from the pinned maps and
// the settings from the file the daemon keeps beside its control socket.
func (inv *invocation) exportConfig(r *reader) error {
	if len(inv.args) > 0 {
		return inv.usage("-o yaml exports the whole config, which apply would make the only one in force; leave out LABEL")
	}
	cfg := &config.Config{Version: config.CurrentVersion, Labels: map[string]settings.Label{}}
	if r.c != nil {
		res, err := inv.apply(&r.c, control.Config{Bindings: []binding.Binding{}}, true)
		if errors.Is(err, control.ErrPermission) {
			return fmt.Errorf("bindings: -o yaml needs root: the label settings (grants) are read with a dry run of apply, which only root may make; run it as root (sudo)")
		}
		if err != nil {
			return inv.requestError("", err)
		}
		if res.Applied {
			return fmt.Errorf("bindings: switchyardd applied what was sent as a dry run: export stopped; check its log (journalctl -u switchyardd)")
		}
		cfg.Bindings = res.Diff.RemoveBindings
		for _, ch := range res.Diff.Labels {
			if ch.Old == nil {
				continue
			}
			cfg.Labels[ch.Label] = ch.Old.Label
		}
	} else {
		bs, err := r.d.Bindings()
		if err != nil {
			return fmt.Errorf("bindings: read the pinned bindings: %w", err)
		}
		cfg.Bindings = bs
		saved, err := r.settings()
		if err != nil {
			return fmt.Errorf("bindings: label settings: %w: without them the export would drop policies and grants; start switchyardd and export again", err)
		}
		maps.Copy(cfg.Labels, saved)
	}
	binding.Sort(cfg.Bindings)
	out, err := config.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("bindings: %w", err)
	}
	_, err = inv.stdout().Write(out)
	return err
}
