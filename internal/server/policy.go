package server

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/policy"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Connection policies are carried out by a policy.Manager. If it could not
// be opened (no cgroup v2, programs refused), the daemon still dispatches and
// says why policies are unavailable.

// SetPolicies gives the server its policy manager, or the reason there is
// none, and puts in force the policies of the label settings.
func (s *Server) SetPolicies(ctx context.Context, pm *policy.Manager, why string) {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	s.mu.Lock()
	s.pm, s.pmWhy, s.pmCtx = pm, why, ctx
	s.mu.Unlock()
	for name, l := range s.Labels() {
		if l.Kind == settings.None {
			continue
		}
		if err := s.enforce(name, settings.Policy{}, l.Policy); err != nil {
			s.log.Error("policy not in force", "label", name, "policy", l.Policy.String(), "err", err)
		}
	}
	if pm != nil {
		// A change interrupted after it put a policy in force and
		// before its commit leaves bypass on where the recorded
		// settings do not ask for it (workers left over, and the state
		// of policies no label uses, are settled below).
		states, err := pm.Status()
		if err != nil {
			s.log.Warn("policy status", "err", err)
		}
		for name, st := range states {
			if policyOf(s.labels, name).Kind != settings.Bypass && strings.HasPrefix(st, "bypass") {
				s.log.Warn("bypass in force without its setting; switching it off", "label", name)
				if err := pm.SetBypass(name, false); err != nil {
					s.log.Error("bypass not switched off", "label", name, "err", err)
				}
			}
		}
		pm.Settle()
	}
}

// enforce moves a label from policy from to policy to (a splice whose
// upstream or engine changes is stopped and started again).
func (s *Server) enforce(label string, from, to settings.Policy) error {
	s.mu.RLock()
	pm, why, ctx := s.pm, s.pmWhy, s.pmCtx
	s.mu.RUnlock()
	if pm == nil {
		if to.Kind == settings.None {
			return nil
		}
		return control.Errorf(control.CodeUnsupported, "policy %s for %s: connection policies are unavailable here: %s", to.Kind, label, why)
	}
	if from.Kind == settings.Splice {
		if err := pm.StopSplice(label); err != nil {
			return err
		}
	}
	if err := pm.SetBypass(label, to.Kind == settings.Bypass); err != nil {
		return err
	}
	if to.Kind == settings.Splice {
		return pm.StartSplice(ctx, label, to.Upstream.String(), to.Engine, func(ln *net.TCPListener) error {
			_, err := s.d.Register(label, ln)
			return err
		})
	}
	return nil
}

// policyStatus fills the policy state and counters of each label.
func (s *Server) policyStatus(byLabel map[string]*control.LabelStatus) {
	s.mu.RLock()
	pm, why := s.pm, s.pmWhy
	s.mu.RUnlock()
	if pm == nil {
		for _, ls := range byLabel {
			if ls.Kind != settings.None {
				ls.PolicyState = "not in force: " + why
			}
		}
		return
	}
	states, err := pm.Status()
	if err != nil {
		s.log.Warn("policy status", "err", err)
	}
	counters, err := pm.Counters()
	if err != nil {
		s.log.Warn("policy counters", "err", err)
	}
	for name, ls := range byLabel {
		ls.PolicyState = states[name]
		if ls.Kind != settings.None && ls.PolicyState == "" {
			ls.PolicyState = "not in force"
		}
		c := counters[name]
		ls.PolicyBytes, ls.PolicyConnections, ls.PolicyKernelBytes = c.Bytes, c.Connections, c.KernelBytes
	}
}

func (s *Server) closePolicies() {
	s.mu.Lock()
	pm := s.pm
	s.pm = nil
	s.mu.Unlock()
	if pm != nil {
		if err := pm.Close(); err != nil {
			s.log.Warn("close policies", "err", fmt.Sprint(err))
		}
	}
}
