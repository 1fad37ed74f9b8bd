package server

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Label settings are recorded with the bindings, in the dispatcher's record
// (dispatch.Replace, SetSettings), so that a change of both is one atomic
// commit and a restarted daemon finds both of before or both of after. The
// JSON file at StatePath is a copy for readers without a daemon, written
// after each commit; the daemon reads it only to adopt the settings of a
// build that kept them there alone.
//
// Every change of bindings together with settings (apply, reload) and of
// settings (policy) is one transaction, under txMu so that two never
// interleave: the policies that change are put in force first, label by
// label; if one fails, those put in force are set back, in reverse, and
// nothing else changes; then the bindings and settings are committed at
// once (a failure sets the policies back too, unless the dispatcher says
// the change is in force anyway: dispatch.ErrUnfinished); last, the
// settings in memory are replaced.

// policyOf is a label's policy in m (none if absent).
func policyOf(m map[string]settings.Label, label string) settings.Policy {
	return m[label].Policy
}

// enforced is a policy change put in force, to be set back on failure.
type enforced struct {
	label    string
	from, to settings.Policy
}

// enforceAll puts in force the policies of next that differ from those of
// cur, in label order. If one fails, it sets back those it changed and
// returns an error naming the label.
func (s *Server) enforceAll(cur, next map[string]settings.Label) ([]enforced, error) {
	var done []enforced
	for _, name := range slices.Sorted(maps.Keys(unionKeys(cur, next))) {
		from, to := policyOf(cur, name), policyOf(next, name)
		if from == to {
			continue
		}
		if err := s.enforce(name, from, to); err != nil {
			s.rollback(done)
			return nil, fmt.Errorf("label %s: policy %s could not be put in force, so nothing changed: %w", name, to.Kind, err)
		}
		done = append(done, enforced{name, from, to})
	}
	return done, nil
}

// rollback sets back policy changes, the last first.
func (s *Server) rollback(done []enforced) {
	for i := len(done) - 1; i >= 0; i-- {
		e := done[i]
		if err := s.enforce(e.label, e.to, e.from); err != nil {
			s.log.Error("policy not set back after a failed change", "label", e.label, "policy", e.from.String(), "err", err)
		}
	}
}

// bindingSource is a binding set to apply: the n bindings that all
// yields, the same each time it is called (dispatch.Dispatcher.ReplaceSeq).
type bindingSource struct {
	n   int
	all func(yield func(*binding.Binding) bool)
}

// listSource is the bindings of bs.
func listSource(bs []binding.Binding) *bindingSource {
	return &bindingSource{len(bs), binding.List(bs).All}
}

// transact makes next the label settings and, unless bindings is nil,
// bindings the binding set, as one transaction (see above), and returns
// what changed of the bindings (nil if bindings is nil). The caller holds
// txMu; principals are next's resolved grants.
func (s *Server) transact(bindings *bindingSource, next map[string]settings.Label, principals map[string]config.Principals) (*dispatch.Diff, error) {
	blob, err := settings.EncodeState(next)
	if err != nil {
		return nil, err
	}
	cur := s.labelsNow()
	done, err := s.enforceAll(cur, next)
	if err != nil {
		return nil, err
	}
	defer s.snaps.changed()
	var diff *dispatch.Diff
	if bindings != nil {
		diff, err = s.d.ReplaceSeq(bindings.n, bindings.all, blob, false)
	} else {
		err = s.d.SetSettings(blob)
	}
	if err != nil && !errors.Is(err, dispatch.ErrUnfinished) {
		s.rollback(done)
		return nil, err
	}
	// From here on next is in force: the bindings and the settings the
	// record holds, which a restarted daemon puts in force, also when
	// the dispatcher failed to finish the change (ErrUnfinished); its
	// policies stay, and the caller reports the error.
	s.mu.Lock()
	s.labels, s.principals = next, principals
	s.mu.Unlock()
	s.mirror()
	if err != nil {
		s.log.Error("a change is in force but was not finished; the next change finishes it", "err", err)
		return nil, err
	}
	return diff, nil
}

// labelsNow is the settings in force; the caller holds txMu, so they do
// not change meanwhile.
func (s *Server) labelsNow() map[string]settings.Label {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.labels
}

// mirror writes the settings in force to the file for readers without a
// daemon. The record is what counts, so a failure is only logged.
func (s *Server) mirror() {
	if err := s.persist(); err != nil {
		s.log.Warn("label settings file not updated (the settings are recorded in the dispatch state)", "err", err)
	}
}
