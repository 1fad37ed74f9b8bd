package policy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The test binary doubles as the client and server programs the tests run
// in their namespaces and cgroup: SY_POLICY_HELPER selects the role.
func TestMain(m *testing.M) {
	if role := os.Getenv("SY_POLICY_HELPER"); role != "" {
		os.Exit(helperMain(role, os.Args[1:]))
	}
	os.Exit(testenv.CheckFDLeaks(m))
}

// env: a server namespace with a dispatcher and policy manager, a client
// namespace joined to it by a veth pair, a bpffs and a test cgroup that the
// sockops program is attached to.
type env struct {
	t        testing.TB
	srv, cli *testenv.NetNS
	d        *dispatch.Dispatcher
	m        *Manager
	cgroup   string
	cgfd     int
	opts     Options
	engine   settings.Engine // of the splices the test starts
	vethSrv  string
	vethCli  string
}

const (
	srvAddr = "10.9.0.1"
	cliAddr = "10.9.0.2"
)

// vethSeq names veth pairs (the names live in the tests' own namespaces;
// distinct names just make logs readable).
var vethSeq atomic.Int32

func newEnv(t testing.TB, opts Options, engine ...settings.Engine) *env {
	t.Helper()
	e := &env{t: t, srv: testenv.NewNetNS(t), cli: testenv.NewNetNS(t)}
	if len(engine) > 0 {
		e.engine = engine[0]
	}
	seq := strconv.Itoa(int(vethSeq.Add(1)))
	e.vethSrv, e.vethCli = "sys"+seq, "syc"+seq
	testenv.NewVethPair(t, e.srv, e.cli, e.vethSrv, e.vethCli,
		netip.MustParsePrefix(srvAddr+"/24"), netip.MustParsePrefix(cliAddr+"/24"))
	root := testenv.BPFFS(t)
	e.cgroup, e.cgfd = testenv.Cgroup(t)
	d, err := dispatch.Open(e.srv.Path(), dispatch.Options{Root: root})
	if err != nil {
		t.Fatalf("open dispatcher: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	e.d = d
	if opts.Cgroup == "" {
		opts.Cgroup = e.cgroup
	}
	opts.NetNS = e.srv.Path()
	if os.Getenv("SY_TEST_LOG") != "" && opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e.opts = opts
	e.m = e.open()
	return e
}

func (e *env) open() *Manager {
	e.t.Helper()
	m, err := Open(e.d, e.opts)
	if err != nil {
		e.t.Fatalf("open policy manager: %v", err)
	}
	e.t.Cleanup(func() { m.Close() })
	return m
}

func (e *env) bind(label, prefix, ports string) {
	e.t.Helper()
	b, err := binding.Parse(label, "tcp", prefix, ports)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.d.AddBindings(b); err != nil {
		e.t.Fatalf("bind %s: %v", b, err)
	}
}

// helper is a running helper process.
type helper struct {
	cmd  *exec.Cmd
	out  *bufio.Reader
	in   io.WriteCloser
	port string // server: the port it listens on (127.0.0.1)
}

// start runs a helper in ns; inCgroup puts it into the test cgroup (local
// to bypass), otherwise it stays outside (a peer bypass must leave alone).
func (e *env) start(ns *testenv.NetNS, inCgroup bool, role string, args ...string) *helper {
	return e.startEnv(ns, inCgroup, nil, role, args...)
}

func (e *env) startEnv(ns *testenv.NetNS, inCgroup bool, env []string, role string, args ...string) *helper {
	e.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := ns.Command(exe, args...)
	cmd.Env = append(append(os.Environ(), "SY_POLICY_HELPER="+role), env...)
	cmd.Stderr = os.Stderr
	if inCgroup {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.cgfd}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start helper %s: %v", role, err)
	}
	h := &helper{cmd: cmd, out: bufio.NewReader(out), in: in}
	e.t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return h
}

// line reads the helper's next line of output.
func (h *helper) line(t testing.TB) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	c := make(chan res, 1)
	go func() {
		s, err := h.out.ReadString('\n')
		c <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatalf("helper output: %v (%q)", r.err, r.s)
		}
		return r.s
	case <-time.After(3 * time.Minute):
		t.Fatal("helper output: timeout")
	}
	return ""
}

// server starts a server helper in the server namespace and registers its
// listener (taken from it with pidfd_getfd) for label, unless label is "".
func (e *env) server(label string, inCgroup bool, recv string) *helper {
	e.t.Helper()
	return e.serverEnv(label, inCgroup, recv, nil)
}

// serverEnv is server with extra environment for the helper.
func (e *env) serverEnv(label string, inCgroup bool, recv string, env []string) *helper {
	e.t.Helper()
	h := e.startEnv(e.srv, inCgroup, env, "server", recv)
	fields := strings.Fields(h.line(e.t))
	if len(fields) != 3 || fields[0] != "listening" {
		e.t.Fatalf("server helper: %q", fields)
	}
	fd, _ := strconv.Atoi(fields[1])
	h.port = fields[2]
	if label == "" {
		return h
	}
	pidfd, err := unix.PidfdOpen(h.cmd.Process.Pid, 0)
	if err != nil {
		e.t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	lfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		e.t.Fatalf("pidfd_getfd: %v", err)
	}
	defer unix.Close(lfd)
	if _, err := e.d.RegisterFD(label, lfd); err != nil {
		e.t.Fatalf("register: %v", err)
	}
	return h
}

// stream is the deterministic byte stream a client sends: seeded PRNG bytes.
func streamHash(seed, n uint64) string {
	h := sha256.New()
	r := newStream(seed)
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, uint64(len(buf)))
		r.fill(buf[:k])
		h.Write(buf[:k])
		n -= k
	}
	return hex.EncodeToString(h.Sum(nil))
}

type stream struct{ r *rand.ChaCha8 }

func newStream(seed uint64) *stream {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return &stream{rand.NewChaCha8(s)}
}

func (s *stream) fill(b []byte) { s.r.Read(b) }

// transfer runs one client that sends n bytes to addr from ns in random
// write sizes, half-closes, and checks the server's reply (bytes and hash
// it received). It returns the client's report.
func (e *env) transfer(ns *testenv.NetNS, inCgroup bool, addr string, seed, n uint64, env ...string) {
	e.t.Helper()
	h := e.startEnv(ns, inCgroup, env, "client", addr, fmt.Sprint(seed), fmt.Sprint(n))
	got := h.line(e.t)
	want := fmt.Sprintf("ok %d %s", n, streamHash(seed, n))
	if got != want {
		e.t.Fatalf("transfer of %d bytes to %s: client says %q, want %q", n, addr, got, want)
	}
	h.cmd.Wait()
}

func mustf(err error, format string, args ...any) {
	if err != nil {
		fmt.Fprintf(os.Stderr, format+": %v\n", append(args, err)...)
		os.Exit(2)
	}
}
