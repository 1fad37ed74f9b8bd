package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// landedMain is the commit whose pinned state and files every build of this
// session must upgrade from in place.
const landedMain = "2e71e2e8c9b5e80ec35e4fb99ded36b6e633c82f"

// unpackedApplyMain is the last landed commit whose daemon reads only the
// version-1 (JSON) Apply: the CLI's fallback to it is tested against it.
const unpackedApplyMain = "4362dae5f27c3ab461104b5c4833e726672c21b5"

// buildLanded builds switchyard and switchyardd of commit rev from the
// repository's history, once per run, and returns the directory of the two
// binaries. Without the history (a source tarball, a shallow clone) it skips.
func buildLanded(t *testing.T, rev string) string {
	t.Helper()
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("no git history here (git rev-parse: %v): the upgrade from landed main %.12s needs it", err, rev)
	}
	repo := strings.TrimSpace(string(top))
	if err := exec.Command("git", "-C", repo, "cat-file", "-e", rev+"^{commit}").Run(); err != nil {
		t.Skipf("commit %.12s is not in this clone's history (shallow clone?): the upgrade from it needs it", rev)
	}
	landedBuilds.Lock()
	defer landedBuilds.Unlock()
	if b, ok := landedBuilds.m[rev]; ok {
		if b.err != "" {
			t.Fatal(b.err)
		}
		return b.dir
	}
	if landedBuilds.m == nil {
		landedBuilds.m = make(map[string]landedBuild)
	}
	out, err := buildRev(repo, rev)
	if err != nil {
		landedBuilds.m[rev] = landedBuild{err: err.Error()}
		t.Fatal(err)
	}
	landedBuilds.m[rev] = landedBuild{dir: out}
	return out
}

// landedBuilds keeps each landed commit's binaries for the whole run, so
// the tests that need them build the commit once. They live under the
// harness's binary directory, which TestMain removes.
var landedBuilds struct {
	sync.Mutex
	m map[string]landedBuild
}

type landedBuild struct {
	dir string
	err string
}

// buildRev builds switchyard and switchyardd of commit rev of repo into a
// new directory under the harness's binary directory.
func buildRev(repo, rev string) (string, error) {
	dir, err := os.MkdirTemp(bin.dir, "landed-")
	if err != nil {
		return "", err
	}
	os.Chmod(dir, 0o755)
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.Command("git", "-C", repo, "archive", "--format=tar", rev)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return "", err
	}
	untar.Stdin = pipe
	var archErr, tarErr strings.Builder
	archive.Stderr, untar.Stderr = &archErr, &tarErr
	if err := untar.Start(); err != nil {
		return "", err
	}
	if err := archive.Run(); err != nil {
		return "", fmt.Errorf("git archive %s: %v: %s", rev, err, archErr.String())
	}
	if err := untar.Wait(); err != nil {
		return "", fmt.Errorf("untar %s: %v: %s", rev, err, tarErr.String())
	}
	out := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", out+"/",
		"-ldflags", "-X github.com/switchyard-project/switchyard/internal/server.Version=landed",
		"./cmd/switchyard", "./cmd/switchyardd")
	build.Dir = src
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build landed main %.12s: %v\n%s", rev, err, b)
	}
	return out, nil
}

// landedCLI returns a function that runs the CLI of the landed build in
// old against w's daemon and returns its output, failing the test if the
// command fails.
func landedCLI(t *testing.T, old string, w *world) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(old, "switchyard"), append([]string{"--control", w.control}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("landed switchyard %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// startLanded starts the daemon of the landed build in old in a new world,
// checks that it is that build, and returns the world and its CLI.
func startLanded(t *testing.T, old string) (*world, func(args ...string) string) {
	t.Helper()
	w := newWorldNoDaemon(t)
	w.d = w.startDaemonBin(filepath.Join(old, "switchyardd"))
	run := landedCLI(t, old, w)
	if v := run("version"); !strings.Contains(v, "landed") {
		t.Fatalf("the old daemon says %q, want version landed", v)
	}
	return w, run
}

// listing is a binding set as `bindings -o json` prints it, sorted, in a
// form that does not depend on the build's JSON layout.
func listing(t *testing.T, out string) []string {
	t.Helper()
	var bs []map[string]any
	if err := json.Unmarshal([]byte(out), &bs); err != nil {
		var wrapped struct {
			Bindings []map[string]any `json:"bindings"`
		}
		if err2 := json.Unmarshal([]byte(out), &wrapped); err2 != nil {
			t.Fatalf("bindings -o json: %v: %.300s", err, out)
		}
		bs = wrapped.Bindings
	}
	lines := make([]string, 0, len(bs))
	for _, b := range bs {
		lines = append(lines, fmt.Sprintf("%v %v %v %v", b["label"], b["protocol"], b["prefix"], b["ports"]))
	}
	slices.Sort(lines)
	return lines
}

// labelPolicies is what status says of each label's policy.
func labelPolicies(t *testing.T, out string) map[string]string {
	t.Helper()
	var st struct {
		Labels []struct {
			Label    string `json:"label"`
			Policy   string `json:"policy"`
			Upstream string `json:"upstream"`
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v: %.300s", err, out)
	}
	m := map[string]string{}
	for _, l := range st.Labels {
		m[l.Label] = l.Policy + " " + l.Upstream
	}
	return m
}

// The daemon of landed main, with bindings, grants, a bypass label and a
// splice label in force and traffic flowing, is stopped and this build
// started on the same state: no connection fails, a long-lived spliced
// connection's bytes arrive intact, and every binding and setting is kept
// (the same config applied again changes nothing, the grant still lets its
// user register, and policies are still in force).
func TestUpgradeFromLandedMain(t *testing.T) {
	t.Parallel()
	w, oldRun := startLanded(t, buildLanded(t, landedMain))

	upstream := w.ns.ListenTCP(t, "127.0.0.1:0")
	sinkService(t, upstream)
	var b strings.Builder
	fmt.Fprintf(&b, `version: 1
labels:
  web:
    grants: {uids: [4242]}
  fast:
    policy: bypass
  proxied:
    policy: splice
    upstream: "%s"
  granted:
    grants: {uids: [4242], gids: [4343]}
bindings:
  - {label: web, protocol: tcp, prefix: 10.8.0.0/16, ports: "*"}
  - {label: fast, protocol: tcp, prefix: 10.9.0.0/24, ports: "1-9999"}
  - {label: proxied, protocol: tcp, prefix: 10.6.0.0/24, ports: "*"}
  - {label: granted, protocol: udp, prefix: 2001:db8::/64, ports: "53"}
`, upstream.Addr())
	for i := range 5000 {
		fmt.Fprintf(&b, "  - {label: bulk%d, protocol: %s, prefix: 10.%d.%d.0/24, ports: \"%d\"}\n", i%40, []string{"tcp", "udp"}[i%2], 100+i/256, i%256, 1+i%1000)
	}
	cfg := writeFile(t, b.String())
	oldRun("apply", "-f", cfg)

	serveOK(w.registerTCP("web", "tcp4", "127.0.0.1:0"))
	serveOK(w.registerTCP("fast", "tcp4", "127.0.0.1:0"))

	beforeBindings := listing(t, oldRun("bindings", "-o", "json"))
	beforePolicies := labelPolicies(t, oldRun("status", "-o", "json"))
	if got := beforePolicies["proxied"]; got != "splice "+upstream.Addr().String() {
		t.Fatalf("the old daemon's status of proxied: %q", got)
	}
	if len(beforeBindings) != 5004 {
		t.Fatalf("the old daemon lists %d bindings, want 5004", len(beforeBindings))
	}

	long := newStreamer(t, w, "10.6.0.1:80", 7)
	long.send(t, 1<<20)

	l := startLoad(w, 6, func(r *rand.Rand) string {
		if r.IntN(2) == 0 {
			return fmt.Sprintf("10.8.%d.%d:%d", r.IntN(256), 1+r.IntN(254), 1+r.IntN(65535))
		}
		return fmt.Sprintf("10.9.0.%d:%d", 1+r.IntN(254), 1+r.IntN(9999))
	})
	defer l.finishChecked(t)
	l.waitAttempts(t, 1000)
	long.send(t, 1<<20)

	if st := w.d.stop(t, syscall.SIGTERM); st.ExitCode() != 0 {
		t.Errorf("the old daemon's SIGTERM: exit %v", st)
	}
	l.waitAttempts(t, 1000)
	long.send(t, 1<<20) // no daemon at all
	w.d = w.startDaemon()
	l.waitAttempts(t, 1000)
	long.send(t, 1<<20)

	if v := w.mustCLI("version"); !strings.Contains(v, "dev") {
		t.Errorf("the upgraded daemon says %q", v)
	}
	if after := listing(t, w.mustCLI("bindings", "-o", "json")); !slices.Equal(after, beforeBindings) {
		t.Errorf("bindings after the upgrade: %d, want the %d before (first: %.5q)", len(after), len(beforeBindings), after)
	}
	afterPolicies := labelPolicies(t, w.mustCLI("status", "-o", "json"))
	for label, want := range beforePolicies {
		if got := afterPolicies[label]; got != want {
			t.Errorf("status of %s after the upgrade: policy %q, want %q", label, got, want)
		}
	}
	if out := w.mustCLI("apply", "--dry-run", "-f", cfg); strings.TrimSpace(out) != "no changes" {
		t.Errorf("the landed config applied again after the upgrade would change:\n%.2000s", out)
	}

	// Bypass's pins, which hold live sockets, are adopted; no in-kernel
	// splice engine map is left, since no label uses that engine.
	if got, want := policyPins(t, w.stateDir()), []string{"sy_p_bypass", "sy_p_config", "sy_p_policy", "sy_p_rx", "sy_p_sk", "sy_p_sockops_link", "sy_p_stats"}; !slices.Equal(got, want) {
		t.Errorf("policy pins after the upgrade: %q, want %q", got, want)
	}

	// The grants are in force: uid 4242 may register web, uid 4444 may not.
	user := &syscall.Credential{Uid: 4242, Gid: 4242}
	stranger := &syscall.Credential{Uid: 4444, Gid: 4444}
	ln := w.ns.ListenTCP(t, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if r := w.cliAs(stranger, []*os.File{f}, "register", "--fd", "3", "web"); r.code == 0 {
		t.Errorf("uid 4444 registered label web after the upgrade")
	}
	if r := w.cliAs(user, []*os.File{f}, "register", "--fd", "3", "web"); r.code != 0 {
		t.Errorf("uid 4242 registering label web after the upgrade: exit %d, %s", r.code, r.stderr)
	}
	f.Close()
	restoreNonblock(ln)
	serveOK(ln)

	// The splice is in force for new connections, and the old one is
	// intact.
	short := newStreamer(t, w, "10.6.0.9:443", 8)
	short.send(t, 256<<10)
	short.finish(t)
	l.waitAttempts(t, 2000)
	long.send(t, 1<<20)
	long.finish(t)
}

// The daemon of landed main with 1,048,576 bindings is stopped and this
// build started on its state: it rebuilds what its layout needs within the
// daemon's memory target, and the same file applied again changes nothing.
func TestUpgradeMillionFromLandedMain(t *testing.T) {
	t.Parallel()
	old := buildLanded(t, landedMain)
	oldCLI, oldDaemon := filepath.Join(old, "switchyard"), filepath.Join(old, "switchyardd")
	w := newWorldNoDaemon(t)
	w.d = w.startDaemonBin(oldDaemon)
	file := filepath.Join(w.dir, "million.yaml")
	writeScaleConfig(t, file, scaleBindings, 0)
	if out, err := exec.Command(oldCLI, "--control", w.control, "apply", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("landed switchyard apply: %v: %.500s", err, out)
	}
	if st := w.d.stop(t, syscall.SIGTERM); st.ExitCode() != 0 {
		t.Fatalf("the old daemon's SIGTERM: exit %v", st)
	}
	start := time.Now()
	w.d = w.startDaemon()
	peak := float64(vmHWM(t, w.d.cmd.Process.Pid)) / (1 << 20)
	t.Logf("this build ready on the landed state in %v, peak rss %.1f MiB", time.Since(start).Round(time.Millisecond), peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB taking over the landed state of %d bindings; the target is at most %d MiB", peak, scaleBindings, maxApplyRSS)
	}
	if out := w.slowCLI("apply", "-f", file); out != "no changes\n" {
		t.Errorf("the same file applied after the upgrade printed %.300q, want \"no changes\\n\"", out)
	}
}

// The landed build, started on state this build wrote (the same layout:
// sy_blocks is a map the landed build does not know), takes it over and
// changes bindings without writing sy_blocks; this build, started again,
// serves what the landed build bound, in a block whose word it had set as
// bound by nothing, and keeps every binding. More bindings than a small
// set holds, so that lookups read the words.
func TestLandedBuildRoundTrip(t *testing.T) {
	t.Parallel()
	old := buildLanded(t, landedMain)
	w := newWorld(t)
	for i := range 10 {
		w.mustCLI("bind", "web", "tcp", fmt.Sprintf("10.8.%d.0/24", i), "*")
	}
	serveOK(w.registerTCP("web", "tcp4", "127.0.0.1:0"))
	dial := func(when, addr string) {
		t.Helper()
		c, err := w.ns.DialTCP(addr, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: dial %s: %v", when, addr, err)
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "ok" {
			t.Fatalf("%s: %s: read %q, %v; want ok", when, addr, b, err)
		}
	}
	refused := func(when, addr string) {
		t.Helper()
		c, err := w.ns.DialTCP(addr, 5*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("%s: dial %s connected; want refused (nothing is bound there)", when, addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s: dial %s: %v; want connection refused", when, addr, err)
		}
	}
	dial("this build", "10.8.1.2:80")
	refused("this build", "10.77.0.1:443")
	if st := w.d.stop(t, syscall.SIGTERM); st.ExitCode() != 0 {
		t.Fatalf("SIGTERM: exit %v", st)
	}

	w.d = w.startDaemonBin(filepath.Join(old, "switchyardd"))
	oldCLI := landedCLI(t, old, w)
	if v := oldCLI("version"); !strings.Contains(v, "landed") {
		t.Fatalf("the daemon says %q, want version landed", v)
	}
	dial("landed build", "10.8.1.2:80")
	oldCLI("bind", "web", "tcp", "10.77.0.0/24", "443")
	oldCLI("unbind", "web", "tcp", "10.8.9.0/24", "*")
	dial("landed build, after its bind", "10.77.0.1:443")
	before := w.mustCLI("bindings", "-o", "json")
	if st := w.d.stop(t, syscall.SIGTERM); st.ExitCode() != 0 {
		t.Fatalf("landed daemon, SIGTERM: exit %v", st)
	}
	dial("no daemon, after the landed build", "10.77.0.1:443")

	w.d = w.startDaemon()
	dial("this build again", "10.77.0.1:443")
	dial("this build again", "10.8.1.2:80")
	refused("this build again", "10.8.9.2:80")
	refused("this build again", "10.77.0.1:444")
	if after := w.mustCLI("bindings", "-o", "json"); !slices.Equal(listing(t, after), listing(t, before)) {
		t.Errorf("bindings after the round trip:\n%s\nwant\n%s", after, before)
	}
}
