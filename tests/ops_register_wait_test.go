package tests

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// startRegister starts `switchyard register --fd 3 ...` in the background
// with a socket of the world's namespace as fd 3, and returns a channel
// that receives its result when it exits.
func (w *world) startRegister(t *testing.T, args ...string) <-chan result {
	t.Helper()
	ln := w.ns.ListenTCP(t, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, bin.switchyard, append([]string{"--control", w.control, "register", "--fd", "3"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	done := make(chan result, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer cancel()
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		done <- result{out.String(), errb.String(), code}
	}()
	t.Cleanup(func() { cancel(); <-exited })
	return done
}

// register --wait, started before the daemon, registers once the daemon is
// up; also when a stopped daemon left its socket file behind (nobody
// accepts on it until the next daemon listens).
func TestRegisterWaitsForDaemon(t *testing.T) {
	t.Parallel()
	for _, stale := range []bool{false, true} {
		name := "no-socket"
		if stale {
			name = "stale-socket"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newWorldNoDaemon(t)
			if stale {
				// A socket file nobody listens on: connect is refused.
				l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: w.control, Net: "unixpacket"})
				if err != nil {
					t.Fatal(err)
				}
				l.SetUnlinkOnClose(false)
				l.Close()
			}
			cfg := writeFile(t, "version: 1\nbindings:\n  - {label: web, protocol: tcp, prefix: 10.30.0.0/24, ports: \"*\"}\n")
			done := w.startRegister(t, "--wait", "50s", "web")
			w.d = w.startDaemon("--config", cfg)
			var r result
			select {
			case r = <-done:
			case <-time.After(55 * time.Second):
				t.Fatal("register --wait 50s did not finish within 55s")
			}
			if r.code != 0 || !strings.HasPrefix(r.stdout, "registered web tcp ipv4 127.0.0.1:") {
				t.Fatalf("register --wait: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			if st := w.mustCLI("status", "web"); !strings.Contains(st, "127.0.0.1:") {
				t.Errorf("status after register --wait shows no socket:\n%s", st)
			}
		})
	}
}

// register --wait gives up when no daemon comes, with an error that says
// so and a non-zero exit; a bad --wait is a usage error.
func TestRegisterWaitGivesUp(t *testing.T) {
	t.Parallel()
	w := newWorldNoDaemon(t)
	start := time.Now()
	r := <-w.startRegister(t, "--wait", "1500ms", "web")
	waited := time.Since(start)
	if r.code != 1 || r.stdout != "" {
		t.Errorf("register --wait with no daemon: exit %d, stdout %q; want exit 1 and nothing on stdout", r.code, r.stdout)
	}
	for _, want := range []string{"switchyard: register: switchyardd is not running on that control socket (no control socket at " + w.control + ")", "; gave up after waiting 1.5s for it (--wait)\n"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
	if waited < 1500*time.Millisecond {
		t.Errorf("register --wait 1500ms gave up after %v", waited)
	}

	r = <-w.startRegister(t, "--wait", "soon", "web")
	if r.code != 2 || !strings.Contains(r.stderr, `--wait "soon": give a duration such as 30s`) {
		t.Errorf("register --wait soon: exit %d, stderr %q; want a usage error (exit 2)", r.code, r.stderr)
	}
}
