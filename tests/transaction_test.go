package tests

import (
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
)

// policyStates is what status says of each label: policy, upstream and
// the state in force.
func policyStates(t *testing.T, w *world) map[string]string {
	t.Helper()
	var st struct {
		Labels []struct {
			Label       string `json:"label"`
			Policy      string `json:"policy"`
			Upstream    string `json:"upstream"`
			PolicyState string `json:"policy_state"`
			Bindings    int    `json:"bindings"`
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(w.mustCLI("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range st.Labels {
		m[l.Label] = strings.Join([]string{l.Policy, l.Upstream, l.PolicyState}, "|")
	}
	return m
}

// An apply whose policy for one label cannot be put in force changes
// nothing: the error names the label, and the bindings, the settings and
// the policies in force (also after a restart) are those before it. The
// bypass that an earlier label of the same apply had put in force is
// switched off again.
func TestApplyPolicyFailureChangesNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	upstream := w.ns.ListenTCP(t, "127.0.0.1:0")
	sinkService(t, upstream)
	v1 := writeFile(t, `version: 1
labels:
  afast: {}
  bproxied:
    grants: {uids: [4242]}
bindings:
  - {label: afast, protocol: tcp, prefix: 10.9.0.0/24, ports: "*"}
  - {label: bproxied, protocol: tcp, prefix: 10.6.0.0/24, ports: "80"}
`)
	v2 := writeFile(t, `version: 1
labels:
  afast: {policy: bypass}
  bproxied: {policy: splice, upstream: "`+upstream.Addr().String()+`"}
bindings:
  - {label: afast, protocol: tcp, prefix: 10.9.0.0/16, ports: "*"}
  - {label: bproxied, protocol: tcp, prefix: 10.6.0.0/24, ports: "*"}
  - {label: cnew, protocol: udp, prefix: 10.7.0.0/24, ports: "53"}
`)
	w.mustCLI("apply", "-f", v1)
	beforeBindings := w.mustCLI("bindings", "-o", "json")
	beforeStates := policyStates(t, w)

	// A splice worker cannot start: where its socket would go is a file.
	workers := w.control + ".splice"
	if err := os.RemoveAll(workers); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(workers, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := w.cli("apply", "-f", v2)
	if r.code == 0 {
		t.Fatalf("apply with a splice that cannot start succeeded:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "label bproxied") || !strings.Contains(r.stderr, "nothing changed") {
		t.Errorf("apply error does not name the label or say nothing changed: %q", r.stderr)
	}
	same := func(when string) {
		t.Helper()
		if got := w.mustCLI("bindings", "-o", "json"); got != beforeBindings {
			t.Errorf("%s: bindings changed:\n%s\nwant\n%s", when, got, beforeBindings)
		}
		if got := policyStates(t, w); !mapsEqual(got, beforeStates) {
			t.Errorf("%s: label settings and policies in force %v, want %v", when, got, beforeStates)
		}
		if out := w.mustCLI("apply", "--dry-run", "-f", v1); strings.TrimSpace(out) != "no changes" {
			t.Errorf("%s: the first config would change:\n%s", when, out)
		}
	}
	same("after the failed apply")

	os.Remove(workers)
	w.d.stop(t, syscall.SIGKILL)
	w.d = w.startDaemon()
	same("after a restart")
	// Once the worker can start, the same apply succeeds whole.
	w.mustCLI("apply", "-f", v2)
	st := policyStates(t, w)
	if !strings.HasPrefix(st["afast"], "bypass||bypass") || !strings.HasPrefix(st["bproxied"], "splice|"+upstream.Addr().String()+"|") {
		t.Errorf("after the second apply: %v", st)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
