package cli

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// bindings -o yaml reads what is in force with a dry run of an empty apply
// and prints it as a config file that parses back to the same bindings and
// settings.
func TestExportYAML(t *testing.T) {
	t.Parallel()
	diff := control.Diff{
		RemoveBindings: []binding.Binding{
			mustBinding("web", "tcp", "2001:db8::/64", "443"),
			mustBinding("dns", "udp", "192.0.2.0/24", "53"),
			mustBinding("web", "tcp", "10.0.0.0/8", "8000-8999"),
		},
		Labels: []control.LabelChange{
			{Label: "dns", Old: &settings.Named{Name: "dns", Label: settings.Label{Grants: settings.Grants{UIDs: []uint32{65534}, GIDs: []uint32{101}, Users: []string{"knot"}, Groups: []string{"dns"}}}}},
			{Label: "web", Old: &settings.Named{Name: "web", Label: settings.Label{Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "2001:db8::5"}}}}},
			{Label: "idle", Old: &settings.Named{Name: "idle"}},
		},
	}
	d := newFakeDaemon(t, func(req *control.Request, _ []*os.File) (control.ResponseBody, error) {
		return &control.ApplyResponse{Diff: diff}, nil
	})
	r := runMain(t, nil, "--control", d.path, "bindings", "-o", "yaml")
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	// Read what the daemon got through its record, which orders the
	// handler's goroutine before this one.
	got := d.only().body.(*control.ApplyRequest)
	if !got.DryRun || len(got.Config.Bindings) != 0 || len(got.Config.Labels) != 0 {
		t.Errorf("daemon got %+v, want a dry run of an empty config", got)
	}
	cfg, err := config.Parse(strings.NewReader(r.stdout))
	if err != nil {
		t.Fatalf("export does not parse: %v\n%s", err, r.stdout)
	}
	want := []binding.Binding{diff.RemoveBindings[2], diff.RemoveBindings[1], diff.RemoveBindings[0]}
	if !reflect.DeepEqual(cfg.Bindings, want) {
		t.Errorf("bindings %v, want %v", cfg.Bindings, want)
	}
	wantLabels := map[string]settings.Label{
		"dns":  {Grants: settings.Grants{UIDs: []uint32{65534}, GIDs: []uint32{101}, Users: []string{"knot"}, Groups: []string{"dns"}}},
		"web":  {Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "2001:db8::5"}}},
		"idle": {},
	}
	if !reflect.DeepEqual(cfg.Labels, wantLabels) {
		t.Errorf("labels %+v, want %+v", cfg.Labels, wantLabels)
	}
	// What apply would send for it is what the daemon has.
	req, err := toControlConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range req.Labels {
		var old *settings.Named
		for _, ch := range diff.Labels {
			if ch.Label == l.Name {
				old = ch.Old
			}
		}
		if old == nil || old.Name != l.Name || !old.Label.Equal(l.Label) {
			t.Errorf("label %d: apply would send %+v, daemon has %+v", i, l, old)
		}
	}

	// A daemon that refuses (not root) gets a clear error.
	d = newFakeDaemon(t, errorHandler(control.Errorf(control.CodePermission, "apply needs root")))
	r = runMain(t, nil, "--control", d.path, "bindings", "-o", "yaml")
	wantFail(t, r, ExitFailure, "bindings: -o yaml needs root")
}
