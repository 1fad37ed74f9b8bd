package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

const gib = 1 << 30

func integrityBytes() uint64 {
	if testing.Short() {
		return 64 << 20
	}
	return gib
}

func (e *env) counters(label string) Counters {
	e.t.Helper()
	c, err := e.m.Counters()
	if err != nil {
		e.t.Fatal(err)
	}
	return c[label]
}

// bypassServer binds svc to srvAddr:8080, serves it with a server helper in
// the bypass cgroup that reads with recv, and turns bypass on for it.
func (e *env) bypassServer(recv string, env []string) {
	e.t.Helper()
	e.bind("svc", srvAddr+"/32", "8080")
	e.serverEnv("svc", true, recv, env)
	if err := e.m.SetBypass("svc", true); err != nil {
		e.t.Fatal(err)
	}
}

// bypassInForce fails the test unless the svc label's bypass is
// accelerated, so that a test of what bypass leaves alone can fail.
func (e *env) bypassInForce() {
	e.t.Helper()
	st, err := e.m.Status()
	if err != nil || !strings.HasPrefix(st["svc"], "bypass") || strings.Contains(st["svc"], "not accelerated") {
		e.t.Fatalf("status %q, %v: want bypass in force", st["svc"], err)
	}
}

// Bytes sent through bypass between two namespaces arrive intact, whether
// the receiver reads with read(2), readv(2) or splice(2). Receivers that use
// recvmsg get their data redirected; a splice(2) receiver never does, as it
// would not see redirected data: on this kernel without fentry that takes
// bypass off unless TrustReaders, and with fentry the guard sees it.
func TestBypassIntegrity(t *testing.T) {
	n := integrityBytes()
	for _, tc := range []struct {
		recv  string
		trust bool
	}{{"read", true}, {"readv", true}, {"splice", false}} {
		t.Run(tc.recv, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, Options{TrustReaders: tc.trust})
			e.bypassServer(tc.recv, nil)
			e.transfer(e.cli, true, srvAddr+":8080", 1, n)
			c := e.counters("svc")
			st, _ := e.m.Status()
			t.Logf("counters %+v; status %q", c, st["svc"])
			if tc.trust && c.Bytes < n {
				t.Errorf("bypass moved %d bytes, want at least %d", c.Bytes, n)
			}
			if !tc.trust && c.Bytes != 0 {
				t.Errorf("bypass redirected %d bytes to a splice(2) receiver", c.Bytes)
			}
			if !strings.HasPrefix(st["svc"], "bypass") {
				t.Errorf("status %q, want bypass...", st["svc"])
			}
		})
	}
}

// A client that is not local to the cgroup bypass watches (here: outside
// the test cgroup, standing for a peer on another host) is left alone: its
// data takes the normal path, intact.
func TestBypassLeavesRemotePeerAlone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{TrustReaders: true})
	e.bypassServer("read", nil)
	e.bypassInForce()
	e.transfer(e.cli, false, srvAddr+":8080", 3, 32<<20)
	c := e.counters("svc")
	t.Logf("counters %+v", c)
	if c != (Counters{}) {
		t.Errorf("bypass took on a connection with a remote peer: %+v", c)
	}
}

// A connection whose client or server busy-polls (SO_BUSY_POLL) stays on
// the normal path, where busy polling works, and is counted; with the
// server's end busy-polling, the client's end, which joined first, leaves
// again, so none of its messages count as passed either.
func TestBypassLeavesBusyPollingAlone(t *testing.T) {
	for _, side := range []string{"client", "server"} {
		t.Run(side, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, Options{TrustReaders: true})
			var srvEnv, cliEnv []string
			if side == "server" {
				srvEnv = []string{"SY_BUSY_POLL=50"}
			} else {
				cliEnv = []string{"SY_BUSY_POLL=50"}
			}
			e.bypassServer("read", srvEnv)
			e.bypassInForce()
			e.transfer(e.cli, true, srvAddr+":8080", 6, 8<<20, cliEnv...)
			e.transfer(e.cli, true, srvAddr+":8080", 7, 1<<20, cliEnv...)
			c := e.counters("svc")
			t.Logf("counters %+v", c)
			if c != (Counters{BusyPoll: 2}) {
				t.Errorf("counters %+v, want only busy_poll 2: both connections left alone", c)
			}
			// The same server without busy polling on the client is
			// bypassed (the server side cannot be switched off).
			if side == "client" {
				e.transfer(e.cli, true, srvAddr+":8080", 8, 1<<20)
				if c := e.counters("svc"); c.Bytes < 1<<20 || c.Connections != 1 {
					t.Errorf("a client without busy polling was not bypassed: %+v", c)
				}
			}
		})
	}
}

// Switching bypass off and on while a connection streams loses, duplicates
// and reorders nothing; connections opened while it is on are bypassed.
func TestBypassToggleWhileOpen(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{TrustReaders: true})
	e.bypassServer("read", nil)
	done := make(chan struct{})
	stop := make(chan struct{})
	var switches int
	go func() {
		defer close(done)
		on := true
		for {
			select {
			case <-time.After(15 * time.Millisecond):
			case <-stop:
				return
			}
			switches++
			on = !on
			if err := e.m.SetBypass("svc", on); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 3 {
		// Paced writes keep each connection open across many switches.
		e.transfer(e.cli, true, srvAddr+":8080", uint64(10+i), 64<<20, "SY_CLIENT_PACE=200us")
	}
	close(stop)
	<-done
	t.Logf("switched %d times; counters %+v", switches, e.counters("svc"))
	if err := e.m.SetBypass("svc", true); err != nil {
		t.Fatal(err)
	}
	before := e.counters("svc").Bytes
	e.transfer(e.cli, true, srvAddr+":8080", 20, 16<<20)
	t.Logf("after: counters %+v", e.counters("svc"))
	if got := e.counters("svc").Bytes - before; got < 16<<20 {
		t.Errorf("a connection opened with bypass on had %d bytes redirected, want all %d", got, 16<<20)
	}
}

// Bypass outlives its Manager: pinned maps and link keep redirecting after
// Close, and a new Manager adopts the state.
func TestBypassSurvivesRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{TrustReaders: true})
	e.bypassServer("read", nil)
	e.m.Close()
	// No manager: the pinned programs work on.
	e.transfer(e.cli, true, srvAddr+":8080", 4, 8<<20)
	e.m = e.open()
	if c := e.counters("svc"); c.Bytes < 8<<20 {
		t.Errorf("with no manager running, bypass redirected %d bytes, want %d", c.Bytes, 8<<20)
	}
	st, err := e.m.Status()
	if err != nil || !strings.HasPrefix(st["svc"], "bypass") {
		t.Fatalf("status after restart %q, %v; want bypass", st["svc"], err)
	}
	e.transfer(e.cli, true, srvAddr+":8080", 5, 8<<20)
	if c := e.counters("svc"); c.Bytes < 16<<20 {
		t.Errorf("after restart bypass redirected %d bytes in all, want %d", c.Bytes, 16<<20)
	}
}

// Policy maps pinned by an older build with another layout are migrated on
// Open: here sy_p_stats as it was before busy_poll joined its values. The
// counters it held survive and bypass works on against the new map.
func TestMigrateOlderStats(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{TrustReaders: true})
	e.bind("svc", srvAddr+"/32", "8080")
	e.server("svc", true, "read")
	// Bypass state exists only while a label has bypass.
	if err := e.m.SetBypass("svc", true); err != nil {
		t.Fatal(err)
	}
	id, ok, err := e.d.LabelID("svc")
	if err != nil || !ok {
		t.Fatalf("label id: %v %v", ok, err)
	}
	e.m.Close()

	// The older layout: four counters (bytes, messages, connections,
	// passed), 32 bytes, instead of this build's five.
	pin := filepath.Join(e.d.Dir(), "sy_p_stats")
	cur, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 32, MaxEntries: cur.MaxEntries()})
	cur.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	vals := make([][4]uint64, ebpf.MustPossibleCPU())
	vals[0] = [4]uint64{1000, 10, 1, 5}
	if err := old.Put(id, vals); err != nil {
		t.Fatal(err)
	}
	os.Remove(pin)
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}

	e.m = e.open()
	if c := e.counters("svc"); c != (Counters{Bytes: 1000, Messages: 10, Connections: 1, Passed: 5}) {
		t.Errorf("counters after migration %+v, want those of the old map", c)
	}
	if err := e.m.SetBypass("svc", true); err != nil {
		t.Fatal(err)
	}
	e.transfer(e.cli, true, srvAddr+":8080", 9, 4<<20)
	if c := e.counters("svc"); c.Bytes < 1000+4<<20 || c.Connections != 2 {
		t.Errorf("after migration bypass counted %+v, want 4 MiB more and a second connection", c)
	}
}
