package tests

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// labelSettingsOf is each label's policy and upstream from status -o json.
func labelSettingsOf(t *testing.T, w *world) map[string][2]string {
	t.Helper()
	var st struct {
		Labels []struct {
			Label, Policy, Upstream string
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(w.mustCLI("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, l := range st.Labels {
		out[l.Label] = [2]string{l.Policy, l.Upstream}
	}
	return out
}

// What is bound and configured by CLI, exported with bindings -o yaml and
// applied to a fresh daemon, gives the same listings and settings there;
// applied again, or applied where it came from, it changes nothing.
func TestExportRoundTrip(t *testing.T) {
	t.Parallel()
	a := newWorld(t)
	// Grants come only from a config file.
	a.mustCLI("apply", "-f", writeFile(t, "version: 1\nlabels:\n  dns: {grants: {uids: [65534], users: [nobody], groups: [nogroup]}}\n"))
	a.mustCLI("bind", "dns", "udp", "192.0.2.0/24", "53")
	a.mustCLI("bind", "dns", "udp", "2001:db8:53::/48", "53")
	a.mustCLI("bind", "web", "tcp", "10.1.0.0/16", "*")
	a.mustCLI("bind", "web", "tcp", "10.1.2.0/24", "8000-8999")
	a.mustCLI("bind", "admin", "tcp", "10.1.2.3", "8080")
	a.mustCLI("bind", "proxied", "tcp", "10.6.0.0/24", "*")
	a.mustCLI("policy", "web", "bypass")
	upstream := a.ns.ListenTCP(t, "127.0.0.1:0")
	httpService(t, "upstream", upstream)
	a.mustCLI("policy", "proxied", "splice", "127.0.0.1:same")
	a.mustCLI("policy", "admin", "none")

	export := a.mustCLI("bindings", "-o", "yaml")
	for _, want := range []string{
		"version: 1\n",
		"  - {label: web, protocol: tcp, prefix: 10.1.2.0/24, ports: \"8000-8999\"}\n",
		"  - {label: dns, protocol: udp, prefix: 2001:db8:53::/48, ports: \"53\"}\n",
		"uids: [65534]", "users: [nobody]", "groups: [nogroup]",
		"policy: splice", "upstream: 127.0.0.1:same", "policy: bypass",
	} {
		if !strings.Contains(export, want) {
			t.Errorf("export lacks %q:\n%s", want, export)
		}
	}
	file := writeFile(t, export)
	if out := a.mustCLI("apply", "-f", file); out != "no changes\n" {
		t.Errorf("export applied where it came from: %q, want no changes", out)
	}

	b := newWorld(t)
	out := b.mustCLI("apply", "-f", file)
	if !strings.Contains(out, "+ web tcp 10.1.2.0/24 8000-8999") || !strings.Contains(out, "+ label proxied policy splice upstream 127.0.0.1:same") {
		t.Errorf("apply to a fresh daemon:\n%s", out)
	}
	for _, args := range [][]string{{"bindings"}, {"bindings", "-o", "json"}, {"bindings", "-o", "yaml"}} {
		if got, want := b.mustCLI(args...), a.mustCLI(args...); got != want {
			t.Errorf("%s differs on the fresh daemon:\n%s\nwant:\n%s", strings.Join(args, " "), got, want)
		}
	}
	if got, want := labelSettingsOf(t, b), labelSettingsOf(t, a); !reflect.DeepEqual(got, want) {
		t.Errorf("label settings on the fresh daemon %v, want %v", got, want)
	}
	if out := b.mustCLI("apply", "-f", file); out != "no changes\n" {
		t.Errorf("second apply: %q, want no changes", out)
	}

	// Without the daemon, the export is the same.
	a.d.stop(t, syscall.SIGTERM)
	r := a.pinned("bindings", "-o", "yaml")
	if r.code != 0 || r.stdout != export {
		t.Errorf("export without daemon: exit %d: %s\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, export)
	}
	os.Remove(file)
}
