package dispatch

import (
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// A kept label keeps its id without bindings or sockets; released, it goes,
// and its id may serve another label.
func TestKeepLabel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id, err := e.d.KeepLabel("settings-only")
	if err != nil {
		t.Fatal(err)
	}
	e.bind("other", "tcp", "10.1.0.0/24", "*")
	b, _ := binding.Parse("other", "tcp", "10.1.0.0/24", "*")
	if err := e.d.RemoveBindings(b); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := e.d.LabelID("settings-only"); err != nil || !ok || got != id {
		t.Fatalf("kept label after a change: id %d ok %v err %v, want %d", got, ok, err, id)
	}
	if _, ok, _ := e.d.LabelID("other"); ok {
		t.Fatalf("label other outlived its only binding")
	}
	if err := e.d.ReleaseLabel("settings-only"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := e.d.LabelID("settings-only"); ok {
		t.Fatalf("released label still known")
	}
}
