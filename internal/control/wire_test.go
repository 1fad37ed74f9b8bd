package control

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

func mustBinding(tb testing.TB, label, proto, prefix, ports string) binding.Binding {
	tb.Helper()
	b, err := binding.Parse(label, proto, prefix, ports)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// manyBindings returns n distinct valid bindings, half IPv4, half IPv6.
func manyBindings(n int) []binding.Binding {
	bs := make([]binding.Binding, n)
	for i := range bs {
		var a netip.Addr
		if i%2 == 0 {
			a = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		} else {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		}
		bs[i] = binding.Binding{
			Label:    fmt.Sprintf("label-%d", i%1000),
			Protocol: []binding.Protocol{binding.TCP, binding.UDP}[i%2],
			Prefix:   netip.PrefixFrom(a, a.BitLen()),
			Ports:    binding.Ports{Lo: uint16(1 + i%60000), Hi: uint16(1 + i%60000 + i%7)},
		}
	}
	return bs
}

// sampleRequests has one valid request of every operation.
func sampleRequests(tb testing.TB) []RequestBody {
	b := mustBinding(tb, "dns-public", "udp", "192.0.2.0/24", "53")
	b6 := mustBinding(tb, "web", "tcp", "2001:db8::/64", "*")
	return []RequestBody{
		&VersionRequest{},
		&BindRequest{Binding: b},
		&UnbindRequest{Binding: b6},
		&ListBindingsRequest{},
		&ListBindingsRequest{Label: "web"},
		&RegisterRequest{Label: "dns-public"},
		&UnregisterRequest{Label: "web", Protocol: binding.TCP, Family: binding.IPv6},
		&StatusRequest{},
		&StatusRequest{Label: "dns-public"},
		&SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Bypass}},
		&SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "2001:db8::1"}}},
		&SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "backend.example", Port: 443}, Engine: settings.Kernel}},
		&ApplyRequest{Config: Config{
			Bindings: []binding.Binding{b, b6},
			Labels: []settings.Named{
				{Name: "web", Label: settings.Label{
					Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "backend.example", Port: 8080}},
					Grants: settings.Grants{UIDs: []uint32{1000}, Users: []string{"www-data"}, Groups: []string{"web"}},
				}},
				{Name: "dns-public"},
			},
		}, DryRun: true},
		&ApplyRequest{},
	}
}

// sampleReplies has one valid reply of every operation, and error replies.
func sampleReplies(tb testing.TB) []*Reply {
	b := mustBinding(tb, "dns-public", "udp", "192.0.2.0/24", "53")
	set := &settings.Named{Name: "web", Label: settings.Label{Policy: settings.Policy{Kind: settings.Bypass}}}
	bodies := []ResponseBody{
		&VersionResponse{Version: "v1.2.3", Protocols: []uint16{1}},
		&BindResponse{},
		&UnbindResponse{},
		&ListBindingsResponse{Bindings: []binding.Binding{b}},
		&ListBindingsResponse{},
		&RegisterResponse{Results: []RegisterResult{
			{Protocol: binding.UDP, Family: binding.IPv4, Local: netip.MustParseAddrPort("127.0.0.1:5353")},
			{Protocol: binding.TCP, Family: binding.IPv6, Local: netip.MustParseAddrPort("[::1]:80"), Replaced: true},
		}},
		&UnregisterResponse{},
		&StatusResponse{Version: "dev", NetNS: 4026531840, Labels: []LabelStatus{{
			Label: "web", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "up"}}, Bindings: 3,
			Sockets: []SocketStatus{{Protocol: binding.TCP, Family: binding.IPv4, Local: netip.MustParseAddrPort("0.0.0.0:80"), Cookie: 77}},
			Hits:    10, Missing: 2,
		}}},
		&SetPolicyResponse{},
		&ApplyResponse{Applied: true, Diff: Diff{
			AddBindings:    []binding.Binding{b},
			RemoveBindings: []binding.Binding{b},
			Labels:         []LabelChange{{Label: "web", New: set}, {Label: "old", Old: set}},
		}},
	}
	var reps []*Reply
	for _, body := range bodies {
		reps = append(reps, &Reply{Version: ProtocolVersion, Op: OpOf(body), Body: body})
	}
	reps = append(reps,
		&Reply{Version: 1, Op: OpBind, Err: Errorf(CodeConflict, "binding web tcp 192.0.2.0/24 80 conflicts with web2 tcp 192.0.2.0/24 80-90")},
		&Reply{Version: 1, Op: OpRegister, Err: Errorf(CodePermission, "user 1000 may not register label web")},
		&Reply{Version: 1, Op: 0, Err: Errorf(CodeUnsupported, "version 9")},
		// A status of a label spliced in the kernel, in the version that
		// carries its kernel bytes.
		&Reply{Version: KernelBytesVersion, Op: OpStatus, Body: &StatusResponse{Version: "dev", NetNS: 1, Labels: []LabelStatus{{
			Label: "px", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "up", Port: 80}, Engine: settings.Kernel},
			Bindings: 1, PolicyBytes: 40, PolicyKernelBytes: 30, PolicyConnections: 2,
		}}}},
	)
	return reps
}

func TestRequestRoundTrip(t *testing.T) {
	for _, body := range sampleRequests(t) {
		t.Run(OpOf(body).String(), func(t *testing.T) {
			nfds := 0
			if OpOf(body) == OpRegister {
				nfds = 2
			}
			ds, err := EncodeRequest(NewRequest(body))
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeRequest(ds, nfds)
			if err != nil {
				t.Fatal(err)
			}
			if got.Version != NewRequest(body).Version || got.Op() != OpOf(body) {
				t.Fatalf("got version %d op %s", got.Version, got.Op())
			}
			if !reflect.DeepEqual(got.Body, body) {
				t.Fatalf("body changed:\n got %#v\nwant %#v", got.Body, body)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	for _, rep := range sampleReplies(t) {
		t.Run(rep.Op.String(), func(t *testing.T) {
			ds, err := EncodeReply(rep)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeReply(ds, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, rep) {
				t.Fatalf("reply changed:\n got %#v\nwant %#v", got, rep)
			}
		})
	}
}

// TestLargeMessages checks chunking in memory; TestConnLargeMessages sends
// 100,000 bindings over a socket.
func TestLargeMessages(t *testing.T) {
	bs := manyBindings(20_000)

	ds, err := EncodeRequest(NewRequest(&ApplyRequest{Config: Config{Bindings: bs}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) < 2 {
		t.Fatalf("20,000 bindings fit one datagram?")
	}
	for _, d := range ds {
		if len(d) > headerLen+MaxChunk {
			t.Fatalf("datagram of %d bytes", len(d))
		}
	}
	req, err := DecodeRequest(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := req.Body.(*ApplyRequest).Config.Bindings; !reflect.DeepEqual([]binding.Binding(got), bs) {
		t.Fatalf("bindings changed (%d of %d)", len(got), len(bs))
	}

	ds, err = EncodeReply(&Reply{Version: 1, Op: OpListBindings, Body: &ListBindingsResponse{Bindings: bs}})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := DecodeReply(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Body.(*ListBindingsResponse).Bindings; !reflect.DeepEqual([]binding.Binding(got), bs) {
		t.Fatalf("bindings changed (%d of %d)", len(got), len(bs))
	}

	// Only Apply may be large among requests.
	big := strings.Repeat("a", MaxSmallMessage)
	_, err = EncodeRequest(NewRequest(&SetPolicyRequest{Label: "x", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: big, Port: 1}}}))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized set-policy encoded: %v", err)
	}
}

// datagram builds one raw datagram.
func datagram(version uint16, op Op, flags uint16, total int, payload string) []byte {
	h := header{version: version, op: op, flags: flags, total: uint32(total), length: uint32(len(payload))}
	b := make([]byte, headerLen+len(payload))
	h.put(b)
	copy(b[headerLen:], payload)
	return b
}

func single(op Op, payload string) [][]byte {
	return [][]byte{datagram(1, op, 0, len(payload), payload)}
}

func TestDecodeRequestRefuses(t *testing.T) {
	bind := `{"binding":{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"}}`
	if _, err := DecodeRequest(single(OpBind, bind), 0); err != nil {
		t.Fatalf("valid bind refused: %v", err)
	}
	badMagic := datagram(1, OpBind, 0, len(bind), bind)
	copy(badMagic, "HTTP")
	withTrailing := datagram(1, OpBind, 0, len(bind), bind)
	withTrailing = append(withTrailing, "xx"...)
	truncated := datagram(1, OpBind, 0, len(bind), bind)
	truncated = truncated[:len(truncated)-3]
	reserved := datagram(1, OpBind, 0, len(bind), bind)
	reserved[11] = 1
	half := len(bind) / 2

	for _, tc := range []struct {
		name string
		ds   [][]byte
		nfds int
		code Code
		want string
	}{
		{"empty datagram", [][]byte{{}}, 0, CodeInvalid, "truncated"},
		{"no datagrams", nil, 0, CodeInvalid, "no datagrams"},
		{"short header", [][]byte{[]byte("SWYD\x00\x01")}, 0, CodeInvalid, "truncated"},
		{"bad magic", [][]byte{badMagic}, 0, CodeInvalid, "magic"},
		{"version 0", [][]byte{datagram(0, OpBind, 0, len(bind), bind)}, 0, CodeUnsupported, "versions 1 to 4"},
		{"version 5", [][]byte{datagram(5, OpBind, 0, len(bind), bind)}, 0, CodeUnsupported, "versions 1 to 4"},
		{"unknown op", single(99, bind), 0, CodeUnsupported, "operation 99"},
		{"op 0", single(0, bind), 0, CodeUnsupported, "operation 0"},
		{"unknown flag", [][]byte{datagram(1, OpBind, 0x8, len(bind), bind)}, 0, CodeInvalid, "flags"},
		{"reserved", [][]byte{reserved}, 0, CodeInvalid, "reserved"},
		{"trailing garbage in datagram", [][]byte{withTrailing}, 0, CodeInvalid, "trailing garbage"},
		{"truncated datagram", [][]byte{truncated}, 0, CodeInvalid, "truncated"},
		{"total too big", [][]byte{datagram(1, OpBind, 0, MaxSmallMessage+1, bind)}, 0, CodeInvalid, "over the limit"},
		{"apply too big", [][]byte{datagram(1, OpApply, flagMore, MaxMessage+1, bind)}, 0, CodeInvalid, "over the limit"},
		{"total too small", [][]byte{datagram(1, OpBind, 0, 3, bind)}, 0, CodeInvalid, "more than the announced"},
		{"ends early", [][]byte{datagram(1, OpBind, 0, len(bind)+1, bind)}, 0, CodeInvalid, "truncated"},
		{"more but complete", [][]byte{datagram(1, OpBind, flagMore, len(bind), bind)}, 0, CodeInvalid, "more datagrams announced"},
		{"last announces more", [][]byte{datagram(1, OpBind, flagMore, len(bind), bind[:half])}, 0, CodeInvalid, "truncated"},
		{"empty continuation", [][]byte{datagram(1, OpBind, flagMore, len(bind), bind[:half]), datagram(1, OpBind, flagMore, len(bind), ""), datagram(1, OpBind, 0, len(bind), bind[half:])}, 0, CodeInvalid, "empty continuation"},
		{"continuation changes op", [][]byte{datagram(1, OpBind, flagMore, len(bind), bind[:half]), datagram(1, OpUnbind, 0, len(bind), bind[half:])}, 0, CodeInvalid, "does not match"},
		{"continuation changes total", [][]byte{datagram(1, OpBind, flagMore, len(bind), bind[:half]), datagram(1, OpBind, 0, len(bind)+1, bind[half:])}, 0, CodeInvalid, "does not match"},
		{"datagram after end", [][]byte{datagram(1, OpBind, 0, len(bind), bind), datagram(1, OpBind, 0, len(bind), bind)}, 0, CodeInvalid, "after the end"},
		{"reply", [][]byte{datagram(1, OpBind, flagReply, 13, `{"result":{}}`)}, 0, CodeInvalid, "reply where a request"},
		{"empty payload", single(OpVersion, ""), 0, CodeInvalid, "not a JSON object"},
		{"null payload", single(OpVersion, "null"), 0, CodeInvalid, "not a JSON object"},
		{"array payload", single(OpVersion, "[]"), 0, CodeInvalid, "not a JSON object"},
		{"bad json", single(OpBind, `{"binding":`), 0, CodeInvalid, "unexpected EOF"},
		{"trailing json", single(OpVersion, `{} {}`), 0, CodeInvalid, "trailing data"},
		{"trailing junk", single(OpVersion, `{}x`), 0, CodeInvalid, "trailing data"},
		{"unknown field", single(OpVersion, `{"x":1}`), 0, CodeInvalid, "unknown field"},
		{"unknown nested field", single(OpBind, `{"binding":{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80","weight":3}}`), 0, CodeInvalid, "unknown field"},
		{"invalid binding", single(OpBind, `{"binding":{"label":"a","protocol":"tcp","prefix":"10.0.0.1/8","ports":"80"}}`), 0, CodeInvalid, "host bits"},
		{"missing protocol", single(OpBind, `{"binding":{"label":"a","prefix":"10.0.0.0/8","ports":"80"}}`), 0, CodeInvalid, "protocol"},
		{"bad label", single(OpRegister, `{"label":"a b"}`), 1, CodeInvalid, "not allowed"},
		{"bad policy", single(OpSetPolicy, `{"label":"a","policy":"fast"}`), 0, CodeInvalid, "policy"},
		{"splice without upstream", single(OpSetPolicy, `{"label":"a","policy":"splice"}`), 0, CodeInvalid, "upstream"},
		{"bypass with upstream", single(OpSetPolicy, `{"label":"a","policy":"bypass","upstream":"h:1"}`), 0, CodeInvalid, "upstream"},
		{"duplicate label settings", single(OpApply, `{"config":{"bindings":[],"labels":[{"label":"a","policy":"none"},{"label":"a","policy":"none"}]}}`), 0, CodeInvalid, "twice"},
		{"register without fd", single(OpRegister, `{"label":"a"}`), 0, CodeInvalid, "file descriptors"},
		{"register with too many fds", single(OpRegister, `{"label":"a"}`), MaxRegisterFiles + 1, CodeInvalid, "file descriptors"},
		{"bind with fd", single(OpBind, bind), 1, CodeInvalid, "takes none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRequest(tc.ds, tc.nfds)
			if err == nil {
				t.Fatal("decoded")
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Code != tc.code {
				t.Fatalf("error %q: want code %s", err, tc.code)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestDecodeReplyRefuses(t *testing.T) {
	reply := func(op Op, payload string) [][]byte {
		return [][]byte{datagram(1, op, flagReply, len(payload), payload)}
	}
	if _, err := DecodeReply(reply(OpBind, `{"result":{}}`), 0); err != nil {
		t.Fatalf("valid reply refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		ds   [][]byte
		nfds int
		want string
	}{
		{"request", single(OpVersion, `{}`), 0, "request where a reply"},
		{"neither", reply(OpBind, `{}`), 0, "neither"},
		{"both", reply(OpBind, `{"result":{},"error":{"code":"internal","message":"x"}}`), 0, "both"},
		{"null result", reply(OpBind, `{"result":null}`), 0, "not a JSON object"},
		{"null error", reply(OpBind, `{"error":null}`), 0, "not a JSON object"},
		{"unknown code", reply(OpBind, `{"error":{"code":"teapot","message":"x"}}`), 0, "unknown error code"},
		{"unknown field", reply(OpBind, `{"result":{},"extra":1}`), 0, "unknown field"},
		{"unknown result field", reply(OpVersion, `{"result":{"version":"1","protocols":[1],"build":"x"}}`), 0, "unknown field"},
		{"unknown error field", reply(OpBind, `{"error":{"code":"internal","message":"x","hint":"y"}}`), 0, "unknown field"},
		{"op 0 result", reply(0, `{"result":{}}`), 0, "no result"},
		{"op 0 neither", reply(0, `{}`), 0, "must carry an error"},
		{"fds", reply(OpBind, `{"result":{}}`), 1, "carry none"},
		{"bad protocol", reply(OpRegister, `{"result":{"results":[{"protocol":"sctp","family":"ipv4","local":"1.2.3.4:5"}]}}`), 0, "protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeReply(tc.ds, tc.nfds)
			if err == nil {
				t.Fatal("decoded")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %q is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestEncodeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"invalid binding", func() error {
			_, err := EncodeRequest(NewRequest(&BindRequest{}))
			return err
		}},
		{"nil body", func() error { _, err := EncodeRequest(&Request{Version: 1}); return err }},
		{"bad version", func() error {
			_, err := EncodeRequest(&Request{Version: 7, Body: &VersionRequest{}})
			return err
		}},
		{"both", func() error {
			_, err := EncodeReply(&Reply{Version: 1, Op: OpBind, Body: &BindResponse{}, Err: ErrInternal})
			return err
		}},
		{"neither", func() error { _, err := EncodeReply(&Reply{Version: 1, Op: OpBind}); return err }},
		{"wrong body", func() error {
			_, err := EncodeReply(&Reply{Version: 1, Op: OpBind, Body: &UnbindResponse{}})
			return err
		}},
		{"bad code", func() error {
			_, err := EncodeReply(&Reply{Version: 1, Op: OpBind, Err: &Error{Code: "nope"}})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	e := Errorf(CodePermission, "user 1000 may not register label web: ask an admin to grant it")
	wrapped := fmt.Errorf("register: %w", e)
	if !errors.Is(wrapped, ErrPermission) || !errors.Is(wrapped, fs.ErrPermission) {
		t.Fatal("permission error does not match its sentinels")
	}
	if errors.Is(wrapped, ErrNotFound) {
		t.Fatal("permission error matches ErrNotFound")
	}
	if errors.Is(ErrPermission, e) {
		t.Fatal("a sentinel matches an error with a message")
	}
	for _, tc := range []struct {
		err  error
		code Code
	}{
		{wrapped, CodePermission},
		{fmt.Errorf("bind: %w", binding.ErrInvalid), CodeInvalid},
		{fmt.Errorf("label x: %w", fs.ErrNotExist), CodeNotFound},
		{fmt.Errorf("bind: %w", fs.ErrExist), CodeConflict},
		{errors.ErrUnsupported, CodeUnsupported},
		{errors.New("boom"), CodeInternal},
	} {
		got := AsError(tc.err)
		if got.Code != tc.code || got.Message != tc.err.Error() {
			t.Errorf("AsError(%v) = %+v, want code %s", tc.err, got, tc.code)
		}
	}
	if AsError(e) != e {
		t.Error("AsError of an *Error is not the same error")
	}
	if AsError(nil) != nil {
		t.Error("AsError(nil) is not nil")
	}
	if ErrConflict.Error() != "conflict" {
		t.Errorf("sentinel text %q", ErrConflict.Error())
	}
}

func TestHeaderLayout(t *testing.T) {
	// The layout is part of the protocol: pin it.
	ds, err := EncodeRequest(NewRequest(&VersionRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("SWYD\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x02{}")
	if len(ds) != 1 || !bytes.Equal(ds[0], want) {
		t.Fatalf("got %q\nwant %q", ds, want)
	}
	if binary.BigEndian.Uint16(want[4:]) != ProtocolVersion {
		t.Fatal("version moved")
	}
}
