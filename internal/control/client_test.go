package control_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/control/controltest"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// The client against the one fake daemon (controltest), from outside the
// package, as the CLI and the register package use it.

func TestClient(t *testing.T) {
	control.CheckNoLeak(t)
	bs := control.ManyBindings(100_000)
	// The handler runs on the server's goroutine; the race detector sees
	// no order in a socket's send and receive, so the credentials go
	// through a channel.
	creds := make(chan control.Cred, 1)
	path := controltest.New(t, func(c *control.Conn, req *control.Request, files []*os.File) *control.Reply {
		switch r := req.Body.(type) {
		case *control.VersionRequest:
			cred, err := c.PeerCred()
			if err != nil {
				return control.NewErrorReply(req.Version, req.Op(), err)
			}
			select {
			case creds <- cred:
			default:
			}
			return control.NewReply(req, &control.VersionResponse{Version: "test", Protocols: []uint16{1}})
		case *control.BindRequest:
			if r.Binding.Label == "denied" {
				return control.NewErrorReply(req.Version, req.Op(), control.Errorf(control.CodePermission, "user 1000 may not change bindings: run as root"))
			}
			return control.NewReply(req, &control.BindResponse{})
		case *control.UnbindRequest:
			return control.NewErrorReply(req.Version, req.Op(), control.Errorf(control.CodeNotFound, "no binding %s", r.Binding))
		case *control.ListBindingsRequest:
			return control.NewReply(req, &control.ListBindingsResponse{Bindings: bs})
		case *control.RegisterRequest:
			res := make([]control.RegisterResult, len(files))
			for i := range files {
				res[i] = control.RegisterResult{Protocol: binding.TCP, Family: binding.IPv4, Local: netip.MustParseAddrPort("127.0.0.1:80")}
			}
			return control.NewReply(req, &control.RegisterResponse{Results: res})
		case *control.UnregisterRequest:
			return control.NewReply(req, &control.UnregisterResponse{})
		case *control.StatusRequest:
			return control.NewReply(req, &control.StatusResponse{Version: "test", Labels: []control.LabelStatus{{Label: r.Label}}})
		case *control.SetPolicyRequest:
			return control.NewReply(req, &control.SetPolicyResponse{})
		case *control.ApplyRequest:
			return control.NewReply(req, &control.ApplyResponse{Applied: !r.DryRun, Diff: control.Diff{AddBindings: r.Config.Bindings}})
		}
		return control.NewErrorReply(req.Version, req.Op(), errors.ErrUnsupported)
	}).Path

	ctx := t.Context()
	c, err := control.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if gotCred := <-creds; gotCred.PID != int32(os.Getpid()) || gotCred.UID != uint32(os.Getuid()) || gotCred.GID != uint32(os.Getgid()) {
		t.Errorf("peer credentials %+v", gotCred)
	}
	b := control.MustBinding(t, "web", "tcp", "192.0.2.0/24", "80")
	if err := c.Bind(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Label = "denied"
	err = c.Bind(ctx, b)
	if !errors.Is(err, control.ErrPermission) || !strings.Contains(err.Error(), "run as root") {
		t.Fatalf("bind: %v, want a permission error", err)
	}
	if err := c.Unbind(ctx, b); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("unbind: %v, want not found", err)
	}
	// An invalid request is refused before sending; the client stays usable.
	if err := c.Bind(ctx, binding.Binding{Label: "x"}); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("bind of an invalid binding: %v", err)
	}
	got, err := c.ListBindings(ctx, "")
	if err != nil || !reflect.DeepEqual(got, bs) {
		t.Fatalf("list: %d bindings, %v", len(got), err)
	}
	f1, f2 := os.NewFile(uintptr(control.PipeFDs(t, 1)[0]), "p1"), os.NewFile(uintptr(control.PipeFDs(t, 1)[0]), "p2")
	res, err := c.Register(ctx, "web", f1, f2)
	if err != nil || len(res) != 2 {
		t.Fatalf("register: %v, %v", res, err)
	}
	if _, err := c.Register(ctx, "web"); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("register without sockets: %v", err)
	}
	if err := c.Unregister(ctx, "web", binding.TCP, binding.IPv4); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, "web")
	if err != nil || len(st.Labels) != 1 || st.Labels[0].Label != "web" {
		t.Fatalf("status: %+v, %v", st, err)
	}
	if err := c.SetPolicy(ctx, "web", settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "backend"}}); err != nil {
		t.Fatal(err)
	}
	ar, err := c.Apply(ctx, control.Config{Bindings: bs[:5000]}, true)
	if err != nil || ar.Applied || len(ar.Diff.AddBindings) != 5000 {
		t.Fatalf("apply: %v", err)
	}
}

func TestClientContext(t *testing.T) {
	block := make(chan struct{})
	path := controltest.New(t, func(c *control.Conn, req *control.Request, files []*os.File) *control.Reply {
		<-block
		return nil
	}).Path
	defer close(block)
	c, err := control.Dial(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping: %v, want deadline exceeded", err)
	}
	if err := c.Ping(t.Context()); !errors.Is(err, control.ErrBroken) {
		t.Fatalf("ping after timeout: %v, want control.ErrBroken", err)
	}
}

// TestClientAddRequest: when the daemon says it added every binding of the
// request, Apply gives them in AddBindings, sorted as a daemon lists them,
// in each version, and leaves the caller's list as it was.
func TestClientAddRequest(t *testing.T) {
	control.CheckNoLeak(t)
	bs := control.ManyBindings(20_000)
	sorted := slices.Clone(bs)
	binding.Sort(sorted)
	if slices.Equal(sorted, bs) {
		t.Fatal("the request's bindings are sorted already")
	}
	removed := control.MustBinding(t, "old", "udp", "198.51.100.0/24", "*")
	path := controltest.New(t, func(c *control.Conn, req *control.Request, files []*os.File) *control.Reply {
		r := req.Body.(*control.ApplyRequest)
		add := slices.Clone(r.Config.Bindings)
		binding.Sort(add)
		res := &control.ApplyResponse{Applied: !r.DryRun, Diff: control.Diff{AddRequest: true}}
		res.Diff.SetBindings(len(add), binding.List(add).All, 1, binding.List{removed}.All)
		return control.NewReply(req, res)
	}).Path
	c, err := control.Dial(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, v := range []uint16{control.ProtocolVersion, control.PackedVersion, control.AddRequestVersion} {
		res, err := c.ApplyIn(t.Context(), v, control.Config{Bindings: bs}, false)
		if err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		if d := res.Diff; d.AddRequest || !slices.Equal(d.AddBindings, sorted) || !slices.Equal(d.RemoveBindings, []binding.Binding{removed}) {
			t.Errorf("version %d: AddRequest %v, %d added (sorted: %v), removed %v", v, d.AddRequest, len(d.AddBindings), slices.Equal(d.AddBindings, sorted), d.RemoveBindings)
		}
	}
	if slices.Equal(bs, sorted) {
		t.Error("Apply sorted the caller's list")
	}
	few := slices.Clone(bs[:100])
	binding.Sort(few)
	if res, err := c.Apply(t.Context(), control.Config{Bindings: bs[:100]}, false); err != nil || !slices.Equal(res.Diff.AddBindings, few) {
		t.Errorf("apply of 100 bindings: %v, added sorted %v", err, err == nil && slices.Equal(res.Diff.AddBindings, few))
	}
	res, err := c.Apply(t.Context(), control.Config{Bindings: []binding.Binding{}}, true)
	if err != nil || len(res.Diff.AddBindings) != 0 || res.Diff.AddRequest || len(res.Diff.RemoveBindings) != 1 {
		t.Errorf("apply of no bindings: %+v, %v", res, err)
	}
}
