package control

import (
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

func payloadSize(ds [][]byte) int {
	n := 0
	for _, d := range ds {
		n += len(d) - headerLen
	}
	return n
}

// TestApplyBothVersions: an Apply request and its reply read back the same
// in version 1 (JSON, what clients before version 2 send) and version 2
// (packed lists), and version 2 is several times smaller.
func TestApplyBothVersions(t *testing.T) {
	bs := manyBindings(5000)
	req := &ApplyRequest{Config: Config{Bindings: bs, Labels: []settings.Named{{Name: "label-1", Label: settings.Label{Policy: settings.Policy{Kind: settings.Bypass}}}}}, DryRun: true}
	rep := &ApplyResponse{Applied: true, Diff: Diff{AddBindings: bs[:3000], RemoveBindings: bs[3000:], Labels: []LabelChange{{Label: "label-1", New: &req.Config.Labels[0]}}}}
	if v := NewRequest(req).Version; v != AddRequestVersion {
		t.Fatalf("Apply is sent as version %d, want %d", v, AddRequestVersion)
	}
	if v := NewRequest(&BindRequest{Binding: bs[0]}).Version; v != 1 {
		t.Fatalf("Bind is sent as version %d, want 1 (what older daemons speak)", v)
	}
	size := map[uint16]int{}
	for _, v := range []uint16{1, PackedVersion, AddRequestVersion} {
		ds, err := EncodeRequest(&Request{Version: v, Body: req})
		if err != nil {
			t.Fatal(err)
		}
		size[v] = payloadSize(ds)
		got, err := DecodeRequest(ds, 0)
		if err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		if got.Version != v || !reflect.DeepEqual(got.Body, req) {
			t.Fatalf("version %d: request read back as version %d, changed: %v", v, got.Version, !reflect.DeepEqual(got.Body, req))
		}
		rds, err := EncodeReply(&Reply{Version: v, Op: OpApply, Body: rep})
		if err != nil {
			t.Fatal(err)
		}
		gotRep, err := DecodeReply(rds, 0)
		if err != nil {
			t.Fatalf("version %d reply: %v", v, err)
		}
		if !reflect.DeepEqual(gotRep.Body, rep) {
			t.Fatalf("version %d: reply changed", v)
		}
		rds, err = EncodeReply(NewErrorReply(v, OpApply, Errorf(CodeConflict, "no")))
		if err != nil {
			t.Fatal(err)
		}
		if gotRep, err = DecodeReply(rds, 0); err != nil || !errors.Is(gotRep.Err, ErrConflict) {
			t.Fatalf("version %d error reply: %v, %v", v, gotRep, err)
		}
	}
	if size[PackedVersion]*4 > size[1] {
		t.Errorf("packed request of %d bytes, JSON %d: want at most a quarter", size[PackedVersion], size[1])
	}
}

// TestPackedRefuses: version 2 Apply payloads that are not framed as
// packedBody says are refused as invalid.
func TestPackedRefuses(t *testing.T) {
	good := &ApplyRequest{Config: Config{Bindings: manyBindings(3)}}
	ds, err := EncodeRequest(NewRequest(good))
	if err != nil {
		t.Fatal(err)
	}
	p := ds[0][headerLen:]
	n := binary.BigEndian.Uint32(p)
	jsonPart, lists := string(p[4:4+n]), string(p[4+n:])
	frame := func(j, rest string) string {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(j)))
		return string(l[:]) + j + rest
	}
	inJSON := `{"config":{"bindings":[{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"}]}}`
	for name, c := range map[string]struct{ payload, says string }{
		"short":          {"\x00\x00", "shorter than its length"},
		"long json":      {"\x00\x00\x01\x00{}", "JSON part of 256 bytes"},
		"no lists":       {frame(jsonPart, ""), "truncated"},
		"trailing":       {frame(jsonPart, lists+"x"), "1 bytes after the last list"},
		"list in JSON":   {frame(inJSON, lists), "binding list is in the JSON part"},
		"bad list":       {frame(jsonPart, "\x01\x01a\x01\x01\x10\x20\x0a\x00\x00\x01\x00"), "kind 0x10"},
		"invalid prefix": {frame(jsonPart, "\x01\x01a\x01\x01\x00\x18\x0a\x00\x00\x01\x00"), "host bits"},
	} {
		_, err := DecodeRequest([][]byte{datagram(PackedVersion, OpApply, 0, len(c.payload), c.payload)}, 0)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want invalid saying %q", name, err, c.says)
		}
	}
	// Other operations are the same in version 2 as in 1.
	bind := `{"binding":{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"}}`
	if _, err := DecodeRequest([][]byte{datagram(PackedVersion, OpBind, 0, len(bind), bind)}, 0); err != nil {
		t.Errorf("version 2 bind: %v", err)
	}
}

// decodeKept is DecodeRequest as a Conn with KeepPacked decodes.
func decodeKept(ds [][]byte, nfds int) (*Request, error) {
	a, err := assemble(ds)
	if err != nil {
		return nil, err
	}
	if a.isReply() {
		return nil, invalidf("a reply")
	}
	return decodeRequest(a.first.version, a.first.op, a.buf, nfds, true)
}

// collect lists what a sequence of bindings yields.
func collect(all func(yield func(*binding.Binding) bool)) binding.List {
	var out binding.List
	for b := range all {
		out = append(out, *b)
	}
	return out
}

// TestKeepPacked: an Apply request decoded with its bindings kept packed
// yields the bindings sent, refuses an invalid one as the list would, and
// a version 1 request is unaffected; a reply whose lists are sequences
// (Diff.SetBindings) is the same bytes as one with the lists, in both
// versions.
func TestKeepPacked(t *testing.T) {
	bs := manyBindings(5000)
	req := &ApplyRequest{Config: Config{Bindings: bs}}
	for _, v := range []uint16{1, PackedVersion} {
		ds, err := EncodeRequest(&Request{Version: v, Body: req})
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeKept(ds, 0)
		if err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		c := got.Body.(*ApplyRequest).Config
		if c.NumBindings() != len(bs) || !reflect.DeepEqual(collect(c.AllBindings), binding.List(bs)) {
			t.Fatalf("version %d: %d bindings kept, changed: %v", v, c.NumBindings(), !reflect.DeepEqual(collect(c.AllBindings), binding.List(bs)))
		}
		if (c.Bindings == nil) != (v == PackedVersion) {
			t.Errorf("version %d: Bindings holds %d bindings", v, len(c.Bindings))
		}
	}
	bad := "\x01\x01a\x01\x02\x00\x20\x0a\x00\x00\x01\x00\x00\x18\x0a\x00\x00\x01\x00"
	j := `{"config":{"bindings":null}}`
	payload := "\x00\x00\x00" + string(rune(len(j))) + j + bad
	_, err := decodeKept([][]byte{datagram(PackedVersion, OpApply, 0, len(payload), payload)}, 0)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "binding 2: ") || !strings.Contains(err.Error(), "host bits") {
		t.Errorf("kept request with an invalid second binding: %v, want invalid naming binding 2 and its host bits", err)
	}

	for _, v := range []uint16{1, PackedVersion, AddRequestVersion} {
		whole := &ApplyResponse{Applied: true, Diff: Diff{AddBindings: bs[:3000], RemoveBindings: bs[3000:]}}
		seq := &ApplyResponse{Applied: true}
		seq.Diff.SetBindings(3000, binding.List(bs[:3000]).All, 2000, binding.List(bs[3000:]).All)
		want, err := EncodeReply(&Reply{Version: v, Op: OpApply, Body: whole})
		if err != nil {
			t.Fatal(err)
		}
		got, err := EncodeReply(&Reply{Version: v, Op: OpApply, Body: seq})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("version %d: reply from sequences differs from the one from lists", v)
		}
		if seq.Diff.AddBindings != nil || seq.Diff.Empty() {
			t.Errorf("version %d: encoding changed the reply's lists, or it reads as empty", v)
		}
	}
	empty := &ApplyResponse{}
	empty.Diff.SetBindings(0, nil, 0, nil)
	if !empty.Diff.Empty() {
		t.Errorf("a diff of no bindings is not empty")
	}
}

// TestAddRequest: a reply whose added bindings are all of the request's
// (Diff.AddRequest) lists them as before to a client of a version before
// AddRequestVersion, byte for byte, and leaves them out from that version
// on; a reply that says so where its version cannot, or that says so and
// lists bindings too, is refused.
func TestAddRequest(t *testing.T) {
	bs := manyBindings(5000)
	binding.Sort(bs)
	size := map[uint16]int{}
	for _, v := range []uint16{1, PackedVersion, AddRequestVersion} {
		whole := &ApplyResponse{Applied: true, Diff: Diff{AddBindings: bs[:4500], RemoveBindings: bs[4500:]}}
		flagged := &ApplyResponse{Applied: true, Diff: Diff{AddRequest: true}}
		flagged.Diff.SetBindings(4500, binding.List(bs[:4500]).All, 500, binding.List(bs[4500:]).All)
		want, err := EncodeReply(&Reply{Version: v, Op: OpApply, Body: whole})
		if err != nil {
			t.Fatal(err)
		}
		got, err := EncodeReply(&Reply{Version: v, Op: OpApply, Body: flagged})
		if err != nil {
			t.Fatal(err)
		}
		if !flagged.Diff.AddRequest || flagged.Diff.add == nil || flagged.Diff.add.n != 4500 {
			t.Errorf("version %d: encoding changed the reply", v)
		}
		size[v] = payloadSize(got)
		if v < AddRequestVersion {
			if !reflect.DeepEqual(got, want) {
				t.Errorf("version %d: a reply with AddRequest differs from the one that lists the bindings", v)
			}
			continue
		}
		rep, err := DecodeReply(got, 0)
		if err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		d := rep.Body.(*ApplyResponse).Diff
		if !d.AddRequest || d.AddBindings != nil || !reflect.DeepEqual(d.RemoveBindings, binding.List(bs[4500:])) {
			t.Errorf("version %d: read back with AddRequest %v, %d added, %d removed", v, d.AddRequest, len(d.AddBindings), len(d.RemoveBindings))
		}
	}
	if size[AddRequestVersion]*4 > size[PackedVersion] {
		t.Errorf("reply of %d bytes with AddRequest, %d without: want at most a quarter", size[AddRequestVersion], size[PackedVersion])
	}

	// Hand-made payloads: the JSON part, then the two packed lists (no
	// labels, a nil list; or one label and one binding).
	packed := func(j, lists string) string {
		return string(binary.BigEndian.AppendUint32(nil, uint32(len(j)))) + j + lists
	}
	nilList := "\x00\x00"
	oneBinding := "\x01\x03web\x01\x01\x04\x20\xc0\x00\x02\x01\x00\x00\x50"
	for _, c := range []struct {
		name, payload string
		version       uint16
		want          string
	}{
		{"json", `{"result":{"applied":true,"diff":{"add_request":true}}}`, 1, "not in version 1"},
		{"packed", packed(`{"result":{"applied":true,"diff":{"add_request":true}}}`, nilList+nilList), PackedVersion, "not in version 2"},
		{"both", packed(`{"result":{"applied":true,"diff":{"add_request":true}}}`, oneBinding+nilList), AddRequestVersion, "both"},
		{"both empty", packed(`{"result":{"applied":true,"diff":{"add_request":true}}}`, "\x00\x01\x00"+nilList), AddRequestVersion, "both"},
	} {
		_, err := DecodeReply([][]byte{datagram(c.version, OpApply, flagReply, len(c.payload), c.payload)}, 0)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want invalid saying %q", c.name, err, c.want)
		}
	}
	ok := packed(`{"result":{"applied":true,"diff":{"add_request":true}}}`, nilList+oneBinding)
	rep, err := DecodeReply([][]byte{datagram(AddRequestVersion, OpApply, flagReply, len(ok), ok)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := rep.Body.(*ApplyResponse).Diff; !d.AddRequest || len(d.RemoveBindings) != 1 || d.RemoveBindings[0].String() != "web tcp 192.0.2.1/32 80" {
		t.Errorf("hand-made reply read as %+v", d)
	}
}
