package tests

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/testenv"
	"github.com/switchyard-project/switchyard/register"
)

// httpService serves, on ln, a body naming the service and the address the
// client dialled.
func httpService(t *testing.T, name string, ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "%s saw %s", name, r.Context().Value(http.LocalAddrContextKey))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// curl fetches url from inside the namespace with the real curl.
func (w *world) curl(url string) string {
	w.t.Helper()
	out, err := w.run("curl", "-sS", "--max-time", "5", url)
	if err != nil {
		w.t.Fatalf("curl %s: %v: %s", url, err, out)
	}
	return out
}

func (w *world) expectCurl(host string, port int, want string) {
	w.t.Helper()
	hp := net.JoinHostPort(host, fmt.Sprint(port))
	got := w.curl("http://" + hp + "/")
	if wantBody := want + " saw " + hp; got != wantBody {
		w.t.Errorf("curl %s: got %q, want %q", hp, got, wantBody)
	}
}

// A socket handed over by SCM_RIGHTS through package register serves TCP
// (curl) and UDP (socat) on several addresses and ports of its bindings, and
// UDP replies come from the address the client sent to.
func TestRegisterOverControlSocket(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "10.1.0.0/16", "*")
	w.mustCLI("bind", "web6", "tcp", "2001:db8:1::/64", "8000-8999")
	w.mustCLI("bind", "dns", "udp", "192.0.2.0/24", "53")

	var ln, ln6 *net.TCPListener
	var uc *net.UDPConn
	err := w.ns.Do(func() error {
		var err error
		ctx := context.Background()
		if ln, err = register.ListenTCP(ctx, w.control, "web", "tcp4", "127.0.0.1:0"); err != nil {
			return err
		}
		if ln6, err = register.ListenTCP(ctx, w.control, "web6", "tcp6", "[::1]:0"); err != nil {
			return err
		}
		uc, err = register.ListenUDP(ctx, w.control, "dns", "udp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	httpService(t, "web", ln)
	httpService(t, "web6", ln6)
	udp, err := register.NewUDPConn(uc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, src, dst, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			reply := []byte(fmt.Sprintf("dns saw %s for %s", dst, strings.TrimSpace(string(buf[:n]))))
			// A service lives in its namespace; this test's threads do
			// not, so reply from one that does.
			if err := w.ns.Do(func() error { _, err := udp.WriteTo(reply, dst, src); return err }); err != nil {
				t.Errorf("udp reply: %v", err)
			}
		}
	}()

	for _, a := range []string{"10.1.0.1", "10.1.77.200", "10.1.255.254"} {
		for _, port := range []int{80, 443, 8080, 65000} {
			w.expectCurl(a, port, "web")
		}
	}
	for _, port := range []int{8000, 8500, 8999} {
		w.expectCurl("2001:db8:1::7", port, "web6")
	}
	for _, a := range []string{"192.0.2.1", "192.0.2.53", "192.0.2.254"} {
		out, err := w.runInput("ping\n", "socat", "-T", "3", "-", "UDP4:"+a+":53")
		want := fmt.Sprintf("dns saw %s:53 for ping", a)
		if err != nil || out != want {
			t.Errorf("udp to %s:53: got %q (%v), want %q", a, out, err, want)
		}
	}
	st := w.mustCLI("status", "-o", "json")
	for _, l := range []string{`"web"`, `"web6"`, `"dns"`} {
		if !strings.Contains(st, l) {
			t.Errorf("status lacks %s:\n%s", l, st)
		}
	}
}

// The register-socket pattern: systemd-socket-activate (as a .socket unit
// would) hands a named listening socket to `switchyard register`, which
// registers it; the service then serves it.
func TestRegisterFromSocketActivation(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "activated", "tcp", "10.2.0.0/24", "8000-8999")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// As systemd does for a register unit, `switchyard register` runs with
	// LISTEN_PID set to its own pid (sh's $$ survives exec); then the
	// service takes over the same socket.
	script := fmt.Sprintf(`sh -c 'LISTEN_PID=$$ exec %s --control %s register activated' && SWITCHYARD_E2E_SERVE_FD=3 SWITCHYARD_E2E_BODY=activated exec %s`, bin.switchyard, w.control, self)
	cmd := w.ns.Command("systemd-socket-activate", "-l", "127.0.0.1:18080", "--fdname=activated", "sh", "-c", script)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(stderr)
	for lines.Scan() && !strings.Contains(lines.Text(), "Listening on") {
	}
	go func() {
		for lines.Scan() {
			t.Log("systemd-socket-activate:", lines.Text())
		}
	}()
	// The first connection starts the unit, as with systemd; its answer
	// proves the registration went through before the service started.
	w.expectCurl("127.0.0.1", 18080, "activated")
	for _, a := range []string{"10.2.0.1", "10.2.0.99"} {
		for _, port := range []int{8000, 8123, 8999} {
			w.expectCurl(a, port, "activated")
		}
	}
	// Status names the registered socket by its address.
	if st := w.mustCLI("status", "activated"); !strings.Contains(st, "tcp ipv4 127.0.0.1:18080") {
		t.Errorf("status does not show the socket's address:\n%s", st)
	}
}

// register-pid takes a listening socket out of a running process (socat)
// and registers it.
func TestRegisterPID(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "legacy", "tcp", "10.3.0.0/24", "*")
	// The service answers each connection with a line and closes it. The
	// client sends nothing: a request the service never read would make
	// its close a reset, which may overtake the answer.
	cmd := w.ns.Command("socat", "TCP4-LISTEN:19090,bind=127.0.0.1,reuseaddr,fork", "SYSTEM:echo legacy")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	w.waitListening("127.0.0.1:19090")

	out := w.mustCLI("register-pid", fmt.Sprint(cmd.Process.Pid), "legacy", "tcp", "127.0.0.1:19090")
	if !strings.Contains(out, "legacy") {
		t.Errorf("register-pid printed %q", out)
	}
	for _, hp := range []string{"10.3.0.1:80", "10.3.0.200:9999"} {
		out, err := w.run("socat", "-u", "-T", "5", "TCP4:"+hp, "STDOUT")
		if err != nil || out != "legacy\n" {
			t.Errorf("socat from %s: %q %v", hp, out, err)
		}
	}
	// A wrong address is refused, naming what the process has.
	r := w.cli("register-pid", fmt.Sprint(cmd.Process.Pid), "legacy", "tcp", "127.0.0.1:1")
	if r.code == 0 || !strings.Contains(r.stderr, "127.0.0.1:19090") {
		t.Errorf("register-pid with a wrong address: exit %d, %q", r.code, r.stderr)
	}
}

// waitListening polls until something accepts connections at addr in the
// namespace: the readiness check for programs that give no signal.
func (w *world) waitListening(addr string) {
	w.t.Helper()
	testenv.WaitFor(w.t, 10*time.Second, "something listens on "+addr, func() (bool, string) {
		c, err := w.ns.DialTCP(addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

func (w *world) runInput(input, name string, args ...string) (string, error) {
	w.t.Helper()
	cmd := w.ns.Command(name, args...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.Output()
	return string(out), err
}

// Authorization: root may do anything; another uid only registers sockets
// for labels granted to it, and changes no bindings. Refusals are logged
// and counted.
func TestAuthorization(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, `version: 1
labels:
  granted:
    grants: {uids: [4242]}
`)
	w := newWorld(t, "--config", cfg, "--metrics-addr", "127.0.0.1:0")
	w.mustCLI("bind", "granted", "tcp", "10.4.0.0/24", "*")
	w.mustCLI("bind", "other", "tcp", "10.5.0.0/24", "*")
	user := &syscall.Credential{Uid: 4242, Gid: 4242}
	stranger := &syscall.Credential{Uid: 4343, Gid: 4343}

	r := w.cliAs(user, nil, "bind", "granted", "tcp", "10.6.0.0/24", "*")
	if r.code == 0 || !strings.Contains(r.stderr, "root") {
		t.Errorf("non-root bind: exit %d, %q", r.code, r.stderr)
	}
	r = w.cliAs(user, nil, "unbind", "granted", "tcp", "10.4.0.0/24", "*")
	if r.code == 0 {
		t.Errorf("non-root unbind succeeded")
	}

	ln := w.ns.ListenTCP(t, "127.0.0.1:0")
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r = w.cliAs(user, []*os.File{f}, "register", "--fd", "3", "other")
	if r.code == 0 || !strings.Contains(r.stderr, "grant") {
		t.Errorf("uid 4242 registering label other: exit %d, %q", r.code, r.stderr)
	}
	r = w.cliAs(stranger, []*os.File{f}, "register", "--fd", "3", "granted")
	if r.code == 0 {
		t.Errorf("uid 4343 registered label granted")
	}
	r = w.cliAs(user, []*os.File{f}, "register", "--fd", "3", "granted")
	if r.code != 0 {
		t.Fatalf("uid 4242 registering its own label: exit %d, %s", r.code, r.stderr)
	}
	f.Close()
	restoreNonblock(ln)
	httpService(t, "granted", ln)
	w.expectCurl("10.4.0.9", 1234, "granted")
	if _, err := w.run("curl", "-sS", "--max-time", "3", "http://10.5.0.9:1234/"); err == nil {
		t.Errorf("label other got a socket")
	}
	bs := w.mustCLI("bindings")
	if strings.Contains(bs, "10.6.0.0/24") || !strings.Contains(bs, "10.4.0.0/24") {
		t.Errorf("bindings after refused changes:\n%s", bs)
	}

	log := w.d.stderr.String()
	if n := strings.Count(log, "refused request"); n < 4 {
		t.Errorf("%d refusals logged, want at least 4:\n%s", n, log)
	}
	m := w.metrics()
	for _, want := range []string{"switchyard_registrations_refused_total 2", "switchyard_changes_refused_total 2"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A SIGKILLed daemon leaves traffic flowing; a new one adopts the state.
func TestDaemonKillKeepsTraffic(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mustCLI("bind", "web", "tcp", "10.7.0.0/24", "*")
	httpService(t, "web", w.registerTCP("web", "tcp4", "127.0.0.1:0"))
	w.expectCurl("10.7.0.1", 80, "web")
	before := w.mustCLI("bindings", "-o", "json")

	w.d.stop(t, syscall.SIGKILL)
	w.expectCurl("10.7.0.2", 81, "web")

	w.d = w.startDaemon()
	if after := w.mustCLI("bindings", "-o", "json"); after != before {
		t.Errorf("bindings after restart:\n%s\nwant\n%s", after, before)
	}
	w.expectCurl("10.7.0.3", 82, "web")
	if st := w.mustCLI("status", "web"); !strings.Contains(st, "web") {
		t.Errorf("status after restart: %s", st)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp("", "switchyard-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	f.WriteString(content)
	f.Close()
	os.Chmod(f.Name(), 0o644)
	return f.Name()
}

// restoreNonblock undoes what os/exec did to a listener passed in
// ExtraFiles: it calls Fd, which puts the shared socket in blocking mode.
func restoreNonblock(ln *net.TCPListener) {
	rc, _ := ln.SyscallConn()
	rc.Control(func(fd uintptr) { syscall.SetNonblock(int(fd), true) })
}
