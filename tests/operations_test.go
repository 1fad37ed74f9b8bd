package tests

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/config"
)

// Applying 10,000 bindings prints the whole diff and takes at most a few
// seconds; applying the same file again changes nothing.
func TestApplyTenThousand(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "stale", "tcp", "10.200.0.0/16", "*")
	var b strings.Builder
	b.WriteString("version: 1\nbindings:\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "  - {label: l%d, protocol: %s, prefix: 10.%d.%d.0/24, ports: \"%d\"}\n", i%50, []string{"tcp", "udp"}[i%2], i/256, i%256, 1+i%1000)
	}
	file := writeFile(t, b.String())

	start := time.Now()
	out := w.mustCLI("apply", "-f", file)
	took := time.Since(start)
	t.Logf("apply of 10,000 bindings took %v", took)
	if n := strings.Count(out, "\n+ "); n+1 < 10000 && !strings.HasPrefix(out, "+ ") {
		t.Errorf("diff has %d additions, want 10000", n)
	}
	if got := strings.Count(out, "+ l"); got != 10000 {
		t.Errorf("diff adds %d bindings, want 10000", got)
	}
	if !strings.Contains(out, "- stale tcp 10.200.0.0/16 *") {
		t.Errorf("diff does not remove the stale binding:\n%.300s", out)
	}
	if got := strings.Count(w.mustCLI("bindings", "-o", "json"), `"label"`); got != 10000 {
		t.Errorf("%d bindings after apply, want 10000", got)
	}
	again := w.mustCLI("apply", "-f", file)
	if strings.TrimSpace(again) != "no changes" {
		t.Errorf("second apply of the same file: %q, want no changes", again)
	}
}

// The metrics endpoint passes promtool and its counters equal the traffic
// the test sent.
func TestMetricsMatchTraffic(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "--metrics-addr", "127.0.0.1:0")
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "*")
	w.mustCLI("bind", "down", "tcp", "10.2.0.0/24", "*")
	ln := w.ns.ListenTCP(t, "127.0.0.1:0")
	httpService(t, "web", ln)
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	r := w.cliAs(nil, []*os.File{f}, "register", "--fd", "3", "web")
	f.Close()
	if r.code != 0 {
		t.Fatalf("register: %s", r.stderr)
	}
	restoreNonblock(ln)
	for i := range 5 {
		w.expectCurl(fmt.Sprintf("10.1.0.%d", i+1), 80+i, "web")
	}
	for i := range 3 {
		if _, err := w.ns.DialTCP(fmt.Sprintf("10.2.0.%d:80", i+1), 3*time.Second); err == nil {
			t.Fatal("label without socket accepted a connection")
		}
	}
	for i := range 2 {
		w.ns.DialTCP(fmt.Sprintf("10.3.0.%d:80", i+1), 3*time.Second)
	}
	m := w.metrics()
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(m)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for _, want := range []string{
		`switchyard_lookups_total{label="web"} 5`,
		`switchyard_hits_total{label="web"} 5`,
		`switchyard_missing_socket_total{label="web"} 0`,
		`switchyard_lookups_total{label="down"} 3`,
		`switchyard_missing_socket_total{label="down"} 3`,
		`switchyard_hits_total{label="down"} 0`,
		`switchyard_unmatched_lookups_total 2`,
		`switchyard_bindings{label="web"} 1`,
		`switchyard_sockets{family="ipv4",label="web",protocol="tcp"} 1`,
		`switchyard_build_info{version="dev"} 1`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", m)
	}
}

// Every command with malformed input fails with a clear error and a
// non-zero exit, and leaves the state as it was.
func TestBadInput(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "80")
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "8000-8999")
	before := w.mustCLI("bindings", "-o", "json") + w.mustCLI("status", "-o", "json")

	// A file one byte over the limit, sparse: the CLI refuses it by its
	// size before parsing.
	huge := writeFile(t, "version: 1\nbindings:\n")
	if err := os.Truncate(huge, config.MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 256)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bind", "web", "tcp", "10.1.0.0/24"}, "PORTS"},
		{[]string{"bind", "web", "sctp", "10.1.0.0/24", "80"}, "use tcp or udp"},
		{[]string{"bind", "web", "tcp", "10.1.0.0/33", "80"}, "10.1.0.0/33"},
		{[]string{"bind", "web", "tcp", "300.1.1.1", "80"}, "300.1.1.1"},
		{[]string{"bind", "web", "tcp", "::/129", "80"}, "::/129"},
		{[]string{"bind", "web", "tcp", "10.1.0.0/24", "0"}, "out of range"},
		{[]string{"bind", "web", "tcp", "10.1.0.0/24", "70000"}, "out of range"},
		{[]string{"bind", "web", "tcp", "10.1.0.0/24", "9-3"}, "starts after it ends"},
		{[]string{"bind", "web", "tcp", "10.1.0.0/24", "abc"}, "a port is a number"},
		{[]string{"bind", long, "tcp", "10.1.0.0/24", "80"}, "longer than 255"},
		{[]string{"bind", "a b", "tcp", "10.1.0.0/24", "80"}, "not allowed"},
		{[]string{"bind", "other", "tcp", "10.1.0.0/24", "8500-9500"}, "overlap partially"},
		{[]string{"bind", "other", "tcp", "10.1.0.0/24", "80"}, "bound to label web"},
		{[]string{"unbind", "web", "tcp", "10.9.0.0/24", "80"}, "no such binding"},
		{[]string{"unbind", "other", "tcp", "10.1.0.0/24", "80"}, "bound to label web"},
		{[]string{"unregister", "web", "tcp", "ipv5"}, "ipv4 or ipv6"},
		{[]string{"unregister", "nobody", "tcp", "ipv4"}, "not"},
		{[]string{"register-pid", "abc", "web", "tcp", "127.0.0.1:80"}, "abc"},
		{[]string{"register-pid", "999999999", "web", "tcp", "127.0.0.1:80"}, "999999999"},
		{[]string{"register-pid", "1", "web", "tcp", "127.0.0.1"}, "127.0.0.1"},
		{[]string{"status", "nobody"}, "nobody"},
		{[]string{"policy", "web", "fast"}, "fast"},
		{[]string{"policy", "web", "splice"}, "upstream"},
		{[]string{"apply"}, "-f"},
		{[]string{"apply", "-f", "/nonexistent.yaml"}, "/nonexistent.yaml"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings: [\n")}, "line"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings: []\ncolour: blue\n")}, "colour"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: \"1\", weight: 3}\n")}, "weight"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 10-20}\n  - {label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: 15-25}\n")}, "overlapping"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/40, ports: \"1\"}\n")}, "10.0.0.0/40"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: \"65536\"}\n")}, "65536"},
		{[]string{"apply", "-f", writeFile(t, "version: 1\nbindings:\n  - {label: "+long+", protocol: tcp, prefix: 10.0.0.0/8, ports: \"1\"}\n")}, "255"},
		{[]string{"apply", "-f", writeFile(t, "version: 7\n")}, "version"},
		{[]string{"apply", "-f", huge}, "larger than the limit"},
		{[]string{"frobnicate"}, "frobnicate"},
		{[]string{"--netns", "/nonexistent/ns", "bindings"}, "/nonexistent/ns"},
	} {
		r := w.cli(c.args...)
		name := strings.Join(c.args, " ")
		if len(name) > 80 {
			name = name[:80]
		}
		if r.code == 0 {
			t.Errorf("switchyard %s: exit 0, want failure", name)
			continue
		}
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("switchyard %s: exit %d, stderr %q does not mention %q", name, r.code, r.stderr, c.want)
		}
		if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 25 {
			t.Errorf("switchyard %s: %d lines of error output", name, n)
		}
	}
	after := w.mustCLI("bindings", "-o", "json") + w.mustCLI("status", "-o", "json")
	if after != before {
		t.Errorf("state changed by refused commands:\nbefore %s\nafter  %s", before, after)
	}
}
