package tests

import (
	"strings"
	"syscall"
	"testing"
)

// --timeout bounds how long the CLI waits for a daemon that does not
// answer (here one stopped with SIGSTOP), before or after the command, and
// says what the operator should know; without it the CLI waits, and the
// same command works once the daemon runs again. A bad duration is a usage
// error.
func TestTimeoutGivesUpOnAStuckDaemon(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "192.0.2.0/24", "80")

	for _, r := range []result{w.cli("--timeout", "0s", "status"), w.cli("status", "--timeout", "soon")} {
		if r.code != 2 || !strings.Contains(r.stderr, "give a positive duration such as 30s") {
			t.Errorf("bad --timeout: exit %d, stderr %q; want exit 2 and the accepted form", r.code, r.stderr)
		}
	}

	pid := w.d.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	for _, args := range [][]string{
		{"--timeout", "1s", "status"},
		{"bindings", "--timeout", "500ms"},
		{"--timeout", "1s", "bind", "api", "tcp", "192.0.2.0/24", "81"},
	} {
		r := w.cli(args...)
		cmd := args[0]
		if cmd == "--timeout" {
			cmd = args[2]
		}
		want := "switchyard: " + cmd + ": no answer from switchyardd within "
		if r.code != 1 || !strings.HasPrefix(r.stderr, want) || !strings.Contains(r.stderr, "may still complete") {
			t.Errorf("%v against a stopped daemon: exit %d, stderr %q; want exit 1 and %q...", args, r.code, r.stderr, want)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	// The bind that timed out was sent: the daemon, running again, may
	// have made it. Either way it answers now.
	if out := w.mustCLI("--timeout", "20s", "bindings"); !strings.Contains(out, "192.0.2.0/24") {
		t.Errorf("bindings after SIGCONT:\n%s", out)
	}
}
