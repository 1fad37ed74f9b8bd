package dispatch

import (
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Ports that no binding of a protocol and family serves end the lookup
// early (sy_noport); the map follows every change, so what one change
// serves is served and what it stops serving falls to the kernel.
func TestPortsNoBindingServes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "web", e.tcpServer("web", "127.0.0.1:0"))
	mustRegister(t, e.d, "any", e.tcpServer("any", "127.0.0.1:0"))
	e.bind("web", "tcp", "10.9.0.0/24", "80")
	e.bind("web", "tcp", "10.9.1.5", "8000-8001")
	// A UDP binding on every port leaves TCP's ports alone.
	e.bind("any", "udp", "10.9.0.0/24", "*")
	check := func(dst, want string) {
		t.Helper()
		label, _, err := e.dialLabel(dst)
		switch {
		case want == "" && !isRefused(err):
			t.Errorf("%s: got %q (%v), want connection refused", dst, label, err)
		case want != "" && (err != nil || label != want):
			t.Errorf("%s: got %q (%v), want %q", dst, label, err, want)
		}
	}
	check("10.9.0.7:80", "web")
	check("10.9.0.7:81", "")
	check("10.9.1.5:8001", "web")
	check("10.9.1.5:8002", "")
	check("10.9.1.5:80", "")

	b, err := binding.Parse("web", "tcp", "10.9.0.0/24", "80")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.RemoveBindings(b); err != nil {
		t.Fatal(err)
	}
	check("10.9.0.7:80", "")
	e.bind("any", "tcp", "10.9.0.0/16", "*")
	check("10.9.0.7:80", "any")
	check("10.9.1.5:8001", "web")
	check("10.9.1.5:8002", "any")
}

func TestPortUseNoport(t *testing.T) {
	var u portUse
	u.add(binding.Ports{Lo: 80, Hi: 80}, 1)
	u.add(binding.Ports{Lo: 100, Hi: 164}, 1)
	w := u.noport()
	served := func(p uint16) bool { return w[p/64]&(1<<(p%64)) == 0 }
	for _, p := range []uint16{80, 100, 127, 128, 164} {
		if !served(p) {
			t.Errorf("port %d: marked as served by no binding", p)
		}
	}
	for _, p := range []uint16{0, 79, 81, 99, 165, 65535} {
		if served(p) {
			t.Errorf("port %d: not marked as served by no binding", p)
		}
	}
	u.add(binding.Ports{Lo: 80, Hi: 80}, -1)
	if w := u.noport(); w[80/64]&(1<<(80%64)) == 0 {
		t.Error("port 80 still served after its binding went")
	}
	u.add(binding.AnyPort, 1)
	for i, x := range u.noport() {
		if x != 0 {
			t.Fatalf("word %d is %#x with an every-port binding", i, x)
		}
	}
}
