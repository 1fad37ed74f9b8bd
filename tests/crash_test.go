package tests

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// crashSet is one state the crash test moves between: a binding set (as
// `bindings -o json` lists it, canonically) and the policy of label
// probe-b, which apply and reload change together with the bindings.
type crashSet struct {
	name    string
	config  string // a config file that makes it, or "" (A+extra)
	listing string // bindings -o json
	policy  string // of probe-b
}

// crashSets writes the config files of the crash test's sets: A and B have
// 50,001 bindings each, differ in 25,000 of them and in the label of the
// probe 10.1.0.0/24 (probe-a, probe-b), and B gives probe-b the policy
// bypass. SWITCHYARD_CRASH_BINDINGS sets another number than 50,000:
// from 131,072 on, A and B differ in a large change's number of groups
// (dispatch's largeChange, 65,536), which returns at its commit point and
// does the rest after its reply.
func crashConfigs(t *testing.T) (a, b string) {
	t.Helper()
	n := crashBindings(t)
	gen := func(set string) string {
		var s strings.Builder
		s.WriteString("version: 1\nlabels:\n  probe-a:\n    grants: {uids: [4242]}\n")
		if set == "B" {
			s.WriteString("  probe-b: {policy: bypass}\n")
		} else {
			s.WriteString("  probe-b: {}\n")
		}
		s.WriteString("bindings:\n")
		probe := map[string]string{"A": "probe-a", "B": "probe-b"}[set]
		fmt.Fprintf(&s, "  - {label: %s, protocol: tcp, prefix: 10.1.0.0/24, ports: \"*\"}\n", probe)
		for i := range n {
			port, label := 80, fmt.Sprintf("c%d", i%50)
			if i%2 == 1 {
				if set == "A" {
					label = fmt.Sprintf("a%d", i%50)
				} else {
					port, label = 443, fmt.Sprintf("b%d", i%50)
				}
			}
			fmt.Fprintf(&s, "  - {label: %s, protocol: %s, prefix: 10.%d.%d.%d/32, ports: \"%d\"}\n",
				label, []string{"tcp", "udp"}[i%4/2], 100+i/65536, i/256%256, i%256, port)
		}
		return s.String()
	}
	return writeFile(t, gen("A")), writeFile(t, gen("B"))
}

// crashBindings is the number of bindings of the crash test's sets but
// the probe: 50,000, or SWITCHYARD_CRASH_BINDINGS.
func crashBindings(t *testing.T) int {
	t.Helper()
	s := os.Getenv("SWITCHYARD_CRASH_BINDINGS")
	if s == "" {
		return 50000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 2 || n > 1<<20 {
		t.Fatalf("SWITCHYARD_CRASH_BINDINGS=%q: want a number of bindings from 2 to 1,048,576", s)
	}
	return n
}

// crashWorld is one daemon of the crash test and what it knows.
type crashWorld struct {
	t      *testing.T
	w      *world
	config string // the daemon's --config, or ""
	sets   []*crashSet
	cur    *crashSet
	policy string // probe-b's policy in force
	rnd    *rand.Rand
	took   map[string]time.Duration // how long each kind of change takes uninterrupted
	// done: the CLI of the last change killed reported it done, so the
	// change was in force before the kill.
	done  bool
	stats *crashStats
}

type crashStats struct {
	kills, old, new, recovered atomic.Int64
	done                       atomic.Int64 // kills after the CLI reported the change done
	mu                         sync.Mutex
	byKind                     map[string]int
}

// cli runs the CLI as w.mustCLI does, with more time: four daemons with
// 50,000 bindings share the machine.
func (cw *crashWorld) cli(args ...string) string {
	cw.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.switchyard, append([]string{"--control", cw.w.control}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		cw.t.Fatalf("switchyard %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

func (cw *crashWorld) start() {
	cw.t.Helper()
	if cw.config != "" {
		cw.w.d = cw.w.startDaemon("--config", cw.config)
	} else {
		cw.w.d = cw.w.startDaemon()
	}
}

// state reads what the daemon (or, daemonless, the pinned state) says is in
// force.
func (cw *crashWorld) state(daemonless bool) (string, string) {
	cw.t.Helper()
	if daemonless {
		r := cw.w.pinned("bindings", "-o", "json")
		if r.code != 0 {
			cw.t.Fatalf("daemonless bindings: exit %d: %s", r.code, r.stderr)
		}
		return r.stdout, ""
	}
	bs := cw.cli("bindings", "-o", "json")
	pol := strings.SplitN(policyStates(cw.t, cw.w)["probe-b"], "|", 2)[0]
	if pol == "" {
		pol = "none"
	}
	return bs, pol
}

// probe returns the label that a connection to the probe reaches.
func (cw *crashWorld) probe() string {
	cw.t.Helper()
	c, err := cw.w.ns.DialTCP("10.1.0.7:80", 5*time.Second)
	if err != nil {
		cw.t.Fatalf("probe: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		cw.t.Fatalf("probe: %v", err)
	}
	return string(b)
}

// change starts a change (args of the CLI, or "reload"), and kills the
// daemon at a random instant within about its duration; with sets that
// differ in a large change, up to half as long again, as such a change
// does the rest of its work after its reply. It returns once the CLI has
// finished, and sets cw.done.
func (cw *crashWorld) change(kind string, args ...string) {
	cw.t.Helper()
	limit := cw.took[kind] * 12 / 10
	if crashBindings(cw.t) >= 1<<17 {
		limit = cw.took[kind] * 3 / 2
	}
	delay := time.Duration(cw.rnd.Int64N(int64(limit) + 1))
	var cli *exec.Cmd
	if kind == "reload" {
		cw.w.d.cmd.Process.Signal(syscall.SIGHUP)
	} else {
		cli = exec.Command(bin.switchyard, append([]string{"--control", cw.w.control}, args...)...)
		if err := cli.Start(); err != nil {
			cw.t.Fatal(err)
		}
	}
	time.Sleep(delay)
	cw.w.d.stop(cw.t, syscall.SIGKILL)
	cw.done = false
	if cli != nil {
		cw.done = cli.Wait() == nil
	}
	if cw.done {
		cw.stats.done.Add(1)
	}
	cw.stats.kills.Add(1)
	cw.stats.mu.Lock()
	cw.stats.byKind[kind]++
	cw.stats.mu.Unlock()
}

// check finds the state in force after a killed change from one state to
// another: exactly one of them, bindings and probe-b's policy together,
// with the probe reaching that state's label, and the log naming it if the
// restarted daemon recovered an interrupted change.
func (cw *crashWorld) check(from, to *crashSet, fromPol, toPol string, daemonless bool) {
	cw.t.Helper()
	var got *crashSet
	pol := ""
	if daemonless {
		bs, _ := cw.state(true)
		switch {
		case sameListing(cw.t, bs, from.listing):
			got, pol = from, fromPol
		case sameListing(cw.t, bs, to.listing):
			got, pol = to, toPol
		default:
			cw.t.Fatalf("after a kill during %s -> %s the pinned state holds %d bindings, neither set (%d, %d)", from.name, to.name, len(listing(cw.t, bs)), len(listing(cw.t, from.listing)), len(listing(cw.t, to.listing)))
		}
		// The daemon applies its config at start: give it the label
		// settings of the set recovered and no bindings key, so that it
		// keeps the bindings it recovered.
		if err := os.WriteFile(cw.config, []byte(labelsOnly(got.config)), 0o644); err != nil {
			cw.t.Fatal(err)
		}
	}
	cw.start()
	bs, p := cw.state(false)
	// The daemon lists a set the same way each time: equal text first,
	// binding by binding only if neither is equal.
	isFrom := bs == from.listing && p == fromPol
	isTo := !isFrom && bs == to.listing && p == toPol
	if !isFrom && !isTo {
		isFrom = sameListing(cw.t, bs, from.listing) && p == fromPol
		isTo = !isFrom && sameListing(cw.t, bs, to.listing) && p == toPol
	}
	switch {
	case cw.done && !isTo:
		cw.t.Fatalf("the CLI reported %s -> %s done before the kill, but the restarted daemon has %d bindings (sets: %d, %d) and policy %s, not the new set", from.name, to.name, len(listing(cw.t, bs)), len(listing(cw.t, from.listing)), len(listing(cw.t, to.listing)), p)
	case got != nil && !(got == from && isFrom || got == to && isTo):
		cw.t.Fatalf("after a kill during %s -> %s the pinned state held %s, the restarted daemon %d bindings and policy %s", from.name, to.name, got.name, len(listing(cw.t, bs)), p)
	case isFrom:
		got, pol = from, fromPol
		cw.stats.old.Add(1)
	case isTo:
		got, pol = to, toPol
		cw.stats.new.Add(1)
	default:
		cw.t.Fatalf("after a kill during %s (policy %s) -> %s (policy %s) the daemon has %d bindings (sets: %d, %d) and policy %s: a mix",
			from.name, fromPol, to.name, toPol, len(listing(cw.t, bs)), len(listing(cw.t, from.listing)), len(listing(cw.t, to.listing)), p)
	}
	log := cw.w.d.stderr.String()
	switch {
	case strings.Contains(log, "set=old"):
		cw.stats.recovered.Add(1)
		if !isFrom {
			cw.t.Fatalf("after a kill during %s -> %s the daemon logged that it recovered the old set, but has %s (policy %s)", from.name, to.name, got.name, pol)
		}
	case strings.Contains(log, "set=new"):
		cw.stats.recovered.Add(1)
		if !isTo {
			cw.t.Fatalf("after a kill during %s -> %s the daemon logged that it recovered the new set, but has %s (policy %s)", from.name, to.name, got.name, pol)
		}
	}
	want := map[bool]string{true: "probe-b", false: "probe-a"}[got.name == "B"]
	if label := cw.probe(); label != want {
		cw.t.Fatalf("after a kill during %s -> %s the daemon has %s, but the probe reached %q, want %q", from.name, to.name, got.name, label, want)
	}
	cw.cur, cw.policy = got, pol
}

// sameListing reports whether two listings of `bindings -o json` hold the
// same bindings. Equal text is the same; other text is compared binding by
// binding (a daemonless listing may be laid out otherwise).
func sameListing(t *testing.T, a, b string) bool {
	return a == b || slices.Equal(listing(t, a), listing(t, b))
}

// labelsOnly is a config file's text up to its bindings key.
func labelsOnly(config string) string {
	b, _ := os.ReadFile(config)
	s, _, _ := strings.Cut(string(b), "bindings:\n")
	return s
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// crashRun kills the daemon of one world kills times during changes.
func crashRun(t *testing.T, id int, kills int, cfgA, cfgB string, stats *crashStats) {
	w := newWorldNoDaemon(t)
	w.ready = 3 * time.Minute
	cw := &crashWorld{t: t, w: w, rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id))), took: map[string]time.Duration{}, stats: stats}
	// World 0 runs with --config and also reloads it; the pinned state is
	// read without a daemon after each kill there, before the restart
	// applies the config.
	if id == 0 {
		cw.config = writeFile(t, mustRead(t, cfgA))
	}
	cw.start()
	for _, label := range []string{"probe-a", "probe-b"} {
		ln := w.registerTCP(label, "tcp4", "127.0.0.1:0")
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(label))
				c.Close()
			}
		}()
	}
	A := &crashSet{name: "A", config: cfgA, policy: "none"}
	B := &crashSet{name: "B", config: cfgB, policy: "bypass"}
	A2 := &crashSet{name: "A+extra", policy: "none"}
	timed := func(kind string, args ...string) {
		t.Helper()
		start := time.Now()
		cw.cli(args...)
		cw.took[kind] = max(cw.took[kind], time.Since(start))
	}
	cw.cli("apply", "-f", cfgA)
	A.listing, _ = cw.state(false)
	timed("bind", "bind", "extra", "tcp", "10.3.0.0/24", "*")
	A2.listing, _ = cw.state(false)
	timed("bind", "unbind", "extra", "tcp", "10.3.0.0/24", "*")
	timed("apply", "apply", "-f", cfgB)
	B.listing, _ = cw.state(false)
	timed("policy", "policy", "probe-b", "none")
	timed("policy", "policy", "probe-b", "bypass")
	cw.cur, cw.policy = B, "bypass"
	if cw.config != "" {
		os.WriteFile(cw.config, []byte(mustRead(t, cfgB)), 0o644)
		start := time.Now()
		os.WriteFile(cw.config, []byte(mustRead(t, cfgA)), 0o644)
		w.d.notes.reset()
		w.d.cmd.Process.Signal(syscall.SIGHUP)
		if !w.d.notes.waitFor("STATUS=reloaded", 60*time.Second) {
			t.Fatalf("no reload reported:\n%s", w.d.allNotes(t))
		}
		cw.took["reload"] = time.Since(start)
		cw.cur, cw.policy = A, "none"
	}
	t.Logf("world %d: uninterrupted %v", id, cw.took)

	for range kills {
		from, fromPol := cw.cur, cw.policy
		r := cw.rnd.IntN(10)
		switch {
		case cw.config != "" && r < 5:
			to := map[bool]*crashSet{true: B, false: A}[from != B]
			os.WriteFile(cw.config, []byte(mustRead(t, to.config)), 0o644)
			cw.change("reload")
			cw.check(from, to, fromPol, to.policy, true)
		case cw.config == "" && r == 0 && from != B:
			// bind and unbind move between A and A+extra.
			if from == A {
				cw.change("bind", "bind", "extra", "tcp", "10.3.0.0/24", "*")
				cw.check(from, A2, fromPol, fromPol, false)
			} else {
				cw.change("bind", "unbind", "extra", "tcp", "10.3.0.0/24", "*")
				cw.check(from, A, fromPol, fromPol, false)
			}
		case cw.config == "" && r == 1:
			toPol := map[bool]string{true: "none", false: "bypass"}[fromPol == "bypass"]
			cw.change("policy", "policy", "probe-b", toPol)
			cw.check(from, from, fromPol, toPol, false)
		default:
			to := map[bool]*crashSet{true: B, false: A}[from != B]
			cw.change("apply", "apply", "-f", to.config)
			cw.check(from, to, fromPol, to.policy, cw.config != "")
		}
	}
}

// SIGKILL of the daemon at random instants of changes (apply, SIGHUP
// reload, bind, unbind, policy) between two sets of 50,001 bindings that
// differ in 25,000 bindings, the label of a probe binding and a label's
// policy: each restarted daemon has exactly the set before or after the
// change, bindings and policy together (full listings compared), logs
// which if it recovered an interrupted change, and a connection to the
// probe reaches that set's label. Four daemons, in namespaces of their
// own, are killed at once to fit the time.
func TestCrashDuringChanges(t *testing.T) {
	t.Parallel()
	kills := 200
	if s := os.Getenv("SWITCHYARD_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	worlds := 4
	if s := os.Getenv("SWITCHYARD_CRASH_WORLDS"); s != "" {
		worlds, _ = strconv.Atoi(s)
	}
	cfgA, cfgB := crashConfigs(t)
	stats := &crashStats{byKind: map[string]int{}}
	start := time.Now()
	t.Cleanup(func() {
		t.Logf("%d kills in %v (%v); the restarted daemon had the old state %d times, the new %d times (%d kills after the CLI reported the change done); %d times it recovered an interrupted commit",
			stats.kills.Load(), time.Since(start).Round(time.Second), stats.byKind, stats.old.Load(), stats.new.Load(), stats.done.Load(), stats.recovered.Load())
		if !t.Failed() && stats.kills.Load() < int64(kills) {
			t.Errorf("%d kills, want %d", stats.kills.Load(), kills)
		}
	})
	// World 0 (--config, daemonless reads) costs about twice as much a
	// kill: it gets half the share of the others.
	share := func(i int) int {
		if worlds == 1 {
			return kills
		}
		w0 := kills / (2*worlds - 1)
		if i == 0 {
			return w0
		}
		n := (kills - w0) / (worlds - 1)
		if i <= (kills-w0)%(worlds-1) {
			n++
		}
		return n
	}
	for i := range worlds {
		n := share(i)
		t.Run(fmt.Sprintf("world%d", i), func(t *testing.T) {
			t.Parallel()
			crashRun(t, i, n, cfgA, cfgB, stats)
		})
	}
}
