package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// helperProcess is the test binary run with helperEnv set:
//
//   - "listen": open sockets, print "PORT COOKIE" for each of a TCP
//     listener on 127.0.0.1, a dual-stack TCP listener on [::] and a UDP
//     socket on 0.0.0.0, then block until stdin is closed. It also holds a
//     connected UDP socket, which register-pid must not offer.
//   - "cli": run Main with the process's own arguments and environment.
func helperProcess() int {
	switch mode := os.Getenv(helperEnv); mode {
	case "cli":
		return Main(context.Background(), OSEnv(), os.Args[1:])
	case "listen":
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ctx := context.Background()
		t4, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		t6, err := lc.Listen(ctx, "tcp", "[::]:0")
		if err != nil {
			panic(err)
		}
		u, err := lc.ListenPacket(ctx, "udp4", "0.0.0.0:0")
		if err != nil {
			panic(err)
		}
		connected, err := net.Dial("udp4", u.LocalAddr().String())
		if err != nil {
			panic(err)
		}
		var out []string
		for _, c := range []syscall.Conn{t4.(*net.TCPListener), t6.(*net.TCPListener), u.(*net.UDPConn)} {
			rc, _ := c.SyscallConn()
			var cookie uint64
			var port int
			rc.Control(func(fd uintptr) {
				cookie, _ = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
				sa, _ := unix.Getsockname(int(fd))
				switch sa := sa.(type) {
				case *unix.SockaddrInet4:
					port = sa.Port
				case *unix.SockaddrInet6:
					port = sa.Port
				}
			})
			out = append(out, strconv.Itoa(port), strconv.FormatUint(cookie, 10))
		}
		fmt.Println(strings.Join(out, " "))
		io.Copy(io.Discard, os.Stdin)
		connected.Close()
		return 0
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		return 2
	}
}

// listenHelper is a helper process, listening inside a fresh namespace.
type listenHelper struct {
	pid                               int
	tcp4Port, tcp6Port, udpPort       int
	tcp4Cookie, tcp6Cookie, udpCookie uint64
}

func startListenHelper(t *testing.T) *listenHelper {
	t.Helper()
	ns := testenv.NewNetNS(t)
	cmd := ns.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=listen")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper process: %v", err)
	}
	var h listenHelper
	h.pid = cmd.Process.Pid
	if _, err := fmt.Sscan(line, &h.tcp4Port, &h.tcp4Cookie, &h.tcp6Port, &h.tcp6Cookie, &h.udpPort, &h.udpCookie); err != nil {
		t.Fatalf("helper process said %q: %v", line, err)
	}
	return &h
}

func TestRegisterPID(t *testing.T) {
	t.Parallel()
	h := startListenHelper(t)
	pid := strconv.Itoa(h.pid)
	for _, tc := range []struct {
		label, proto, addr string
		cookie             uint64
		out                string
	}{
		{"web", "tcp", fmt.Sprintf("127.0.0.1:%d", h.tcp4Port), h.tcp4Cookie, fmt.Sprintf("registered web tcp ipv4 127.0.0.1:%d (fd ", h.tcp4Port)},
		{"web", "tcp", fmt.Sprintf("[::]:%d", h.tcp6Port), h.tcp6Cookie, fmt.Sprintf("registered web tcp ipv6 [::]:%d (fd ", h.tcp6Port)},
		// The wildcard of the other family: the dual-stack [::] socket.
		{"web", "tcp", fmt.Sprintf("0.0.0.0:%d", h.tcp6Port), h.tcp6Cookie, fmt.Sprintf("registered web tcp ipv6 [::]:%d (fd ", h.tcp6Port)},
		{"dns", "udp", fmt.Sprintf("0.0.0.0:%d", h.udpPort), h.udpCookie, fmt.Sprintf("registered dns udp ipv4 0.0.0.0:%d (fd ", h.udpPort)},
	} {
		d := newFakeDaemon(t, nil)
		r := runMain(t, nil, "--control", d.path, "register-pid", pid, tc.label, tc.proto, tc.addr)
		wantOK(t, r, tc.out, " of pid "+pid+")\n")
		req := d.only()
		if got := req.body.(*control.RegisterRequest).Label; got != tc.label {
			t.Errorf("%s %s: label %q, want %q", tc.proto, tc.addr, got, tc.label)
		}
		if len(req.files) != 1 || req.files[0].cookie != tc.cookie {
			t.Errorf("%s %s: daemon got %+v, want the socket with cookie %d", tc.proto, tc.addr, req.files, tc.cookie)
		}
	}

	// No such socket: list what there is; the connected UDP socket is no
	// candidate. Nothing is sent.
	d := newFakeDaemon(t, nil)
	for _, tc := range []struct{ proto, addr string }{
		{"tcp", fmt.Sprintf("127.0.0.1:%d", h.udpPort)},
		{"udp", fmt.Sprintf("127.0.0.1:%d", h.tcp4Port)},
		{"tcp", fmt.Sprintf("127.0.0.2:%d", h.tcp4Port)},
	} {
		r := runMain(t, nil, "--control", d.path, "register-pid", pid, "web", tc.proto, tc.addr)
		state := map[string]string{"tcp": "listening", "udp": "unconnected"}[tc.proto]
		wantFail(t, r, ExitFailure,
			fmt.Sprintf("register-pid: process %d has no %s %s socket bound to %s; it has: ", h.pid, state, tc.proto, tc.addr),
			fmt.Sprintf("tcp 127.0.0.1:%d", h.tcp4Port),
			fmt.Sprintf("tcp [::]:%d", h.tcp6Port),
			fmt.Sprintf("udp 0.0.0.0:%d", h.udpPort),
			": give one of those as ADDR:PORT")
		oneLine(t, r)
		if strings.Contains(r.stderr, "udp 127.0.0.1:") {
			t.Errorf("the connected UDP socket is offered:\n%s", r)
		}
	}
	if n := len(d.requests()); n != 0 {
		t.Errorf("%d requests sent without a socket", n)
	}

	// The daemon refuses.
	d = newFakeDaemon(t, errorHandler(control.Errorf(control.CodePermission, "uid 1000 may not register sockets for label web")))
	r := runMain(t, nil, "--control", d.path, "register-pid", pid, "web", "tcp", fmt.Sprintf("127.0.0.1:%d", h.tcp4Port))
	wantFail(t, r, ExitFailure, `needs root or a grant for it in the daemon's config`)
}

func TestRegisterPIDNoProcess(t *testing.T) {
	t.Parallel()
	// A process that has exited.
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	r := runMain(t, nil, "--control", "/nowhere", "register-pid", strconv.Itoa(done.Process.Pid), "web", "tcp", "127.0.0.1:80")
	wantFail(t, r, ExitFailure, fmt.Sprintf("register-pid: no process %d: no such process: check the PID", done.Process.Pid))
	oneLine(t, r)

	// A process without sockets.
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Wait()
	defer sleep.Process.Kill()
	r = runMain(t, nil, "--control", "/nowhere", "register-pid", strconv.Itoa(sleep.Process.Pid), "web", "tcp", "127.0.0.1:80")
	wantFail(t, r, ExitFailure, fmt.Sprintf("register-pid: process %d has no listening TCP or bound, unconnected UDP socket", sleep.Process.Pid))
}

// Without CAP_SYS_PTRACE over the process, register-pid says what it needs.
// The CLI runs as the test binary in "cli" mode, as user nobody.
func TestRegisterPIDPermission(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	h := startListenHelper(t)

	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "cli.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--control", "/nowhere", "register-pid", strconv.Itoa(h.pid), "web", "tcp", fmt.Sprintf("127.0.0.1:%d", h.tcp4Port))
	cmd.Env = append(os.Environ(), helperEnv+"=cli")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitFailure {
		t.Fatalf("got %v, want exit status 1:\n%s", err, out)
	}
	want := fmt.Sprintf("needs CAP_SYS_PTRACE over pid %d (run as root)\n", h.pid)
	if !strings.HasPrefix(string(out), "switchyard: register-pid: ") || !strings.HasSuffix(string(out), want) || strings.Count(string(out), "\n") != 1 {
		t.Errorf("got %q, want one line ending in %q", out, want)
	}
}
