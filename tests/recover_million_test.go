package tests

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
)

// An apply of 1,048,576 bindings replies at its commit point and writes the
// spare generations after. The daemon is killed with SIGKILL as soon as the
// reply's first datagram arrives, during that rest: restarted, it recovers
// the new set within the daemon's memory target, logs that it did, lists
// exactly the set applied, and the same file applied again changes nothing.
//
// The request goes straight to the control socket, not through the CLI:
// the CLI prints its diff before anything can see the reply, and under the
// load of a full test run that took longer than the daemon's rest (the
// kill then came after the change had finished, and the test failed).
func TestRecoverMillionAfterCommitPoint(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	file := filepath.Join(w.dir, "million.yaml")
	bs := writeScaleConfig(t, file, scaleBindings, 0)

	ds, err := control.EncodeRequest(control.NewRequest(&control.ApplyRequest{Config: control.Config{Bindings: bs}}))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: w.control, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, d := range ds {
		if _, err := conn.Write(d); err != nil {
			t.Fatalf("apply request: %v", err)
		}
	}
	// The daemon sends the reply at the commit point.
	first := make([]byte, control.MaxDatagram)
	n, err := conn.Read(first)
	if err != nil {
		t.Fatalf("apply reply: %v", err)
	}
	w.d.stop(t, syscall.SIGKILL)
	reply := [][]byte{first[:n]}
	for {
		d := make([]byte, control.MaxDatagram)
		n, err := conn.Read(d)
		if n == 0 || err != nil {
			break
		}
		reply = append(reply, d[:n])
	}
	if rep, err := control.DecodeReply(reply, 0); err != nil || rep.Err != nil {
		t.Fatalf("apply reply: %v, %v", err, rep)
	}

	_, log := restartTimed(t, w)
	if !strings.Contains(log, "set=new") {
		t.Fatalf("the restarted daemon did not log that it recovered the new set (was the daemon killed after the change had finished?); log:\n%s", log)
	}
	binding.Sort(bs)
	if got, want := w.slowCLI("bindings", "-o", "json"), bindingsJSON(bs); got != want {
		t.Fatalf("after the recovery bindings -o json lists %d bytes, want the %d bindings applied (%d bytes)", len(got), len(bs), len(want))
	}
	t.Logf("daemon peak rss %.1f MiB after the listing", float64(vmHWM(t, w.d.cmd.Process.Pid))/(1<<20))
	if out := w.slowCLI("apply", "-f", file); out != "no changes\n" {
		t.Fatalf("the same file applied after the recovery printed %.300q, want \"no changes\\n\"", out)
	}
	peak := float64(vmHWM(t, w.d.cmd.Process.Pid)) / (1 << 20)
	t.Logf("daemon peak rss %.1f MiB after the listing and the second apply", peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB after the recovery (listing, apply); the target is at most %d MiB", peak, maxApplyRSS)
	}
}

// An apply of 1,048,576 bindings into an empty daemon is killed before its
// commit point, once the data path's spare generation holds some of it:
// restarted, the daemon recovers the old, empty set within its memory
// target and logs that it did.
func TestRecoverMillionBeforeCommitPoint(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	file := filepath.Join(w.dir, "million.yaml")
	writeScaleConfig(t, file, scaleBindings, 0)
	empty := w.mustCLI("bindings", "-o", "json")

	commit, err := ebpf.LoadPinnedMap(filepath.Join(w.stateDir(), "sy_commit"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer commit.Close()
	prefixes, err := ebpf.LoadPinnedMap(filepath.Join(w.stateDir(), "sy_prefixes"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer prefixes.Close()

	cli := exec.Command(bin.switchyard, "--control", w.control, "apply", "-f", file)
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	// sy_commit[0] is {generation, state, ...}: state 1 is a change begun,
	// before its commit point. The data path was empty: a key in
	// sy_prefixes is the change's.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var c [4]uint32
		if err := commit.Lookup(uint32(0), &c); err != nil {
			t.Fatal(err)
		}
		if c[1] == 2 || c[1] == 0 && c[0] == 1 {
			t.Fatalf("the apply passed its commit point before the test saw its data path writes (sy_commit %v)", c)
		}
		key := make([]byte, prefixes.KeySize())
		if c[1] == 1 {
			err := prefixes.NextKey(nil, key)
			if err == nil {
				break
			}
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatal(err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the apply did not begin its commit within 3 minutes")
		}
		time.Sleep(time.Millisecond) // polling: the daemon does not say when it writes
	}
	w.d.stop(t, syscall.SIGKILL)
	if err := cli.Wait(); err == nil {
		t.Fatal("apply succeeded though the daemon was killed before its commit point")
	}

	_, log := restartTimed(t, w)
	if !strings.Contains(log, "set=old") {
		t.Fatalf("the restarted daemon did not log that it recovered the old set; log:\n%s", log)
	}
	if got := w.mustCLI("bindings", "-o", "json"); got != empty {
		t.Fatalf("after the recovery bindings -o json lists %.300q, want the empty set %q", got, empty)
	}
}

// restartTimed starts the world's daemon again after a kill, logs how long
// it took to be ready and its peak resident memory until then, fails the
// test if that is above the target, and returns the peak and its log.
func restartTimed(t *testing.T, w *world) (float64, string) {
	t.Helper()
	w.ready = 3 * time.Minute
	start := time.Now()
	w.d = w.startDaemon()
	took := time.Since(start)
	peak := float64(vmHWM(t, w.d.cmd.Process.Pid)) / (1 << 20)
	t.Logf("restarted daemon ready in %v, peak rss %.1f MiB", took.Round(time.Millisecond), peak)
	if peak > maxApplyRSS {
		t.Errorf("the daemon's resident memory peaked at %.1f MiB recovering %d bindings; the target is at most %d MiB", peak, scaleBindings, maxApplyRSS)
	}
	return peak, w.d.stderr.String()
}
