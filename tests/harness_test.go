package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/testenv"
	"github.com/switchyard-project/switchyard/register"
)

var bin struct {
	dir        string
	switchyard string
	daemon     string
	next       string // switchyardd of the next build
}

func TestMain(m *testing.M) {
	if fd := os.Getenv("SWITCHYARD_E2E_SERVE_FD"); fd != "" {
		serveFD(fd, os.Getenv("SWITCHYARD_E2E_BODY"))
		return
	}
	dir, err := os.MkdirTemp("", "switchyard-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	// The upgrade build carries a different dispatch program (see
	// dispatch/variant_upgradetest.go).
	for _, b := range [][]string{
		{"build", "-o", dir + "/", "../cmd/switchyard", "../cmd/switchyardd"},
		{"build", "-tags", "switchyard_upgradetest", "-ldflags", "-X github.com/switchyard-project/switchyard/internal/server.Version=next", "-o", dir + "/switchyardd-next", "../cmd/switchyardd"},
	} {
		build := exec.Command("go", b...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build binaries:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	bin.dir, bin.switchyard, bin.daemon = dir, filepath.Join(dir, "switchyard"), filepath.Join(dir, "switchyardd")
	bin.next = filepath.Join(dir, "switchyardd-next")
	code := testenv.CheckFDLeaks(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// world is one test's namespace, bpffs, and daemon.
type world struct {
	t       testing.TB
	ns      *testenv.NetNS
	root    string
	dir     string // world-readable scratch directory
	control string
	cgroup  string        // the bypass policy's cgroup
	env     []string      // extra environment of the daemon
	ready   time.Duration // how long startDaemon waits for READY=1 (default 20s)
	d       *daemonProc
}

func newWorld(t testing.TB, daemonArgs ...string) *world {
	t.Helper()
	w := newWorldNoDaemon(t)
	w.d = w.startDaemon(daemonArgs...)
	return w
}

// newWorldNoDaemon is a world whose daemon the test starts itself.
func newWorldNoDaemon(t testing.TB) *world {
	t.Helper()
	ns := testenv.NewNetNS(t)
	for _, p := range []string{"10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"} {
		ns.AddLocalRoute(t, netip.MustParsePrefix(p))
	}
	dir, err := os.MkdirTemp("", "switchyard-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	control := filepath.Join(dir, "control.sock")
	t.Cleanup(func() { stopSpliceWorkers(t, control+".splice") })
	return &world{t: t, ns: ns, root: testenv.BPFFS(t), dir: dir, control: control, cgroup: testCgroupDir(t)}
}

// testCgroupDir is a cgroup of the test's own for the daemon's bypass
// programs.
func testCgroupDir(t testing.TB) string {
	dir, _ := testenv.Cgroup(t)
	return dir
}

type daemonProc struct {
	cmd    *exec.Cmd
	stderr *logFile
	notes  *syncBuffer // what it told the notify socket
	notify string      // the notify socket's path
	done   chan struct{}
}

// allNotes returns everything the daemon has sent to its notify socket so
// far, including datagrams still queued: it sends a marker of its own and
// waits until the reader has seen it, which a datagram socket delivers
// after everything sent before it.
func (p *daemonProc) allNotes(t testing.TB) string {
	t.Helper()
	marker := fmt.Sprintf("TEST-MARKER-%d", time.Now().UnixNano())
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: p.notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(marker)); err != nil {
		t.Fatal(err)
	}
	if !p.notes.waitFor(marker, 10*time.Second) {
		t.Fatalf("notify reader did not see %s", marker)
	}
	return strings.ReplaceAll(p.notes.String(), marker+"\n", "")
}

// logFile is a daemon's log, in a file.
type logFile struct{ path string }

func (l *logFile) String() string {
	b, _ := os.ReadFile(l.path)
	return string(b)
}

type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // closed and replaced on each write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.written != nil {
		close(s.written)
		s.written = nil
	}
	return s.b.Write(p)
}

// waitFor reports whether the buffer contains substr within timeout.
func (s *syncBuffer) waitFor(substr string, timeout time.Duration) bool {
	expire := time.After(timeout)
	for {
		s.mu.Lock()
		if strings.Contains(s.b.String(), substr) {
			s.mu.Unlock()
			return true
		}
		if s.written == nil {
			s.written = make(chan struct{})
		}
		ch := s.written
		s.mu.Unlock()
		select {
		case <-ch:
		case <-expire:
			return false
		}
	}
}

// reset forgets what was written so far.
func (s *syncBuffer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDaemon runs switchyardd for the world's namespace and returns once
// it has told systemd's notify socket READY=1.
func (w *world) startDaemon(extra ...string) *daemonProc {
	w.t.Helper()
	return w.startDaemonBin(bin.daemon, extra...)
}

func (w *world) startDaemonBin(path string, extra ...string) *daemonProc {
	w.t.Helper()
	notifyPath := filepath.Join(w.dir, fmt.Sprintf("notify-%d.sock", time.Now().UnixNano()))
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { notify.Close(); os.Remove(notifyPath) })

	args := append([]string{"--netns", w.ns.Path(), "--bpffs", w.root, "--control", w.control, "--bypass-cgroup", w.cgroup, "--log-level", "debug"}, extra...)
	cmd := exec.Command(path, args...)
	cmd.Env = append(append(os.Environ(), "NOTIFY_SOCKET="+notifyPath), w.env...)
	// A file, not a pipe: the daemon's splice workers inherit its stderr
	// and outlive it, and os/exec would wait for them to close a pipe.
	logf, err := os.CreateTemp(w.dir, "switchyardd-*.log")
	if err != nil {
		w.t.Fatal(err)
	}
	defer logf.Close()
	p := &daemonProc{cmd: cmd, stderr: &logFile{logf.Name()}, notes: &syncBuffer{}, notify: notifyPath, done: make(chan struct{})}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	w.t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if w.t.Failed() {
			w.t.Logf("switchyardd log:\n%s", p.stderr.String())
		}
	})

	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(got)
				return
			}
			p.notes.Write(append(buf[:n:n], '\n'))
			select {
			case got <- string(buf[:n]):
			default:
			}
		}
	}()
	wait := w.ready
	if wait == 0 {
		// Generous: a readiness signal ends the wait, and on a loaded
		// 2-core machine a start that verifies the programs has taken
		// over 20 s.
		wait = 60 * time.Second
	}
	deadline := time.After(wait)
	for {
		select {
		case msg, ok := <-got:
			if !ok {
				w.t.Fatalf("notify socket closed before READY=1; log:\n%s", p.stderr.String())
			}
			if strings.Contains(msg, "READY=1") {
				return p
			}
		case <-p.done:
			w.t.Fatalf("switchyardd exited before READY=1 (%v); log:\n%s", cmd.ProcessState, p.stderr.String())
		case <-deadline:
			w.t.Fatalf("switchyardd not ready after %v; log:\n%s", wait, p.stderr.String())
		}
	}
}

// stop sends sig and waits for the daemon to exit.
func (p *daemonProc) stop(t testing.TB, sig syscall.Signal) *os.ProcessState {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("switchyardd did not exit after %v; log:\n%s", sig, p.stderr.String())
	}
	return p.cmd.ProcessState
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the switchyard binary against the world's daemon.
func (w *world) cli(args ...string) result {
	w.t.Helper()
	return w.cliAs(nil, nil, args...)
}

// cliAs runs the CLI with credentials and extra files (fd 3, 4, ...).
func (w *world) cliAs(cred *syscall.Credential, files []*os.File, args ...string) result {
	w.t.Helper()
	return w.cliTimeout(cred, files, 30*time.Second, args...)
}

// cliTimeout is cliAs with a deadline other than 30 seconds.
func (w *world) cliTimeout(cred *syscall.Credential, files []*os.File, timeout time.Duration, args ...string) result {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.switchyard, append([]string{"--control", w.control}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.ExtraFiles = files
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			w.t.Fatalf("run switchyard %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}
}

func (w *world) mustCLI(args ...string) string {
	w.t.Helper()
	r := w.cli(args...)
	if r.code != 0 {
		w.t.Fatalf("switchyard %s: exit %d: %s%s", strings.Join(args, " "), r.code, r.stderr, r.stdout)
	}
	return r.stdout
}

// run runs a real client inside the namespace and returns its output.
func (w *world) run(name string, args ...string) (string, error) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := w.ns.Command(name, args...)
	cmd2 := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	out, err := cmd2.CombinedOutput()
	return string(out), err
}

// serveFD is the test binary's second life: an HTTP service on an inherited
// listening socket, as a socket-activated service would run.
func serveFD(fd, body string) {
	var n int
	fmt.Sscan(fd, &n)
	ln, err := net.FileListener(os.NewFile(uintptr(n), "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve fd:", err)
		os.Exit(1)
	}
	http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "%s saw %s", body, r.Context().Value(http.LocalAddrContextKey))
	}))
}

// metrics scrapes the daemon's metrics endpoint, whose address it logged
// before it became ready.
func (w *world) metrics() string {
	w.t.Helper()
	log := w.d.stderr.String()
	const key = `msg="serving metrics" addr=`
	i := strings.Index(log, key)
	if i < 0 {
		w.t.Fatalf("daemon did not log a metrics address:\n%s", log)
	}
	addr := strings.Fields(log[i+len(key):])[0]
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		w.t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// registerTCP listens in the namespace and hands the socket to the daemon
// with package register, as a Go service would.
func (w *world) registerTCP(label, network, addr string) *net.TCPListener {
	w.t.Helper()
	var ln *net.TCPListener
	if err := w.ns.Do(func() error {
		var err error
		ln, err = register.ListenTCP(context.Background(), w.control, label, network, addr)
		return err
	}); err != nil {
		w.t.Fatalf("register %s: %v", label, err)
	}
	w.t.Cleanup(func() { ln.Close() })
	return ln
}

// stopSpliceWorkers ends the splice workers a test's daemons left running
// (they outlive the daemon by design) and waits for them to exit.
func stopSpliceWorkers(t testing.TB, dir string) {
	socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	for _, sock := range socks {
		st, err := askWorker(sock, "status")
		if err != nil {
			continue
		}
		pidfd, err := unix.PidfdOpen(st.PID, 0)
		if err != nil {
			continue
		}
		askWorker(sock, "stop")
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 5000); n == 0 {
			t.Errorf("splice worker %d did not stop within 5s; killing it", st.PID)
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		}
		unix.Close(pidfd)
	}
}

// workerStatus is what a splice worker answers on its control socket.
type workerStatus struct {
	PID         int    `json:"pid"`
	Label       string `json:"label"`
	Upstream    string `json:"upstream"`
	Bytes       uint64 `json:"bytes"`
	Connections uint64 `json:"connections"`
	Open        int    `json:"open"`
	Draining    bool   `json:"draining"`
}

func askWorker(sock, op string) (workerStatus, error) {
	var st workerStatus
	c, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return st, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, op)
	err = json.NewDecoder(c).Decode(&st)
	return st, err
}

// serveOK answers every connection ln accepts with "ok" and closes it,
// until ln is closed.
func serveOK(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
}
