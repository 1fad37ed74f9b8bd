package tests

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/control"
)

// pinned runs the CLI with the world's namespace and bpffs, so that it can
// read the pinned state when the daemon does not answer.
func (w *world) pinned(args ...string) result {
	w.t.Helper()
	cmd, rest := args[0], args[1:]
	return w.cli(append([]string{"--netns", w.ns.Path(), cmd, "--bpffs", w.root}, rest...)...)
}

// stateDir is the world's pinned state directory.
func (w *world) stateDir() string {
	w.t.Helper()
	ino, err := control.NetNSInode(w.ns.Path())
	if err != nil {
		w.t.Fatal(err)
	}
	return fmt.Sprintf("%s/netns-%d", w.root, ino)
}

// statusCounts is what status says per label that the maps hold.
type statusCounts struct {
	Label     string `json:"label"`
	Policy    string `json:"policy"`
	Upstream  string `json:"upstream"`
	Bindings  int    `json:"bindings"`
	Lookups   uint64 `json:"lookups"`
	Hits      uint64 `json:"hits"`
	Missing   uint64 `json:"missing"`
	BadSocket uint64 `json:"bad_socket"`
	Sockets   []struct {
		Protocol string `json:"protocol"`
		Family   string `json:"family"`
		Local    string `json:"local"`
		Cookie   uint64 `json:"cookie"`
	} `json:"sockets"`
}

type statusOut struct {
	DaemonRunning bool           `json:"daemon_running"`
	NetNS         uint64         `json:"netns"`
	Labels        []statusCounts `json:"labels"`
}

func parseStatus(t *testing.T, out string) statusOut {
	t.Helper()
	var st statusOut
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	return st
}

// With the daemon stopped, bindings and status read the pinned state and
// show the same bindings, sockets and counters as with it running, say in
// one line that the daemon is not running, and exit 0.
func TestReadsWithoutDaemon(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "*")
	w.mustCLI("bind", "web", "tcp", "2001:db8:1::/64", "443")
	w.mustCLI("bind", "down", "tcp", "10.2.0.0/24", "80")
	w.mustCLI("bind", "dns", "udp", "192.0.2.0/24", "53")
	w.mustCLI("policy", "web", "bypass")
	w.registerTCP("web", "tcp4", "127.0.0.1:0")
	for i := range 3 {
		c, err := w.ns.DialTCP(fmt.Sprintf("10.1.0.%d:%d", i+1, 1000+i), 3*time.Second)
		if err != nil {
			t.Fatalf("dial web: %v", err)
		}
		c.Close()
	}
	for i := range 2 {
		if c, err := w.ns.DialTCP(fmt.Sprintf("10.2.0.%d:80", i+1), 3*time.Second); err == nil {
			c.Close()
			t.Fatal("label without socket accepted a connection")
		}
	}

	bindingsTable := w.mustCLI("bindings")
	bindingsJSON := w.mustCLI("bindings", "-o", "json")
	running := parseStatus(t, w.mustCLI("status", "-o", "json"))
	if !running.DaemonRunning {
		t.Errorf("status with the daemon says daemon_running false")
	}

	w.d.stop(t, syscall.SIGTERM)

	r := w.pinned("bindings")
	if r.code != 0 || r.stdout != bindingsTable {
		t.Errorf("bindings without daemon: exit %d\n%s\nwant:\n%s\nstderr: %s", r.code, r.stdout, bindingsTable, r.stderr)
	}
	if r.stderr != "switchyard: switchyardd is not running: read from the pinned state in "+w.stateDir()+"\n" {
		t.Errorf("bindings without daemon: stderr %q, want one line saying the daemon is not running", r.stderr)
	}
	if r := w.pinned("bindings", "-o", "json"); r.code != 0 || r.stdout != bindingsJSON {
		t.Errorf("bindings -o json without daemon: exit %d\n%s\nwant:\n%s", r.code, r.stdout, bindingsJSON)
	}
	if r := w.pinned("bindings", "down"); r.code != 0 || !strings.Contains(r.stdout, "down   tcp       10.2.0.0/24  80") || strings.Contains(r.stdout, "web") {
		t.Errorf("bindings down without daemon: exit %d\n%s", r.code, r.stdout)
	}

	r = w.pinned("status", "-o", "json")
	if r.code != 0 {
		t.Fatalf("status without daemon: exit %d: %s", r.code, r.stderr)
	}
	stopped := parseStatus(t, r.stdout)
	if stopped.DaemonRunning {
		t.Errorf("status without daemon says daemon_running true")
	}
	if !reflect.DeepEqual(stopped.Labels, running.Labels) || stopped.NetNS != running.NetNS {
		t.Errorf("status without daemon:\n%+v\nwith it:\n%+v", stopped, running)
	}
	r = w.pinned("status")
	if r.code != 0 || !strings.HasPrefix(r.stdout, fmt.Sprintf("switchyardd is not running; pinned state of network namespace %d\n", running.NetNS)) {
		t.Errorf("status table without daemon: exit %d\n%s", r.code, r.stdout)
	}
	for _, want := range []string{"web    bypass  2         3        3     0        0    tcp ipv4 127.0.0.1:", "down   none    1         2        0     2        0    none (refused)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status table without daemon lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := w.pinned("status", "nobody"); r.code != 1 || !strings.Contains(r.stderr, "label nobody") {
		t.Errorf("status of an unknown label without daemon: exit %d: %s", r.code, r.stderr)
	}

	// Without pinned state either, the error says both.
	other := newWorldNoDaemon(t)
	r = other.pinned("bindings")
	if r.code != 1 || !strings.Contains(r.stderr, "switchyardd is not running") || !strings.Contains(r.stderr, "no pinned state in "+other.root) {
		t.Errorf("bindings with neither daemon nor state: exit %d: %s", r.code, r.stderr)
	}
}
