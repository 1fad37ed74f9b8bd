package control

import (
	"reflect"
	"testing"
)

// The table is the protocol: pin what each operation may carry and who
// may call it, and check that the codec's lookups agree with it.
func TestOperationsTable(t *testing.T) {
	want := []struct {
		op               Op
		name             string
		maxReq, maxRep   int
		minFile, maxFile int
		access           Access
	}{
		{OpVersion, "version", MaxSmallMessage, MaxSmallMessage, 0, 0, Anyone},
		{OpBind, "bind", MaxSmallMessage, MaxSmallMessage, 0, 0, Root},
		{OpUnbind, "unbind", MaxSmallMessage, MaxSmallMessage, 0, 0, Root},
		{OpListBindings, "list-bindings", MaxSmallMessage, MaxListMessage, 0, 0, Anyone},
		{OpRegister, "register", MaxSmallMessage, MaxSmallMessage, 1, MaxRegisterFiles, Granted},
		{OpUnregister, "unregister", MaxSmallMessage, MaxSmallMessage, 0, 0, Granted},
		{OpStatus, "status", MaxSmallMessage, MaxMessage, 0, 0, Anyone},
		{OpSetPolicy, "set-policy", MaxSmallMessage, MaxSmallMessage, 0, 0, Root},
		{OpApply, "apply", MaxMessage, MaxMessage, 0, 0, Root},
	}
	if got := Operations(); len(got) != len(want) {
		t.Fatalf("%d operations, want %d", len(got), len(want))
	}
	for _, w := range want {
		s, ok := Spec(w.op)
		if !ok || s.Name != w.name || w.op.String() != w.name || s.MaxRequest != w.maxReq || s.MaxReply != w.maxRep ||
			s.MinFiles != w.minFile || s.MaxFiles != w.maxFile || s.Access != w.access {
			t.Errorf("%d: %+v, want %+v", w.op, s, w)
			continue
		}
		if lo, hi := w.op.fdRange(); lo != w.minFile || hi != w.maxFile {
			t.Errorf("%s: fdRange %d-%d", w.name, lo, hi)
		}
		if maxPayload(w.op, false) != w.maxReq || maxPayload(w.op, true) != w.maxRep {
			t.Errorf("%s: maxPayload disagrees with the table", w.name)
		}
		req, rep := newRequestBody(w.op), newResponseBody(w.op)
		if OpOf(req) != w.op || OpOf(rep) != w.op {
			t.Errorf("%s: OpOf(%T) = %s, OpOf(%T) = %s", w.name, req, OpOf(req), rep, OpOf(rep))
		}
		if _, granted := req.(GrantedLabel); granted != (w.access == Granted) {
			t.Errorf("%s: %T names a label for grants: %v", w.name, req, granted)
		}
	}
	if Op(0).Known() || Op(10).Known() || OpOf(struct{}{}) != 0 || OpOf(nil) != 0 || newRequestBody(10) != nil {
		t.Error("an operation outside the table is known")
	}
	if _, err := EncodeRequest(NewRequest(&struct{ RequestBody }{})); err == nil {
		t.Error("a request type outside the table was encoded")
	}
	if MaxRequest(false) != MaxSmallMessage || MaxRequest(true) != MaxMessage {
		t.Errorf("MaxRequest: %d for others, %d for root", MaxRequest(false), MaxRequest(true))
	}
	if reflect.TypeOf(newResponseBody(OpApply)) != reflect.TypeOf(&ApplyResponse{}) {
		t.Error("apply's reply type")
	}
}
