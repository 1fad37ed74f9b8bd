package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
)

// The daemon's settings file, read by the daemonless CLI, may be anything:
// reading it never panics, and what it accepts exports as a valid config or
// is refused with an error.
func FuzzReadSettings(f *testing.F) {
	f.Add([]byte(`{"web": {"grants": {"UIDs": [65534], "Users": ["nobody"]}, "policy": "splice", "upstream": "10.0.0.5:same"}}`))
	f.Add([]byte(`{"dns": {"policy": "bypass"}, "idle": {}}`))
	f.Add([]byte(`{"x": {"policy": "fast"}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, "labels.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readSettingsFile(path)
		if err != nil {
			return
		}
		cfg := &config.Config{Version: config.CurrentVersion, Labels: map[string]config.Label{}}
		for name, s := range got {
			if s.policy != control.PolicyNone && s.policy != control.PolicyBypass && s.policy != control.PolicySplice {
				t.Fatalf("label %q: policy %d", name, s.policy)
			}
			l := config.Label{Grants: s.grants, Policy: s.policy}
			if s.upstream != "" {
				u, err := config.ParseUpstream(s.upstream)
				if err != nil {
					return
				}
				l.Upstream = u
			}
			cfg.Labels[name] = l
		}
		config.Marshal(cfg) // validates; an error is fine, a panic is not
	})
}
