package dispatch

import (
	"errors"
	"slices"
	"testing"
)

// A write that fails after the program reads the new generation (not a
// crash: an error the kernel returns) is reported as ErrUnfinished, since
// the change is in force: traffic follows the new set before any repair,
// a restarted dispatcher finds the new set and settings, and the next
// change works. A caller that took the error for "nothing changed" would
// set back what belongs with the new set (the server's label policies).
func TestFailureAfterFlipIsUnfinished(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustRegister(t, e.d, "old", e.tcpServer("old", "127.0.0.1:0"))
	mustRegister(t, e.d, "new", e.tcpServer("new", "127.0.0.1:0"))
	old, nw := crashSets()
	if _, _, err := e.d.Replace(old, []byte("old settings"), false); err != nil {
		t.Fatal(err)
	}
	d := e.d
	// Once the program reads the new data generation, the prefix length
	// lists of the other one can no longer be written.
	d.crash = func(point string) bool {
		if point == "data-next" {
			d.objs.SyPlens.Close()
		}
		return false
	}
	_, _, err := d.Replace(nw, []byte("new settings"), false)
	if !errors.Is(err, ErrUnfinished) {
		t.Fatalf("change failing after the flip: %v, want ErrUnfinished", err)
	}
	d.Close()
	e.checkDial("10.1.0.7:80", "new")

	d = e.open()
	if bs, err := d.Bindings(); err != nil || !slices.Equal(bs, nw) {
		t.Fatalf("restarted: %d bindings (%v), want the %d of the new set", len(bs), err, len(nw))
	}
	if s, ok, err := d.Settings(); err != nil || !ok || string(s) != "new settings" {
		t.Fatalf("restarted: settings %q, %v %v; want the new set's", s, ok, err)
	}
	if _, _, err := d.Replace(old, []byte("old settings"), false); err != nil {
		t.Fatalf("the next change: %v", err)
	}
	e.checkDial("10.1.0.7:80", "old")
	checkDataGenerations(t, d, len(old))
}
