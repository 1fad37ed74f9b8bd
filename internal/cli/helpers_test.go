package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/control/controltest"
	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// helperEnv makes the test binary act as a helper process (see
// helperProcess) instead of running tests.
const helperEnv = "SWITCHYARD_CLI_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperProcess())
	}
	os.Exit(testenv.CheckFDLeaks(m))
}

// seenFile is a socket the fake daemon received.
type seenFile struct {
	ino    uint64
	cookie uint64
}

// seenRequest is a request the fake daemon received.
type seenRequest struct {
	body    control.RequestBody
	version uint16
	files   []seenFile
}

type handlerFunc func(req *control.Request, files []*os.File) (control.ResponseBody, error)

// fakeDaemon answers control requests on a socket in a temp dir
// (controltest), records them with the sockets they carried, and answers
// with handler (defaultHandler if nil).
type fakeDaemon struct {
	t    *testing.T
	path string

	mu   sync.Mutex
	reqs []seenRequest
}

func newFakeDaemon(t *testing.T, handler handlerFunc) *fakeDaemon {
	t.Helper()
	if handler == nil {
		handler = defaultHandler
	}
	d := &fakeDaemon{t: t}
	answer := controltest.Func(handler)
	srv := controltest.New(t, func(c *control.Conn, req *control.Request, files []*os.File) *control.Reply {
		seen := seenRequest{body: req.Body, version: req.Version}
		for _, f := range files {
			seen.files = append(seen.files, describeFile(t, f))
		}
		rep := answer(c, req, files)
		d.mu.Lock()
		d.reqs = append(d.reqs, seen)
		d.mu.Unlock()
		return rep
	})
	d.path = srv.Path
	return d
}

// requests returns what the daemon received so far.
func (d *fakeDaemon) requests() []seenRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.reqs)
}

// only returns the one request the daemon received, failing otherwise.
func (d *fakeDaemon) only() seenRequest {
	d.t.Helper()
	r := d.requests()
	if len(r) != 1 {
		d.t.Fatalf("daemon got %d requests, want 1: %+v", len(r), r)
	}
	return r[0]
}

func describeFile(t *testing.T, f *os.File) seenFile {
	var s seenFile
	fi, err := f.Stat()
	if err != nil {
		t.Errorf("stat received file: %v", err)
		return s
	}
	s.ino = fi.Sys().(*syscall.Stat_t).Ino
	rc, err := f.SyscallConn()
	if err != nil {
		t.Errorf("received file: %v", err)
		return s
	}
	rc.Control(func(fd uintptr) {
		info, err := sockinfo.Inspect(int(fd))
		if err != nil {
			t.Errorf("inspect received socket: %v", err)
		}
		s.cookie = info.Cookie
	})
	return s
}

var (
	testBindings = []binding.Binding{
		mustBinding("dns", "udp", "192.0.2.0/24", "53"),
		mustBinding("web", "tcp", "2001:db8::/64", "*"),
		mustBinding("web", "tcp", "198.51.100.7", "8000-8999"),
	}
	testStatus = &control.StatusResponse{
		Version: "9.9.9",
		NetNS:   4026531840,
		Labels: []control.LabelStatus{
			{Label: "dns", Bindings: 1, Hits: 10, Missing: 2, Sockets: []control.SocketStatus{
				{Protocol: binding.UDP, Family: binding.IPv4, Local: netip.MustParseAddrPort("192.0.2.1:53"), Cookie: 4097},
				{Protocol: binding.UDP, Family: binding.IPv6, Local: netip.MustParseAddrPort("[::]:53"), Cookie: 4098},
			}},
			{Label: "web", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "10.0.0.5"}}, Bindings: 2},
		},
	}
)

func mustBinding(label, proto, prefix, ports string) binding.Binding {
	b, err := binding.Parse(label, proto, prefix, ports)
	if err != nil {
		panic(err)
	}
	return b
}

// defaultHandler answers like a daemon with testBindings and testStatus that
// accepts every change.
func defaultHandler(req *control.Request, files []*os.File) (control.ResponseBody, error) {
	switch r := req.Body.(type) {
	case *control.VersionRequest:
		return &control.VersionResponse{Version: "9.9.9", Protocols: []uint16{1}}, nil
	case *control.BindRequest:
		return &control.BindResponse{}, nil
	case *control.UnbindRequest:
		return &control.UnbindResponse{}, nil
	case *control.ListBindingsRequest:
		var out []binding.Binding
		for _, b := range testBindings {
			if r.Label == "" || b.Label == r.Label {
				out = append(out, b)
			}
		}
		return &control.ListBindingsResponse{Bindings: out}, nil
	case *control.RegisterRequest:
		res := &control.RegisterResponse{}
		for _, f := range files {
			rc, err := f.SyscallConn()
			if err != nil {
				return nil, err
			}
			var info sockinfo.Info
			var ierr error
			rc.Control(func(fd uintptr) { info, ierr = sockinfo.Inspect(int(fd)) })
			if ierr != nil {
				return nil, ierr
			}
			res.Results = append(res.Results, control.RegisterResult{Protocol: info.Protocol, Family: info.Family, Local: info.Local})
		}
		return res, nil
	case *control.UnregisterRequest:
		return &control.UnregisterResponse{}, nil
	case *control.StatusRequest:
		st := *testStatus
		if r.Label != "" {
			st.Labels = nil
			for _, l := range testStatus.Labels {
				if l.Label == r.Label {
					st.Labels = append(st.Labels, l)
				}
			}
			if st.Labels == nil {
				return nil, control.Errorf(control.CodeNotFound, "label %q: no such label", r.Label)
			}
		}
		return &st, nil
	case *control.SetPolicyRequest:
		return &control.SetPolicyResponse{}, nil
	case *control.ApplyRequest:
		return &control.ApplyResponse{Applied: !r.DryRun}, nil
	}
	return nil, control.Errorf(control.CodeUnsupported, "unexpected request %s", req.Op())
}

// errorHandler answers every request with err.
func errorHandler(err error) handlerFunc {
	return func(*control.Request, []*os.File) (control.ResponseBody, error) { return nil, err }
}

// result is what one run of Main printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// testEnv is an Env for tests: buffers for output, a map for the
// environment, a pid, and inherited descriptors served from sockets the
// test owns (each call hands out a new duplicate, which the CLI closes).
type testEnv struct {
	vars      map[string]string
	pid       int
	stdin     string
	inherited map[int]interface{ File() (*os.File, error) }

	mu     sync.Mutex
	handed []*os.File
}

func (te *testEnv) env(stdout, stderr io.Writer) Env {
	return Env{
		Stdin:  strings.NewReader(te.stdin),
		Stdout: stdout,
		Stderr: stderr,
		Getenv: func(k string) string { return te.vars[k] },
		Getpid: func() int { return te.pid },
		Open:   func(name string) (io.ReadCloser, error) { return os.Open(name) },
		InheritedFile: func(fd int) (*os.File, error) {
			src, ok := te.inherited[fd]
			if !ok {
				return nil, fmt.Errorf("fd %d is not open: %w", fd, syscall.EBADF)
			}
			f, err := src.File()
			if err != nil {
				return nil, err
			}
			te.mu.Lock()
			te.handed = append(te.handed, f)
			te.mu.Unlock()
			return f, nil
		},
	}
}

// checkClosed fails unless the CLI closed every descriptor it took over.
func (te *testEnv) checkClosed(t *testing.T) {
	t.Helper()
	te.mu.Lock()
	defer te.mu.Unlock()
	for _, f := range te.handed {
		if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
			f.Close()
			t.Errorf("the CLI left %s open", f.Name())
		}
	}
}

// runMain runs the CLI in-process.
func runMain(t *testing.T, te *testEnv, args ...string) result {
	t.Helper()
	if te == nil {
		te = &testEnv{}
	}
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), te.env(&stdout, &stderr), args)
	te.checkClosed(t)
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	if code != 0 {
		if !strings.HasPrefix(r.stderr, "switchyard: ") {
			t.Errorf("error output does not start with 'switchyard: ':\n%s", r)
		}
	} else if r.stderr != "" {
		t.Errorf("success with output on stderr:\n%s", r)
	}
	return r
}

// wantFail checks exit code and that stderr contains every substring.
func wantFail(t *testing.T, r result, code int, subs ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit %d, want %d:\n%s", r.code, code, r)
	}
	for _, s := range subs {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q:\n%s", s, r)
		}
	}
}

// wantOK checks success and that stdout contains every substring.
func wantOK(t *testing.T, r result, subs ...string) {
	t.Helper()
	if r.code != 0 {
		t.Errorf("exit %d, want 0:\n%s", r.code, r)
	}
	for _, s := range subs {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r)
		}
	}
}

// oneLine fails unless the error output is one line.
func oneLine(t *testing.T, r result) {
	t.Helper()
	if n := strings.Count(r.stderr, "\n"); n != 1 {
		t.Errorf("stderr has %d lines, want 1:\n%s", n, r)
	}
}
