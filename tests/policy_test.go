package tests

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Policies set with the CLI take effect in the daemon: splice proxies a
// label's connections to its upstream (a fixed port, or the port the client
// dialled), status shows what is in force, and policy none hands the label
// back to registered sockets.
func TestPolicyThroughDaemon(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "--metrics-addr", "127.0.0.1:0")
	upstream := w.ns.ListenTCP(t, "127.0.0.1:0")
	httpService(t, "upstream", upstream)
	up := upstream.Addr().String()
	same := w.ns.ListenTCP(t, "127.0.0.2:8123")
	httpService(t, "same-port", same)

	w.mustCLI("bind", "proxied", "tcp", "10.6.0.0/24", "*")
	w.mustCLI("policy", "proxied", "splice", up)
	// The upstream answers, and sees the proxy's connection to it.
	for _, hp := range []string{"10.6.0.1:80", "10.6.0.77:8443"} {
		if got := w.curl("http://" + hp + "/"); got != "upstream saw "+up {
			t.Errorf("curl %s through splice: %q", hp, got)
		}
	}
	w.mustCLI("policy", "proxied", "splice", "127.0.0.2:same")
	if got := w.curl("http://10.6.0.9:8123/"); got != "same-port saw 127.0.0.2:8123" {
		t.Errorf("curl through splice to host:same: %q", got)
	}
	if got := policyPins(t, w.stateDir()); len(got) != 0 {
		t.Errorf("policy pins with a userspace splice: %q", got)
	}
	// The in-kernel engine, opted into per label: its maps exist while
	// the label uses it.
	w.mustCLI("policy", "proxied", "splice", up, "--engine", "kernel")
	if got := w.curl("http://10.6.0.1:80/"); got != "upstream saw "+up {
		t.Errorf("curl through the kernel engine: %q", got)
	}
	if st := w.mustCLI("status", "proxied"); !strings.Contains(st, "in the kernel") {
		t.Errorf("status with engine kernel:\n%s", st)
	}
	// The kernel's share of the label's bytes: some, and no more than all,
	// in the metrics and in status.
	m := w.metrics()
	total := metricValue(t, m, `switchyard_policy_bytes_total{label="proxied",policy="splice"}`)
	if kernel := metricValue(t, m, `switchyard_policy_kernel_bytes_total{label="proxied",policy="splice"}`); kernel <= 0 || kernel > total {
		t.Errorf("metrics: %v of %v bytes moved in the kernel, want some and at most all", kernel, total)
	}
	var ks struct {
		Labels []struct {
			PolicyBytes       uint64 `json:"policy_bytes"`
			PolicyKernelBytes uint64 `json:"policy_kernel_bytes"`
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(w.mustCLI("status", "proxied", "-o", "json")), &ks); err != nil {
		t.Fatal(err)
	}
	if len(ks.Labels) != 1 || ks.Labels[0].PolicyKernelBytes == 0 || ks.Labels[0].PolicyKernelBytes > ks.Labels[0].PolicyBytes {
		t.Errorf("status of proxied: %+v, want some of its bytes and at most all moved in the kernel", ks.Labels)
	}
	if got := policyPins(t, w.stateDir()); !slices.Equal(got, kernelPins) {
		t.Errorf("policy pins with a kernel-engine splice: %q, want %q", got, kernelPins)
	}
	w.mustCLI("policy", "proxied", "splice", "127.0.0.2:same")

	var st struct {
		Labels []struct {
			Label, Policy, Upstream, PolicyState string
			PolicyConnections                    uint64 `json:"policy_connections"`
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(w.mustCLI("status", "proxied", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Labels) != 1 || st.Labels[0].Policy != "splice" || st.Labels[0].Upstream != "127.0.0.2:same" || st.Labels[0].PolicyConnections < 3 {
		t.Errorf("status of proxied: %+v", st.Labels)
	}
	if m := w.metrics(); !strings.Contains(m, `switchyard_policy_connections_total{label="proxied",policy="splice"}`) {
		t.Errorf("metrics lack the policy's connections")
	}

	w.mustCLI("policy", "proxied", "bypass")
	out := w.mustCLI("status", "proxied")
	if !strings.Contains(out, "bypass") {
		t.Errorf("status after policy bypass:\n%s", out)
	}
	if got := policyPins(t, w.stateDir()); !slices.Contains(got, "sy_p_bypass") || slices.Contains(got, "sy_k_pairs") {
		t.Errorf("policy pins with a bypass label: %q", got)
	}
	w.mustCLI("policy", "proxied", "none")
	if got := policyPins(t, w.stateDir()); len(got) != 0 {
		t.Errorf("policy pins with no policy in use: %q", got)
	}
	if _, err := w.run("curl", "-sS", "--max-time", "3", "http://10.6.0.1:80/"); err == nil {
		t.Errorf("after policy none the splice proxy still answers for a label without a socket")
	}
	httpService(t, "direct", w.registerTCP("proxied", "tcp4", "127.0.0.1:0"))
	if got := w.curl("http://10.6.0.1:80/"); got != "direct saw 10.6.0.1:80" {
		t.Errorf("after policy none: %q", got)
	}
}

// SIGHUP reloads --config and puts changed policies in force, as apply
// does: a label's splice starts, then, reloaded without it, stops.
func TestReloadPutsPoliciesInForce(t *testing.T) {
	t.Parallel()
	upstream := "127.0.0.1:19301"
	cfg := writeFile(t, "version: 1\nlabels:\n  proxied: {}\n")
	w := newWorld(t, "--config", cfg)
	w.mustCLI("bind", "proxied", "tcp", "10.8.0.0/24", "*")
	reload := func(content string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		w.d.cmd.Process.Signal(syscall.SIGHUP)
		if !w.d.notes.waitFor("STATUS=reloaded", 10*time.Second) {
			t.Fatalf("no reload reported:\n%s", w.d.allNotes(t))
		}
		w.d.notes.reset()
	}
	reload("version: 1\nlabels:\n  proxied: {policy: splice, upstream: \"" + upstream + "\"}\n")
	w.spliceWorker("proxied") // fails the test unless a worker serves it
	reload("version: 1\nlabels:\n  proxied: {}\n")
	if st := w.mustCLI("status", "proxied"); strings.Contains(st, "splice") {
		t.Errorf("after reloading without the policy, status still says splice:\n%s", st)
	}
}

// policyPins lists the policy pins (sy_p_*, sy_k_*) in the state directory
// dir, but for fentry links, which only some kernels load.
func policyPins(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if (strings.HasPrefix(n, "sy_p_") || strings.HasPrefix(n, "sy_k_")) && (!strings.HasSuffix(n, "_link") || n == "sy_p_sockops_link") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
