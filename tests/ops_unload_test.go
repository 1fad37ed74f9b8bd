package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// bpfObjects are the ids of the BPF programs and maps switchyard has in a
// world: the sk_lookup program attached to its namespace, the policy
// programs on its cgroup, and the maps they use, as bpftool shows them.
type bpfObjects struct {
	progs, maps []int
	names       []string
}

func bpftoolJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("bpftool", append([]string{"-j"}, args...)...).Output()
	if err != nil {
		t.Fatalf("bpftool %s: %v", strings.Join(args, " "), err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		return // nothing to show (cgroup show of a cgroup without programs)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("bpftool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type bpftoolProg struct {
	ID     int    `json:"id"`
	Name   string `json:"name"`
	MapIDs []int  `json:"map_ids"`
}

type bpftoolMap struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// switchyardObjects finds the world's programs through the netns link of
// its namespace and its cgroup's attachments.
func (w *world) switchyardObjects(t *testing.T) bpfObjects {
	t.Helper()
	ino, err := control.NetNSInode(w.ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Type     string `json:"type"`
		ProgID   int    `json:"prog_id"`
		NetnsIno uint64 `json:"netns_ino"`
	}
	bpftoolJSON(t, &links, "link", "show")
	var progIDs []int
	for _, l := range links {
		if l.Type == "netns" && l.NetnsIno == ino {
			progIDs = append(progIDs, l.ProgID)
		}
	}
	var cg []struct {
		ID int `json:"id"`
	}
	bpftoolJSON(t, &cg, "cgroup", "show", w.cgroup)
	for _, p := range cg {
		progIDs = append(progIDs, p.ID)
	}
	var progs []bpftoolProg
	bpftoolJSON(t, &progs, "prog", "show")
	var objs bpfObjects
	for _, p := range progs {
		if slices.Contains(progIDs, p.ID) {
			objs.progs = append(objs.progs, p.ID)
			objs.names = append(objs.names, p.Name)
			objs.maps = append(objs.maps, p.MapIDs...)
		}
	}
	slices.Sort(objs.maps)
	objs.maps = slices.Compact(objs.maps)
	return objs
}

// remaining lists those of objs that bpftool still shows with a sy_ name.
func remaining(t *testing.T, objs bpfObjects) []string {
	var progs []bpftoolProg
	bpftoolJSON(t, &progs, "prog", "show")
	var maps []bpftoolMap
	bpftoolJSON(t, &maps, "map", "show")
	var left []string
	for _, p := range progs {
		if slices.Contains(objs.progs, p.ID) && strings.HasPrefix(p.Name, "sy_") {
			left = append(left, "prog "+p.Name)
		}
	}
	for _, m := range maps {
		if slices.Contains(objs.maps, m.ID) && strings.HasPrefix(m.Name, "sy_") {
			left = append(left, "map "+m.Name)
		}
	}
	return left
}

// unload detaches the program and removes every pin and file; a socket
// bound the ordinary way then gets the traffic a binding steered; a second
// unload has nothing to remove; with a daemon running it refuses unless
// --stop-daemon.
func TestUnload(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "80")
	w.mustCLI("bind", "proxied", "tcp", "10.6.0.0/24", "*")
	w.mustCLI("policy", "web", "bypass")
	upstream := w.ns.ListenTCP(t, "127.0.0.1:0")
	httpService(t, "upstream", upstream)
	w.mustCLI("policy", "proxied", "splice", upstream.Addr().String())
	worker := w.spliceWorker("proxied")
	httpService(t, "web", w.registerTCP("web", "tcp4", "127.0.0.1:0"))
	httpService(t, "ordinary", w.ns.ListenTCP(t, "0.0.0.0:80"))
	w.expectCurl("10.1.0.1", 80, "web")

	objs := w.switchyardObjects(t)
	for _, want := range []string{"sy_dispatch", "sy_p_sockops"} {
		if !slices.Contains(objs.names, want) {
			t.Fatalf("bpftool shows no %s for the world (programs %v)", want, objs.names)
		}
	}
	if len(objs.maps) < 5 {
		t.Fatalf("bpftool shows %d maps of the world's programs", len(objs.maps))
	}

	unload := func(args ...string) result {
		return w.cli(append([]string{"--netns", w.ns.Path(), "unload", "--bpffs", w.root}, args...)...)
	}
	r := unload()
	if r.code != 1 || !strings.Contains(r.stderr, "serves this network namespace on "+w.control+": stop it first (systemctl stop switchyardd), or pass --stop-daemon") {
		t.Errorf("unload with a running daemon: exit %d: %s%s", r.code, r.stderr, r.stdout)
	}
	w.expectCurl("10.1.0.1", 80, "web")
	if _, err := os.Stat(w.stateDir()); err != nil {
		t.Errorf("refused unload touched the state: %v", err)
	}

	r = unload("--stop-daemon")
	if r.code != 0 {
		t.Fatalf("unload --stop-daemon: exit %d: %s%s", r.code, r.stderr, r.stdout)
	}
	// unload waited for the exit; the harness's reaper may lag a little.
	select {
	case <-w.d.done:
	case <-time.After(5 * time.Second):
		t.Errorf("switchyardd still runs after unload --stop-daemon")
	}
	for _, want := range []string{
		"stopped switchyardd (pid ",
		"stopped splice worker pid ",
		"(label proxied)\n",
		"detached the dispatch program (link ",
		"removed " + w.stateDir() + " (",
		"sy_bindings", "sy_p_sockops_link",
		"removed " + w.control + ".labels.json\n",
		"the kernel's own socket lookup is in force",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("unload output lacks %q:\n%s", want, r.stdout)
		}
	}
	if running(worker) {
		t.Errorf("splice worker %d still runs after unload", worker)
	}
	for _, p := range []string{w.stateDir(), w.control, w.control + ".labels.json", w.control + ".splice"} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there after unload: %v", p, err)
		}
	}
	// The kernel frees programs and maps in deferred work after the last
	// reference goes.
	testenv.WaitFor(t, 10*time.Second, "objects gone after unload", func() (bool, string) {
		left := remaining(t, objs)
		return len(left) == 0, fmt.Sprintf("bpftool still shows %v", left)
	})
	if after := w.switchyardObjects(t); len(after.progs) != 0 {
		t.Errorf("programs still attached after unload: %v", after.names)
	}
	w.expectCurl("10.1.0.1", 80, "ordinary")

	r = unload()
	if r.code != 0 || !strings.HasPrefix(r.stdout, "nothing to remove: switchyard has no state in network namespace inode ") {
		t.Errorf("second unload: exit %d: %s%s", r.code, r.stderr, r.stdout)
	}
}

// running reports whether process pid runs (exists and is not a zombie
// waiting for its new parent to reap it).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// After the daemon was killed (its control socket left behind), unload needs
// no --stop-daemon and removes the stale socket with the rest.
func TestUnloadAfterKill(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/24", "80")
	w.d.stop(t, syscall.SIGKILL)
	r := w.cli("--netns", w.ns.Path(), "unload", "--bpffs", w.root)
	if r.code != 0 {
		t.Fatalf("unload after kill: exit %d: %s%s", r.code, r.stderr, r.stdout)
	}
	for _, want := range []string{"detached the dispatch program", "removed " + w.stateDir() + " (", "removed " + w.control + "\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("unload output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "stopped switchyardd") {
		t.Errorf("unload says it stopped a daemon that was dead:\n%s", r.stdout)
	}
}
