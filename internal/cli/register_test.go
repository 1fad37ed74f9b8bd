package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/server"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

type fileSource = interface{ File() (*os.File, error) }

// inodeOf returns the inode of a socket, which every duplicate shares.
func inodeOf(t *testing.T, src fileSource) uint64 {
	t.Helper()
	f, err := src.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestRegisterActivation(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	tcp4 := ns.ListenTCP(t, "127.0.0.1:0")
	tcp6 := ns.ListenTCP(t, "[::1]:0")
	udp4 := ns.ListenUDP(t, "127.0.0.1:0")
	srcs := map[int]fileSource{3: tcp4, 4: tcp6, 5: udp4}
	ino := make(map[int]uint64)
	for fd, s := range srcs {
		ino[fd] = inodeOf(t, s)
	}
	line := map[int]string{
		3: fmt.Sprintf("tcp ipv4 %s (fd 3", tcp4.Addr()),
		4: fmt.Sprintf("tcp ipv6 %s (fd 4", tcp6.Addr()),
		5: fmt.Sprintf("udp ipv4 %s (fd 5", udp4.LocalAddr()),
	}
	const pid = 4242
	env := func(names string) *testEnv {
		vars := map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3"}
		if names != "" {
			vars["LISTEN_FDNAMES"] = names
		}
		return &testEnv{pid: pid, vars: vars, inherited: srcs}
	}
	// want is a label and the fds registered for it, one request each.
	type want struct {
		label string
		fds   []int
	}
	for _, tc := range []struct {
		names string
		args  []string
		want  []want
	}{
		{"web:web:dns", []string{"web"}, []want{{"web", []int{3, 4}}}},
		{"web:web:dns", []string{"dns"}, []want{{"dns", []int{5}}}},
		{"web:web:dns", nil, []want{{"web", []int{3, 4}}, {"dns", []int{5}}}},
		{"a:b:a", nil, []want{{"a", []int{3, 5}}, {"b", []int{4}}}},
		{"", []string{"web"}, []want{{"web", []int{3, 4, 5}}}},
		{"unknown:unknown:unknown", []string{"web"}, []want{{"web", []int{3, 4, 5}}}},
		{"web.socket:web.socket:dns.socket", []string{"web"}, []want{{"web", []int{3, 4}}}},
		{"web.socket:web:x", []string{"web"}, []want{{"web", []int{4}}}},
	} {
		d := newFakeDaemon(t, nil)
		r := runMain(t, env(tc.names), append([]string{"--control", d.path, "register"}, tc.args...)...)
		if r.code != 0 {
			t.Errorf("names %q args %v:\n%s", tc.names, tc.args, r)
			continue
		}
		reqs := d.requests()
		if len(reqs) != len(tc.want) {
			t.Errorf("names %q args %v: %d requests, want %d", tc.names, tc.args, len(reqs), len(tc.want))
			continue
		}
		var lines int
		for i, w := range tc.want {
			req := reqs[i]
			if got := req.body.(*control.RegisterRequest).Label; got != w.label {
				t.Errorf("names %q args %v: request %d for label %q, want %q", tc.names, tc.args, i, got, w.label)
			}
			var got, wantIno []uint64
			for _, f := range req.files {
				got = append(got, f.ino)
			}
			for _, fd := range w.fds {
				wantIno = append(wantIno, ino[fd])
				l := "registered " + w.label + " " + line[fd]
				if !strings.Contains(r.stdout, l) {
					t.Errorf("names %q args %v: stdout lacks %q:\n%s", tc.names, tc.args, l, r)
				}
				lines++
			}
			if !slices.Equal(got, wantIno) {
				t.Errorf("names %q args %v: label %s got sockets %v, want %v (fds %v)", tc.names, tc.args, w.label, got, wantIno, w.fds)
			}
		}
		if n := strings.Count(r.stdout, "\n"); n != lines {
			t.Errorf("names %q args %v: %d output lines, want one per socket (%d):\n%s", tc.names, tc.args, n, lines, r)
		}
	}

	// Activation that does not fit.
	for _, tc := range []struct {
		vars map[string]string
		args []string
		want string
	}{
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:web:dns"}, []string{"api"},
			`register: none of the sockets passed by systemd is named "api" (LISTEN_FDNAMES: fd 3 web, fd 4 web, fd 5 dns): set FileDescriptorName=api in the socket unit`},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:unknown:dns"}, nil,
			"register: fd 4 has no name (LISTEN_FDNAMES: fd 3 web, fd 4 unknown, fd 5 dns), so there is no label to register it under: give LABEL"},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3"}, nil, "register: fd 3 has no name"},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:a b:dns"}, nil, `register: fd 4 is named "a b", which cannot be a label`},
		{map[string]string{"LISTEN_PID": "999", "LISTEN_FDS": "3"}, []string{"web"},
			"register: LISTEN_PID is 999 but this process is 4242, so LISTEN_FDS was meant for another process and is ignored: start switchyard directly from ExecStart="},
		{map[string]string{"LISTEN_FDS": "3"}, []string{"web"}, "register: LISTEN_FDS is set but LISTEN_PID is not"},
		{map[string]string{"LISTEN_PID": "4242"}, []string{"web"}, "register: no sockets to register: LISTEN_FDS is not set, so this is not systemd socket activation"},
		{nil, nil, "LISTEN_FDS is not set"},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, []string{"web"}, "register: LISTEN_FDS=0: systemd passed no sockets"},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "x"}, []string{"web"}, `register: LISTEN_FDS="x" is not a number`},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a:b"}, []string{"web"}, "register: LISTEN_FDNAMES has 2 names for LISTEN_FDS=3 descriptors"},
		{map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "4"}, []string{"web"}, "register: fd 6 is not open"},
	} {
		d := newFakeDaemon(t, nil)
		r := runMain(t, &testEnv{pid: pid, vars: tc.vars, inherited: srcs}, append([]string{"--control", d.path, "register"}, tc.args...)...)
		wantFail(t, r, ExitFailure, tc.want)
		oneLine(t, r)
		if n := len(d.requests()); n != 0 {
			t.Errorf("%v %v: %d requests sent", tc.vars, tc.args, n)
		}
	}
}

func TestRegisterFD(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	a := ns.ListenTCP(t, "127.0.0.1:0")
	b := ns.ListenUDP(t, "[::1]:0")
	conn, err := ns.DialTCP(a.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srcs := map[int]fileSource{7: a, 9: b, 11: conn.(fileSource)}
	// LISTEN_FDS is ignored with --fd.
	te := &testEnv{pid: 1, vars: map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "1"}, inherited: srcs}

	d := newFakeDaemon(t, nil)
	r := runMain(t, te, "--control", d.path, "register", "--fd", "9", "--fd=7", "web")
	wantOK(t, r,
		fmt.Sprintf("registered web udp ipv6 %s (fd 9)\n", b.LocalAddr()),
		fmt.Sprintf("registered web tcp ipv4 %s (fd 7)\n", a.Addr()))
	req := d.only()
	if got := req.body.(*control.RegisterRequest).Label; got != "web" {
		t.Errorf("label %q, want web", got)
	}
	if len(req.files) != 2 || req.files[0].ino != inodeOf(t, b) || req.files[1].ino != inodeOf(t, a) {
		t.Errorf("daemon got sockets %+v, want inodes %d and %d", req.files, inodeOf(t, b), inodeOf(t, a))
	}

	// A descriptor that is not open, and a socket that cannot be
	// registered: refused before the daemon is asked.
	d = newFakeDaemon(t, nil)
	r = runMain(t, te, "--control", d.path, "register", "--fd", "8", "web")
	wantFail(t, r, ExitFailure, "register: fd 8 is not open: bad file descriptor: was it passed to this process?")
	r = runMain(t, te, "--control", d.path, "register", "--fd", "11", "web")
	wantFail(t, r, ExitFailure, "register: fd 11: tcp socket is not listening", "register the socket the service called listen(2) on")
	oneLine(t, r)
	if n := len(d.requests()); n != 0 {
		t.Errorf("%d requests sent for unusable descriptors", n)
	}

	// Not a socket at all (OSEnv's InheritedFile, on a pipe of ours).
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	if _, err := inheritedFile(int(pr.Fd())); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("inheritedFile of a pipe: %v, want not a socket", err)
	}

	// The daemon refuses: say how to get a grant.
	d = newFakeDaemon(t, errorHandler(control.Errorf(control.CodePermission, "uid 1000 may not register sockets for label web")))
	r = runMain(t, te, "--control", d.path, "register", "--fd", "7", "web")
	wantFail(t, r, ExitFailure,
		`register: switchyardd refused: uid 1000 may not register sockets for label web: registering sockets for label "web" needs root or a grant for it in the daemon's config`)
	oneLine(t, r)

	// The daemon is not running.
	r = runMain(t, te, "--control", d.path+".missing", "register", "--fd", "7", "web")
	wantFail(t, r, ExitFailure, "switchyardd is not running")
}

// Replaced sockets are reported as such, by a real daemon (server and
// dispatcher in a namespace of the test's own) that learns it from the
// dispatcher.
func TestRegisterReplaced(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	d, err := dispatch.Open(ns.Path(), dispatch.Options{Root: testenv.BPFFS(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv, err := server.New(d, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := control.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})

	a := ns.ListenTCP(t, "127.0.0.1:0")
	b := ns.ListenTCP(t, "127.0.0.1:0")
	te := &testEnv{inherited: map[int]fileSource{3: a}}
	wantOK(t, runMain(t, te, "--control", path, "register", "--fd", "3", "web"),
		fmt.Sprintf("registered web tcp ipv4 %s (fd 3)\n", a.Addr()))
	te = &testEnv{inherited: map[int]fileSource{3: b}}
	wantOK(t, runMain(t, te, "--control", path, "register", "--fd", "3", "web"),
		fmt.Sprintf("registered web tcp ipv4 %s (fd 3, replaced the socket registered before)\n", b.Addr()))
}
