package tests

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// Malformed, oversized and truncated control messages get an error reply or
// a hang-up; the daemon goes on serving and keeps no fd that came with them.
// An idle or silent connection does not stop the daemon from stopping.
func TestControlGarbage(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	pid := w.d.cmd.Process.Pid
	fds := func() int {
		ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	w.mustCLI("version")
	before := fds()

	pipeR, pipeW, _ := os.Pipe()
	defer pipeR.Close()
	defer pipeW.Close()
	rights := syscall.UnixRights(int(pipeR.Fd()), int(pipeW.Fd()))
	for _, msg := range [][]byte{
		[]byte("garbage"),
		make([]byte, 200),
		append([]byte("SWYD\x00\x01\x00\x02\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x10"), []byte("{\"binding\":")...),
		append([]byte("SWYD\x00\x09\x00\x05\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x02"), []byte("{}")...),
		make([]byte, 70000),
	} {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: w.control, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		c.WriteMsgUnix(msg, rights, nil)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 65536)
		n, _, _, _, _ := c.ReadMsgUnix(buf, nil)
		if n > 0 && !strings.Contains(string(buf[:n]), "invalid") && !strings.Contains(string(buf[:n]), "unsupported") {
			t.Errorf("reply to garbage: %q", buf[:n])
		}
		c.Close()
	}
	if v := w.mustCLI("version"); !strings.Contains(v, "dev") {
		t.Errorf("daemon after garbage: %q", v)
	}
	// The daemon closes each connection once it sees the client's end,
	// which may come a moment after the client has exited.
	var after int
	testenv.Poll(5*time.Second, func() (bool, string) { after = fds(); return after <= before, "" })
	if after > before {
		t.Errorf("daemon holds %d fds after garbage, %d before", after, before)
	}

	// A connection that never speaks does not hold up a stop.
	idle, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: w.control, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	if st := w.d.stop(t, syscall.SIGTERM); st.ExitCode() != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("stop with an idle client: %v after %v", st, time.Since(start))
	}
}

// The daemon speaks sd_notify: STATUS at each phase, READY, the watchdog
// while its state answers, and STOPPING.
func TestNotify(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	w.env = []string{"WATCHDOG_USEC=200000"}
	w.d = w.startDaemon()
	if !w.d.notes.waitFor("WATCHDOG=1", 10*time.Second) {
		t.Errorf("no WATCHDOG=1 within 10s of READY with WATCHDOG_USEC=200000")
	}
	w.d.stop(t, syscall.SIGTERM)
	notes := w.d.allNotes(t)
	for _, want := range []string{"STATUS=opening dispatch state", "READY=1", "STATUS=serving 0 bindings", "WATCHDOG=1", "STOPPING=1"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notify messages lack %q:\n%s", want, notes)
		}
	}
}

// Without a bpf filesystem where the state should live, the daemon says so
// and how to fix it, and exits non-zero.
func TestDaemonWithoutBPFFS(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	notBPF := t.TempDir()
	out, err := exec.Command(bin.daemon, "--netns", w.ns.Path(), "--bpffs", notBPF+"/state", "--control", w.control, "--check").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("switchyardd without bpffs: %v, want exit 1\n%s", err, out)
	}
	for _, want := range []string{"no bpf filesystem", "mount -t bpf bpf " + notBPF + "/state", "--bpffs"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("switchyardd without bpffs does not say %q:\n%s", want, out)
		}
	}
}

// switchyardd --check loads everything and changes nothing: no state is
// made where there is none, and a config's bindings are only compared.
func TestDaemonCheckChangesNothing(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	check := func(extra ...string) string {
		t.Helper()
		args := append([]string{"--netns", w.ns.Path(), "--bpffs", w.root, "--control", w.control, "--check"}, extra...)
		out, err := exec.Command(bin.daemon, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("switchyardd --check: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := check(); !strings.Contains(out, "no dispatch state yet") {
		t.Errorf("check without state: %s", out)
	}
	ents, _ := os.ReadDir(w.root)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".debug") { // the kernel's own files
			t.Fatalf("check made state: %s", e.Name())
		}
	}
	w.d = w.startDaemon()
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "*")
	before := w.mustCLI("bindings", "-o", "json")
	cfg := writeFile(t, "version: 1\nbindings:\n  - {label: other, protocol: tcp, prefix: 10.2.0.0/24, ports: \"80\"}\n")
	if out := check("--config", cfg); !strings.Contains(out, "added=1 removed=1") {
		t.Errorf("check with a config: %s", out)
	}
	if after := w.mustCLI("bindings", "-o", "json"); after != before {
		t.Errorf("check changed the bindings:\n%s\nwant\n%s", after, before)
	}
}

// The config's daemon settings apply where no flag gives them, and flags
// win: here metrics come from daemon.metrics_addr, while the control
// socket of --control wins over the config's (a directory that does not
// exist, where listening would fail).
func TestDaemonSettingsFromConfig(t *testing.T) {
	t.Parallel()
	// A free port: the config asks for a fixed one.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := writeFile(t, `version: 1
daemon:
  metrics_addr: `+addr+`
  control: /nonexistent/switchyard/control.sock
`)
	w := newWorld(t, "--config", cfg)
	if v := w.mustCLI("version"); !strings.Contains(v, "dev") {
		t.Errorf("version over --control: %q", v)
	}
	if m := w.metrics(); !strings.Contains(m, "switchyard_build_info") {
		t.Errorf("metrics from daemon.metrics_addr lack switchyard_build_info:\n%s", m)
	}
}

// A settings file as 4362dae wrote it beside its control socket (the
// record of bindings and settings absent, as with builds before the
// record) is adopted: grants, policies and all, except a splice upstream
// that 4362dae let through but could never dial, which comes back as
// policy none with a warning, once. The daemonless read agrees.
func TestDaemonAdoptsSettingsFileOf4362dae(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	file := `{
  "granted": {
    "grants": {"UIDs": [4242], "GIDs": [4243], "Users": null, "Groups": null}
  },
  "broken": {
    "grants": {"UIDs": null, "GIDs": null, "Users": null, "Groups": null},
    "policy": "splice",
    "upstream": "bad!host:80"
  }
}`
	if err := os.WriteFile(w.control+".labels.json", []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	w.d = w.startDaemon()
	if log := w.d.stderr.String(); !strings.Contains(log, "recorded label setting not kept") || !strings.Contains(log, `label broken: policy splice to \"bad!host:80\" dropped to none`) {
		t.Errorf("daemon log lacks the warning about label broken:\n%s", log)
	}
	want := "labels:\n  broken: {}\n  granted:\n    grants: {uids: [4242], gids: [4243]}\n"
	if out := w.mustCLI("bindings", "-o", "yaml"); !strings.Contains(out, want) {
		t.Errorf("export:\n%s\nwant it to hold\n%s", out, want)
	}
	// The uid the file grants may register the label; another may not.
	ln := w.ns.ListenTCP(t, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if r := w.cliAs(&syscall.Credential{Uid: 4242, Gid: 4243}, []*os.File{f}, "register", "--fd", "3", "granted"); r.code != 0 {
		t.Errorf("granted uid: %+v", r)
	}
	if r := w.cliAs(&syscall.Credential{Uid: 4244, Gid: 4244}, []*os.File{f}, "register", "--fd", "3", "granted"); r.code == 0 || !strings.Contains(r.stderr, "needs root or a grant") {
		t.Errorf("other uid: %+v", r)
	}

	// What the daemon adopted is recorded: a restart warns no more, and
	// the pinned state without a daemon says the same.
	w.d.stop(t, syscall.SIGTERM)
	if out := w.mustCLI("--netns", w.ns.Path(), "bindings", "-o", "yaml", "--bpffs", w.root); !strings.Contains(out, want) {
		t.Errorf("daemonless export:\n%s\nwant it to hold\n%s", out, want)
	}
	w.d = w.startDaemon()
	if log := w.d.stderr.String(); strings.Contains(log, "not kept") {
		t.Errorf("the warning came again after a restart:\n%s", log)
	}
	if out := w.mustCLI("bindings", "-o", "yaml"); !strings.Contains(out, want) {
		t.Errorf("export after restart:\n%s\nwant it to hold\n%s", out, want)
	}
}

// The CLIs of the landed main and of 4362dae (the last that sends the
// version-1 Apply) speak to this daemon: the wire bytes of their requests
// still mean what they meant, a new optional field (engine) stays out of
// them, and what the one upstream parser refuses is refused by the daemon
// too, whatever the client checked.
func TestOldCLIAgainstNewDaemon(t *testing.T) {
	t.Parallel()
	for _, rev := range []string{landedMain, unpackedApplyMain} {
		t.Run(rev[:7], func(t *testing.T) {
			t.Parallel()
			oldCLIAgainstNewDaemon(t, filepath.Join(buildLanded(t, rev), "switchyard"))
		})
	}
}

func oldCLIAgainstNewDaemon(t *testing.T, old string) {
	w := newWorld(t)
	run := func(files []*os.File, args ...string) result {
		t.Helper()
		cmd := exec.Command(old, append([]string{"--control", w.control}, args...)...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = &out, &errb, files
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return result{out.String(), errb.String(), code}
	}
	must := func(files []*os.File, args ...string) string {
		t.Helper()
		r := run(files, args...)
		if r.code != 0 {
			t.Fatalf("old switchyard %v: exit %d: %s", args, r.code, r.stderr)
		}
		return r.stdout
	}
	if out := must(nil, "version"); !strings.Contains(out, "dev") {
		t.Errorf("version: %q", out)
	}
	cfg := writeFile(t, `version: 1
bindings:
  - {label: web, protocol: tcp, prefix: 192.0.2.0/24, ports: "80"}
labels:
  web:
    grants: {uids: [4242], users: [root]}
`)
	if out := must(nil, "apply", "-f", cfg); !strings.Contains(out, "+ web tcp 192.0.2.0/24 80") || !strings.Contains(out, "+ label web policy none users 4242,root") {
		t.Errorf("apply:\n%s", out)
	}
	if out := must(nil, "bindings", "-o", "yaml"); !strings.Contains(out, "grants: {uids: [4242], users: [root]}") {
		t.Errorf("export:\n%s", out)
	}
	// The old CLI passes this upstream on; the daemon's parser refuses it.
	if r := run(nil, "policy", "web", "splice", "bad!host:80"); r.code == 0 || !strings.Contains(r.stderr, "neither an IP address nor a DNS name") {
		t.Errorf("policy with a host the parser refuses: %+v", r)
	}
	if r := run(nil, "policy", "web", "splice", "--", "-x:80"); r.code == 0 || !strings.Contains(r.stderr, "invalid") {
		t.Errorf("policy with -x:80: %+v", r)
	}
	ln := w.ns.ListenTCP(t, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if out := must([]*os.File{f}, "register", "--fd", "3", "web"); !strings.Contains(out, "registered web tcp ipv4") {
		t.Errorf("register: %q", out)
	}
	if out := must(nil, "status", "-o", "json"); !strings.Contains(out, `"label": "web"`) && !strings.Contains(out, `"label":"web"`) {
		t.Errorf("status:\n%s", out)
	}
	// Nothing the refused policies asked for stuck.
	if out := w.mustCLI("status", "web", "-o", "json"); !strings.Contains(out, `"policy": "none"`) && !strings.Contains(out, `"policy":"none"`) {
		t.Errorf("status after refused policies:\n%s", out)
	}
	// A large first apply, whose reply this daemon would leave the
	// added bindings out of for a client of protocol version 3: the old
	// CLI, which speaks an earlier one, is told every one of them; and
	// then a change of half of them, both ways.
	const n = 20000
	large := func(label func(i int) string) string {
		var s strings.Builder
		s.WriteString("version: 1\nbindings:\n")
		for i := range n {
			fmt.Fprintf(&s, "  - {label: %s, protocol: tcp, prefix: 10.%d.%d.0/24, ports: \"80\"}\n", label(i), i/256, i%256)
		}
		return writeFile(t, s.String())
	}
	out := must(nil, "apply", "-f", large(func(int) string { return "web" }))
	if added := strings.Count(out, "+ web tcp 10."); added != n || !strings.Contains(out, "- web tcp 192.0.2.0/24 80") {
		t.Errorf("first apply of %d bindings: %d added; output starts:\n%.500s", n, added, out)
	}
	out = must(nil, "apply", "-f", large(func(i int) string { return []string{"web", "api"}[i%2] }))
	if removed, added := strings.Count(out, "- web tcp 10."), strings.Count(out, "+ api tcp 10."); removed != n/2 || added != n/2 || strings.Contains(out, "+ web") {
		t.Errorf("apply relabelling %d of %d bindings: %d removed, %d added; output starts:\n%.500s", n/2, n, removed, added, out)
	}
	if out := must(nil, "apply", "-f", cfg); strings.Count(out, "- ") != n || !strings.Contains(out, "+ web tcp 192.0.2.0/24 80") {
		t.Errorf("apply back to one binding: %d removed; output starts:\n%.500s", strings.Count(out, "- "), out)
	}
}

// The CLI of this build applies configs through the daemons of landed main,
// which reads the packed Apply but not version 3, and of 4362dae, which
// does not read the packed Apply: a small request (one datagram, which
// such a daemon refuses by its version) and a large one (which it hangs up
// on) both apply, and a second apply of the large one changes nothing.
func TestNewCLIAgainstOldDaemon(t *testing.T) {
	t.Parallel()
	for _, rev := range []string{landedMain, unpackedApplyMain} {
		t.Run(rev[:7], func(t *testing.T) {
			t.Parallel()
			newCLIAgainstOldDaemon(t, buildLanded(t, rev))
		})
	}
}

func newCLIAgainstOldDaemon(t *testing.T, old string) {
	w := newWorldNoDaemon(t)
	w.d = w.startDaemonBin(filepath.Join(old, "switchyardd"))

	small := writeFile(t, "version: 1\nbindings:\n  - {label: web, protocol: tcp, prefix: 192.0.2.0/24, ports: \"80\"}\n")
	if out := w.mustCLI("apply", "-f", small); !strings.Contains(out, "+ web tcp 192.0.2.0/24 80") {
		t.Errorf("apply of one binding:\n%s", out)
	}
	var large strings.Builder
	large.WriteString("version: 1\nbindings:\n")
	const n = 5000
	for i := range n {
		fmt.Fprintf(&large, "  - {label: web, protocol: tcp, prefix: 10.%d.%d.0/24, ports: \"80\"}\n", i/256, i%256)
	}
	file := writeFile(t, large.String())
	if out := w.mustCLI("apply", "-f", file); strings.Count(out, "+ web tcp 10.") != n {
		t.Errorf("apply of %d bindings: %d added, want %d; output starts:\n%.500s", n, strings.Count(out, "+ web tcp 10."), n, out)
	}
	if out := w.mustCLI("apply", "-f", file); strings.TrimSpace(out) != "no changes" {
		t.Errorf("second apply: %.500s", out)
	}
	if out := w.mustCLI("bindings", "-o", "json"); strings.Count(out, `"10.`) != n {
		t.Errorf("the old daemon lists %d of the %d bindings", strings.Count(out, `"10.`), n)
	}
	// Export reads the settings with a dry-run Apply: it falls back too.
	if out := w.mustCLI("bindings", "-o", "yaml"); strings.Count(out, "prefix: 10.") != n || !strings.HasPrefix(out, "version: 1\n") {
		t.Errorf("export through the old daemon: %d of the %d bindings; output starts:\n%.500s", strings.Count(out, "prefix: 10."), n, out)
	}
}
