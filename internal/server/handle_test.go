package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// Peers of the request-handling tests: root, a uid that label web's
// grants name, and a uid nothing grants.
var (
	rootPeer    = peer{uid: 0, gid: 0, pid: 1}
	grantedPeer = peer{uid: 1000, gid: 1000, pid: 2}
	otherPeer   = peer{uid: 2000, gid: 2000, pid: 3}
)

// testServer is a server over a real dispatcher in a namespace and bpffs
// of its own; label web grants uid 1000, and no policy manager is set.
type testServer struct {
	s  *Server
	d  *dispatch.Dispatcher
	ns *testenv.NetNS
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	ns := testenv.NewNetNS(t)
	d, err := dispatch.Open(ns.Path(), dispatch.Options{Root: testenv.BPFFS(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	noNames := config.Resolver{}
	s, err := New(d, Options{Resolver: &noNames, Labels: map[string]settings.Label{
		"web": {Grants: settings.Grants{UIDs: []uint32{1000}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{s: s, d: d, ns: ns}
}

// call serves one request from p as the daemon does, files included, and
// returns the reply's body or error.
func (ts *testServer) call(p peer, body control.RequestBody, files ...*os.File) (control.ResponseBody, error) {
	if err := body.Validate(); err != nil {
		return nil, err
	}
	rep := ts.s.handle(p, control.NewRequest(body), files)
	if rep.Err != nil {
		return nil, rep.Err
	}
	return rep.Body, nil
}

// socket is a listening TCP socket in the namespace, as a file to pass.
func (ts *testServer) socket(t *testing.T, addr string) *os.File {
	t.Helper()
	f, err := ts.ns.ListenTCP(t, addr).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mustParse(t *testing.T, label, proto, prefix, ports string) binding.Binding {
	t.Helper()
	b, err := binding.Parse(label, proto, prefix, ports)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Each operation, called by root, by a granted uid and by another uid:
// the table's access column holds, and what is refused changes nothing.
func TestHandleAccess(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	web := mustParse(t, "web", "tcp", "192.0.2.0/24", "80")
	for _, tc := range []struct {
		name string
		body func() control.RequestBody
		file bool
		who  map[uint32]bool // by uid; true: allowed
	}{
		{"version", func() control.RequestBody { return &control.VersionRequest{} }, false,
			map[uint32]bool{0: true, 1000: true, 2000: true}},
		{"bind", func() control.RequestBody { return &control.BindRequest{Binding: web} }, false,
			map[uint32]bool{1000: false, 2000: false, 0: true}},
		{"list-bindings", func() control.RequestBody { return &control.ListBindingsRequest{} }, false,
			map[uint32]bool{0: true, 1000: true, 2000: true}},
		{"status", func() control.RequestBody { return &control.StatusRequest{} }, false,
			map[uint32]bool{0: true, 1000: true, 2000: true}},
		{"register", func() control.RequestBody { return &control.RegisterRequest{Label: "web"} }, true,
			map[uint32]bool{2000: false, 1000: true, 0: true}},
		{"unregister", func() control.RequestBody {
			return &control.UnregisterRequest{Label: "web", Protocol: binding.TCP, Family: binding.IPv4}
		}, false, map[uint32]bool{2000: false, 1000: true}},
		{"set-policy", func() control.RequestBody {
			return &control.SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.None}}
		}, false, map[uint32]bool{1000: false, 2000: false, 0: true}},
		{"apply", func() control.RequestBody {
			return &control.ApplyRequest{Config: control.Config{Bindings: binding.List{web},
				Labels: []settings.Named{{Name: "web", Label: settings.Label{Grants: settings.Grants{UIDs: []uint32{1000}}}}}}, DryRun: true}
		}, false, map[uint32]bool{1000: false, 2000: false, 0: true}},
		{"unbind", func() control.RequestBody { return &control.UnbindRequest{Binding: web} }, false,
			map[uint32]bool{1000: false, 2000: false, 0: true}},
	} {
		// Refusals first, so that a refused change would show.
		for _, p := range []peer{otherPeer, grantedPeer, rootPeer} {
			allowed, listed := tc.who[p.uid]
			if !listed {
				continue
			}
			var files []*os.File
			if tc.file {
				files = append(files, ts.socket(t, "127.0.0.1:0"))
			}
			before, _ := ts.d.Bindings()
			_, err := ts.call(p, tc.body(), files...)
			if allowed && err != nil {
				t.Errorf("%s by uid %d: %v", tc.name, p.uid, err)
			}
			if !allowed {
				if !errors.Is(err, control.ErrPermission) {
					t.Errorf("%s by uid %d: %v, want a permission error", tc.name, p.uid, err)
				}
				if after, _ := ts.d.Bindings(); len(after) != len(before) {
					t.Errorf("%s by uid %d was refused but bindings went from %d to %d", tc.name, p.uid, len(before), len(after))
				}
			}
		}
	}
	if got := ts.s.Stats.RefusedChanges.Load(); got != 8 {
		t.Errorf("%d refused changes counted, want 8 (4 operations for root only, 2 peers each)", got)
	}
	if got := ts.s.Stats.RefusedRegistrations.Load(); got != 2 {
		t.Errorf("%d refused registrations counted, want 2", got)
	}
}

// Bad input: each refusal has the code a client branches on and says what
// was wrong.
func TestHandleBadInput(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	web := mustParse(t, "web", "tcp", "192.0.2.0/24", "8000-8100")
	if _, err := ts.call(rootPeer, &control.BindRequest{Binding: web}); err != nil {
		t.Fatal(err)
	}
	udp := ts.ns.ListenUDP(t, "127.0.0.1:0")
	udpFile, err := udp.File()
	if err != nil {
		t.Fatal(err)
	}
	defer udpFile.Close()
	for _, tc := range []struct {
		name string
		body control.RequestBody
		file *os.File
		code control.Code
		want string
	}{
		{"overlapping range", &control.BindRequest{Binding: mustParse(t, "api", "tcp", "192.0.2.0/24", "8050-8200")}, nil, control.CodeConflict, "web tcp 192.0.2.0/24 8000-8100"},
		{"unbind what is not bound", &control.UnbindRequest{Binding: mustParse(t, "web", "tcp", "192.0.2.0/24", "81")}, nil, control.CodeNotFound, ""},
		{"unregister an empty destination", &control.UnregisterRequest{Label: "web", Protocol: binding.TCP, Family: binding.IPv6}, nil, control.CodeNotFound, "no socket is registered"},
		{"unregister an unknown label", &control.UnregisterRequest{Label: "nobody", Protocol: binding.TCP, Family: binding.IPv4}, nil, control.CodeNotFound, "no such label"},
		{"udp socket for a tcp label", &control.RegisterRequest{Label: "web"}, udpFile, control.CodeInvalid, "the label's bindings are tcp only"},
		{"status of nothing", &control.StatusRequest{Label: "nobody"}, nil, control.CodeNotFound, "no binding, socket or setting has this label"},
		{"policy without a policy manager", &control.SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Bypass}}, nil, control.CodeUnsupported, "connection policies are unavailable here"},
		{"apply a policy without a policy manager", &control.ApplyRequest{Config: control.Config{Bindings: binding.List{},
			Labels: []settings.Named{{Name: "web", Label: settings.Label{Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "127.0.0.1", Port: 80}}}}}}}, nil, control.CodeUnsupported, "label web: policy splice"},
		{"apply a grant of an unknown user", &control.ApplyRequest{Config: control.Config{Bindings: binding.List{},
			Labels: []settings.Named{{Name: "web", Label: settings.Label{Grants: settings.Grants{Users: []string{"nosuchuser"}}}}}}}, nil, control.CodeInternal, "grants of label web"},
	} {
		var files []*os.File
		if tc.file != nil {
			files = append(files, tc.file)
		}
		_, err := ts.call(rootPeer, tc.body, files...)
		var ce *control.Error
		if !errors.As(err, &ce) || ce.Code != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want code %s with %q", tc.name, err, tc.code, tc.want)
		}
	}
	// Nothing of the refused requests stuck.
	if bs, err := ts.d.Bindings(); err != nil || len(bs) != 1 {
		t.Errorf("bindings %v, %v; want only %s", bs, err, web)
	}
	if l := ts.s.Labels()["web"]; l.Kind != settings.None || !l.Grants.Equal(settings.Grants{UIDs: []uint32{1000}}) {
		t.Errorf("label web's settings became %+v", l)
	}
}

// RegisterResult.Replaced comes from the dispatcher: set when another live
// socket held the destination, not for the first socket, not for the
// same socket again, and not after the earlier socket closed.
func TestRegisterReplaced(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	register := func(f *os.File) control.RegisterResult {
		t.Helper()
		body, err := ts.call(grantedPeer, &control.RegisterRequest{Label: "web"}, f)
		if err != nil {
			t.Fatal(err)
		}
		res := body.(*control.RegisterResponse).Results
		if len(res) != 1 {
			t.Fatalf("%d results", len(res))
		}
		return res[0]
	}
	a := ts.socket(t, "127.0.0.1:0")
	if r := register(a); r.Replaced || r.Protocol != binding.TCP || r.Family != binding.IPv4 || !r.Local.Addr().IsLoopback() {
		t.Errorf("first socket: %+v", r)
	}
	if r := register(a); r.Replaced {
		t.Errorf("the same socket again: %+v, want not replaced", r)
	}
	bLn := ts.ns.ListenTCP(t, "127.0.0.1:0")
	b, err := bLn.File()
	if err != nil {
		t.Fatal(err)
	}
	if r := register(b); !r.Replaced || r.Local != netip.MustParseAddrPort(bLn.Addr().String()) {
		t.Errorf("a second socket: %+v, want replaced", r)
	}
	// The daemon holds no copy: once the service closes b, the
	// destination is empty and the next socket replaces nothing.
	b.Close()
	bLn.Close()
	c := ts.socket(t, "127.0.0.1:0")
	if r := register(c); r.Replaced {
		t.Errorf("after the registered socket closed: %+v, want not replaced", r)
	}
	// A socket for another family fills another destination.
	if r := register(ts.socket(t, "[::1]:0")); r.Replaced || r.Family != binding.IPv6 {
		t.Errorf("ipv6 socket: %+v", r)
	}
}

// dialAs connects to the control socket at path with the credentials of
// uid and gid, which SO_PEERCRED records at connect(2). Only the calling
// thread takes them (setresuid(2) as a raw system call is per thread; the
// saved uid stays root), and that thread dies with the goroutine, never
// going back to Go's pool.
func dialAs(t *testing.T, path string, uid, gid uint32) *control.Client {
	t.Helper()
	type dialed struct {
		c   *control.Client
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), 0); e != 0 {
			ch <- dialed{err: fmt.Errorf("setresgid: %w", e)}
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), 0); e != 0 {
			ch <- dialed{err: fmt.Errorf("setresuid: %w", e)}
			return
		}
		c, err := control.Dial(context.Background(), path)
		ch <- dialed{c, err}
	}()
	d := <-ch
	if d.err != nil {
		t.Fatal(d.err)
	}
	t.Cleanup(func() { d.c.Close() })
	return d.c
}

// Over the control socket, the peer's credentials decide: a user other
// than root may read, may register only what it is granted, and may not
// send a request larger than the table allows it (64 KiB), while root may
// (apply, up to 128 MiB).
func TestServeLimitsByPeer(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	// Not t.TempDir: its parent is 0700, and the other uids must reach
	// the socket.
	dir, err := os.MkdirTemp("", "switchyard-server-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "control.sock")
	ln, err := control.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o777)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ts.s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})

	other := dialAs(t, path, 2000, 2000)
	if _, err := other.Version(t.Context()); err != nil {
		t.Fatalf("version as uid 2000: %v", err)
	}
	if err := other.Bind(t.Context(), mustParse(t, "web", "tcp", "192.0.2.0/24", "80")); !errors.Is(err, control.ErrPermission) || !strings.Contains(err.Error(), "uid 2000") {
		t.Errorf("bind as uid 2000: %v", err)
	}
	sock := ts.socket(t, "127.0.0.1:0")
	if _, err := other.Register(t.Context(), "web", sock); !errors.Is(err, control.ErrPermission) {
		t.Errorf("register web as uid 2000: %v", err)
	}
	granted := dialAs(t, path, 1000, 1000)
	if res, err := granted.Register(t.Context(), "web", sock); err != nil || len(res) != 1 {
		t.Errorf("register web as granted uid 1000: %v, %v", res, err)
	}

	// An apply over 64 KiB once encoded: too large for uid 2000, which is
	// hung up on; fine for root.
	big := control.Config{Bindings: binding.List{}}
	for size := 0; size <= control.MaxSmallMessage; {
		for range 1000 {
			i := len(big.Bindings)
			big.Bindings = append(big.Bindings, mustParse(t, fmt.Sprintf("label-%d", i), "tcp", fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), "80"))
		}
		ds, err := control.EncodeRequest(control.NewRequest(&control.ApplyRequest{Config: big, DryRun: true}))
		if err != nil {
			t.Fatal(err)
		}
		size = 0
		for _, d := range ds {
			size += len(d)
		}
	}
	// The daemon refuses it on its first datagram, before it reads on or
	// asks who may apply, and hangs up; the client, still sending, may see
	// only that (EPIPE) rather than the refusal.
	if _, err := other.Apply(t.Context(), big, true); err == nil || errors.Is(err, control.ErrPermission) {
		t.Errorf("large apply as uid 2000: %v, want it refused for its size", err)
	}
	root := dialAs(t, path, 0, 0)
	if res, err := root.Apply(t.Context(), big, true); err != nil || len(res.Diff.AddBindings) != len(big.Bindings) {
		t.Errorf("large apply as root: %v", err)
	}
	if n := ts.s.Stats.BadRequests.Load(); n != 1 {
		t.Errorf("%d bad requests counted, want 1", n)
	}
}

// An apply's reply says that it added every binding of the request
// (control.Diff.AddRequest) exactly when it did: not when some were there
// already, nor when the request repeats one, and yes when a binding only
// changes its label.
func TestApplyAddRequest(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	a := mustParse(t, "web", "tcp", "192.0.2.0/24", "80")
	b := mustParse(t, "web", "udp", "192.0.2.0/24", "53")
	c := mustParse(t, "web", "tcp", "2001:db8::/64", "*")
	d := mustParse(t, "web", "udp", "198.51.100.0/24", "*")
	relabelled := a
	relabelled.Label = "other"
	for _, step := range []struct {
		name string
		bs   []binding.Binding
		want bool
	}{
		{"into nothing", []binding.Binding{b, a}, true},
		{"again", []binding.Binding{a, b}, false},
		{"one more", []binding.Binding{a, b, c}, false},
		{"a new one twice", []binding.Binding{d, d}, false},
		{"a new label", []binding.Binding{relabelled}, true},
		{"nothing", []binding.Binding{}, false},
	} {
		body, err := ts.call(peer{}, &control.ApplyRequest{Config: control.Config{Bindings: step.bs}})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		d := body.(*control.ApplyResponse).Diff
		// What the reply lists, in a version before AddRequest.
		ds, err := control.EncodeReply(&control.Reply{Version: control.PackedVersion, Op: control.OpApply, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := control.DecodeReply(ds, 0)
		if err != nil {
			t.Fatal(err)
		}
		added := rep.Body.(*control.ApplyResponse).Diff.AddBindings
		if d.AddRequest != step.want {
			t.Errorf("%s: AddRequest %v, want %v (added %v)", step.name, d.AddRequest, step.want, added)
		}
		want := slices.Clone(step.bs)
		binding.Sort(want)
		if d.AddRequest && !slices.Equal(added, want) {
			t.Errorf("%s: AddRequest, but added %v", step.name, added)
		}
	}
}
