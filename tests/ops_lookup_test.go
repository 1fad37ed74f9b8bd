package tests

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

type lookupOut struct {
	Binding *struct {
		Label, Protocol, Prefix, Ports string
	} `json:"binding"`
	Label  string `json:"label"`
	Socket *struct {
		Local  string `json:"local"`
		Cookie uint64 `json:"cookie"`
		Owners []struct {
			PID int `json:"pid"`
		} `json:"owners"`
	} `json:"socket"`
	Verdict         string `json:"verdict"`
	CountersCounted bool   `json:"counters_counted"`
}

func (w *world) lookup(proto string, dst netip.AddrPort) lookupOut {
	w.t.Helper()
	r := w.pinned("lookup", proto, dst.String(), "-o", "json")
	if r.code != 0 {
		w.t.Fatalf("lookup %s %s: exit %d: %s", proto, dst, r.code, r.stderr)
	}
	var out lookupOut
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		w.t.Fatalf("lookup %s %s: %v\n%s", proto, dst, err, r.stdout)
	}
	return out
}

// landing is where a real TCP connection to dst lands: the name of the
// HTTP service that answers, or "refused".
func (w *world) landing(dst netip.AddrPort) string {
	w.t.Helper()
	out, err := w.run("curl", "-sS", "--max-time", "5", "http://"+dst.String()+"/")
	if err != nil {
		if strings.Contains(out, "Connection refused") || strings.Contains(out, "Couldn't connect") {
			return "refused"
		}
		w.t.Fatalf("curl %s: %v: %s", dst, err, out)
	}
	name, _, _ := strings.Cut(out, " saw ")
	return name
}

// checkLookups compares lookup with binding.Lookup for each probe, and
// with where a real connection lands. served names the labels that have a
// socket; other traffic that no binding takes goes to "ordinary".
func checkLookups(t *testing.T, w *world, bs []binding.Binding, served map[string]bool, probes []netip.AddrPort) {
	t.Helper()
	for _, dst := range probes {
		got := w.lookup("tcp", dst)
		want, ok := binding.Lookup(bs, binding.TCP, dst)
		wantVerdict, wantLanding := "kernel", "ordinary"
		if ok {
			wantVerdict, wantLanding = "refused", "refused"
			if served[want.Label] {
				wantVerdict, wantLanding = "delivered", want.Label
			}
		}
		switch {
		case ok != (got.Binding != nil):
			t.Errorf("%s: lookup binding %+v, reference %v %v", dst, got.Binding, ok, want)
		case ok && (got.Binding.Label != want.Label || got.Binding.Prefix != want.Prefix.String() || got.Binding.Ports != want.Ports.String() || got.Label != want.Label):
			t.Errorf("%s: lookup binding %+v, reference %v", dst, got.Binding, want)
		case got.Verdict != wantVerdict:
			t.Errorf("%s: lookup verdict %s, want %s", dst, got.Verdict, wantVerdict)
		case got.CountersCounted:
			t.Errorf("%s: lookup counted in the counters", dst)
		case (got.Verdict == "delivered") != (got.Socket != nil):
			t.Errorf("%s: verdict %s with socket %+v", dst, got.Verdict, got.Socket)
		}
		if land := w.landing(dst); land != wantLanding {
			t.Errorf("%s: a connection lands at %s; lookup said %s (%+v)", dst, land, got.Verdict, got.Binding)
		}
	}
}

// lookup answers as binding.Lookup and the real traffic do for the README's
// precedence table and for random probes over a random binding set.
func TestLookup(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	var bs []binding.Binding
	bind := func(label, prefix, ports string) {
		b, err := binding.Parse(label, "tcp", prefix, ports)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		w.mustCLI("bind", label, "tcp", prefix, ports)
	}
	// The README's table, a row per label set.
	bind("a1", "10.1.0.0/24", "80")
	bind("b1", "10.1.0.0/24", "1-1000")
	bind("c1", "10.1.0.0/24", "*")
	bind("a2", "10.2.0.0/16", "443")
	bind("b2", "10.2.3.0/24", "*")
	bind("a3", "10.3.0.0/24", "1000-2000")
	bind("b3", "10.3.0.0/24", "1500-1600")
	bind("c3", "10.3.0.0/24", "1550")
	bind("a4", "10.4.0.5", "80")
	bind("b4", "10.4.0.0/16", "*")
	bind("a5", "::/0", "*")
	served := map[string]bool{}
	for _, l := range []string{"a1", "b1", "c1", "a2", "b2", "a3", "b3", "c3", "b4", "a5"} {
		httpService(t, l, w.registerTCP(l, "tcp4", "127.0.0.1:0"))
		served[l] = true
	}
	ordinary := w.ns.ListenTCP(t, "0.0.0.0:81")
	httpService(t, "ordinary", ordinary)
	// Ordinary sockets where bindings steer: they must get only what no
	// binding takes (a4 without a socket is refused, not leaked to :80).
	for _, p := range []int{80, 1001, 1200, 1500, 1550, 1601} {
		httpService(t, "ordinary", w.ns.ListenTCP(t, fmt.Sprintf("0.0.0.0:%d", p)))
	}
	ap := netip.MustParseAddrPort
	checkLookups(t, w, bs, served, []netip.AddrPort{
		ap("10.1.0.9:80"), ap("10.1.0.9:81"), ap("10.1.0.9:1001"),
		ap("10.2.3.4:443"), ap("10.2.4.4:443"),
		ap("10.3.0.1:1200"), ap("10.3.0.1:1500"), ap("10.3.0.1:1550"), ap("10.3.0.1:1601"),
		ap("10.4.0.5:81"), ap("10.4.0.5:80"), // a4 has no socket: refused
		ap("10.9.9.9:81"), // no binding: the ordinary socket
	})

	// The table output names the binding, the socket and who holds it.
	r := w.pinned("lookup", "tcp", "10.3.0.1:1550", "--from", "10.9.0.1:40000")
	for _, want := range []string{
		"lookup:   tcp 10.3.0.1:1550 from 10.9.0.1:40000\n",
		"binding:  c3 tcp 10.3.0.0/24 1550\n",
		"label:    c3\n",
		"socket:   tcp ipv4 127.0.0.1:",
		fmt.Sprintf(", pid %d (", os.Getpid()),
		"verdict:  delivered\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("lookup table lacks %q: exit %d\n%s%s", want, r.code, r.stdout, r.stderr)
		}
	}
	r = w.pinned("lookup", "tcp", "10.4.0.5:80")
	if !strings.Contains(r.stdout, "verdict:  refused (no socket: label a4 has no tcp socket registered for ipv4)\n") {
		t.Errorf("lookup of a label without socket:\n%s", r.stdout)
	}
	r = w.pinned("lookup", "udp", "10.1.0.9:53")
	if !strings.Contains(r.stdout, "binding:  none\n") || !strings.Contains(r.stdout, "verdict:  left to the kernel's own lookup") {
		t.Errorf("lookup of unbound traffic:\n%s", r.stdout)
	}

	// A random binding set; the probes go to it in one daemonless run
	// too: lookup reads the pinned state either way.
	rnd := rand.New(rand.NewPCG(7, 7))
	base := len(bs)
	ports := []string{"80", "8080", "8000-8999", "8000-8099", "*", "1-1023"}
	for tries := 0; len(bs) < base+40 && tries < 1000; tries++ {
		prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 50, byte(rnd.IntN(2)), byte(rnd.IntN(4))}), []int{16, 23, 24, 31, 32}[rnd.IntN(5)]).Masked()
		b := binding.Binding{Label: []string{"x", "y", "z"}[rnd.IntN(3)], Protocol: binding.TCP, Prefix: prefix}
		b.Ports, _ = binding.ParsePorts(ports[rnd.IntN(len(ports))])
		clash := false
		for _, o := range bs {
			clash = clash || o.Key() == b.Key() || binding.Conflict(o, b)
		}
		if !clash {
			bind(b.Label, b.Prefix.String(), b.Ports.String())
		}
	}
	for _, l := range []string{"x", "y"} {
		httpService(t, l, w.registerTCP(l, "tcp4", "127.0.0.1:0"))
		served[l] = true
	}
	for _, p := range []int{8000, 8080, 8100, 9000} {
		httpService(t, "ordinary", w.ns.ListenTCP(t, fmt.Sprintf("0.0.0.0:%d", p)))
	}
	var probes []netip.AddrPort
	for range 40 {
		a := netip.AddrFrom4([4]byte{10, byte(50 + rnd.IntN(2)), byte(rnd.IntN(2)), byte(rnd.IntN(5))})
		probes = append(probes, netip.AddrPortFrom(a, []uint16{80, 81, 8000, 8080, 8100, 9000}[rnd.IntN(6)]))
	}
	checkLookups(t, w, bs, served, probes)

	// Without the daemon, the same answers.
	before := w.pinned("lookup", "tcp", "10.3.0.1:1550", "-o", "json")
	w.d.stop(t, syscall.SIGTERM)
	checkLookups(t, w, bs, served, probes[:10])
	if after := w.pinned("lookup", "tcp", "10.3.0.1:1550", "-o", "json"); after.stdout != before.stdout || after.code != 0 {
		t.Errorf("lookup without daemon:\n%s%s\nwith it:\n%s", after.stdout, after.stderr, before.stdout)
	}
}
