package dispatch

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// portByPort is n bindings of one address, one port each, to label.
func portByPort(n int, label string) []binding.Binding {
	p := netip.MustParsePrefix("10.9.0.1/32")
	bs := make([]binding.Binding, n)
	for i := range bs {
		bs[i] = binding.Binding{Label: label, Protocol: binding.TCP, Prefix: p, Ports: binding.Ports{Lo: uint16(i + 1), Hi: uint16(i + 1)}}
	}
	return bs
}

// A prefix bound port by port (a list long enough to be indexed while it
// is built) keeps duplicates once and refuses a port given to two labels,
// in Replace and in AddBindings alike, naming both labels.
func TestPortByPortDuplicatesAndConflicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bs := portByPort(1000, "a")
	// A duplicate of an early binding late in the list, and again.
	bs = append(bs, bs[3], bs[900])
	if _, _, err := e.d.Replace(bs, nil, false); err != nil {
		t.Fatal(err)
	}
	if got, err := e.d.Bindings(); err != nil || len(got) != 1000 {
		t.Fatalf("%d bindings (%v), want 1000: duplicates kept once", len(got), err)
	}
	clash := bs[500]
	clash.Label = "b"
	_, _, err := e.d.Replace(append(bs, clash), nil, false)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "labels a and b") {
		t.Fatalf("replace with port 501 given to a and b: %v, want a conflict naming both", err)
	}
	more := portByPort(1100, "a")[1000:]
	if added, err := e.d.AddBindings(append(more, more[50], bs[7])...); err != nil || len(added) != 100 {
		t.Fatalf("add 100 more (with duplicates): added %d, %v", len(added), err)
	}
	if _, err := e.d.AddBindings(append(portByPort(1200, "a")[1100:], clash)...); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "bound to label a") {
		t.Fatalf("add with port 501 given to b: %v, want a conflict naming a", err)
	}
	if got, err := e.d.Bindings(); err != nil || len(got) != 1100 {
		t.Fatalf("%d bindings (%v), want 1100: the refused addition changed nothing", len(got), err)
	}
	// Removing one binding twice in one call, or one of another label,
	// changes nothing; removing 999 of them leaves the others.
	for _, rm := range [][]binding.Binding{append(bs[:5:5], bs[2]), {bs[0], clash}} {
		if err := e.d.RemoveBindings(rm...); !errors.Is(err, ErrNotFound) {
			t.Fatalf("remove %v: %v, want not found", rm, err)
		}
	}
	if err := e.d.RemoveBindings(portByPort(1100, "a")[1:1000]...); err != nil {
		t.Fatal(err)
	}
	got, err := e.d.Bindings()
	if err != nil || len(got) != 101 || got[0].Ports.Lo != 1 || got[1].Ports.Lo != 1001 {
		t.Fatalf("after removing ports 2-1000: %d bindings (%v), want 101: port 1 and 1001-1100", len(got), err)
	}
}

// BenchmarkPortByPort measures Replace of 65,535 bindings of one address,
// one port each: the longest list a group can have.
func BenchmarkPortByPort(b *testing.B) {
	bs := portByPort(65535, "a")
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		b.StartTimer()
		start := time.Now()
		if _, _, err := e.d.Replace(bs, nil, false); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/replace-port-by-port")
		b.StopTimer()
		e.d.Close()
		b.StartTimer()
	}
}
