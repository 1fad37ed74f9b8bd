package cli

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"--control", "/nowhere", "-h"}} {
		r := runMain(t, nil, args...)
		wantOK(t, r, "Usage: switchyard [--netns PATH] [--control PATH] COMMAND", "--netns PATH", "--control PATH")
		for _, c := range commands {
			if c.hidden {
				if strings.Contains(r.stdout, "  "+c.name+" ") {
					t.Errorf("%v: hidden command %s is listed", args, c.name)
				}
				continue
			}
			if !strings.Contains(r.stdout, "  "+c.name+" ") {
				t.Errorf("%v: command %s is not listed:\n%s", args, c.name, r.stdout)
			}
		}
	}
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "-h"}, {c.name, "--help"}, {"help", c.name}, {c.name, "x", "y", "-h"}} {
			r := runMain(t, nil, args...)
			wantOK(t, r, "Usage: switchyard [--netns PATH] [--control PATH] "+c.name+" "+c.args)
		}
	}
	r := runMain(t, nil, "apply", "-h")
	wantOK(t, r, "-f, --file FILE", "--dry-run")

	r = runMain(t, nil)
	wantFail(t, r, ExitUsage, "switchyard: no command given: run 'switchyard help' for the list of commands\n")
	oneLine(t, r)
	r = runMain(t, nil, "help", "frobnicate")
	wantFail(t, r, ExitUsage, `help: unknown command "frobnicate"`)
}

// TestUsageErrors checks that wrong command lines fail with exit status 2,
// one line that says what to do, and no request to the daemon.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	d := newFakeDaemon(t, nil)
	long := strings.Repeat("a", 256)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate": run 'switchyard help' for the list of commands`}},
		{[]string{"--frob", "bindings"}, []string{"unknown flag --frob: the flags before the command are --netns PATH, --control PATH and --timeout DURATION"}},
		{[]string{"--netns"}, []string{"flag --netns needs a value (PATH)"}},
		{[]string{"bindings", "--frob"}, []string{"bindings: unknown flag --frob: run 'switchyard bindings -h' for help"}},
		{[]string{"bindings", "-o"}, []string{"bindings: flag -o needs a value (FORMAT)"}},
		{[]string{"bindings", "-o", "xml"}, []string{`bindings: output format "xml": use -o table, -o json or -o yaml`}},
		{[]string{"status", "-o", "yaml"}, []string{`status: output format "yaml": use -o table or -o json`}},
		{[]string{"bindings", "a", "b"}, []string{"bindings: expected [LABEL] [-o json|yaml], got 2 arguments"}},
		{[]string{"bindings", "web", "-o", "yaml"}, []string{"bindings: -o yaml exports the whole config, which apply would make the only one in force; leave out LABEL"}},
		{[]string{"bindings", long}, []string{"bindings: label", "256 bytes is longer than 255"}},
		{[]string{"bind"}, []string{"bind: expected LABEL tcp|udp PREFIX PORTS, got no arguments: run 'switchyard bind -h' for help"}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/8"}, []string{"bind: expected LABEL tcp|udp PREFIX PORTS, got 3 arguments"}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/8", "80", "81"}, []string{"got 5 arguments"}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/8", "70000"}, []string{`bind: ports "70000": invalid: port 70000 is out of range 1-65535 (use '*' for every port)`}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/8", "0"}, []string{"port 0 is out of range 1-65535"}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/8", "9000-8000"}, []string{"range starts after it ends; write it as 8000-9000"}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/8", "http"}, []string{"a port is a number from 1 to 65535"}},
		{[]string{"bind", "web", "tcp", "10.0.0.300/8", "80"}, []string{`bind: prefix "10.0.0.300/8": invalid: expected an address or CIDR prefix`}},
		{[]string{"bind", "web", "tcp", "10.0.0.0/33", "80"}, []string{`prefix "10.0.0.0/33"`}},
		{[]string{"bind", "web", "tcp", "::ffff:10.0.0.0/104", "80"}, []string{"IPv4-mapped IPv6 prefixes never match"}},
		{[]string{"bind", "web", "sctp", "10.0.0.0/8", "80"}, []string{`bind: protocol "sctp": invalid: use tcp or udp`}},
		{[]string{"bind", long, "tcp", "10.0.0.0/8", "80"}, []string{"bind: label", "256 bytes is longer than 255"}},
		{[]string{"bind", "we b", "tcp", "10.0.0.0/8", "80"}, []string{"is not allowed; use letters, digits and . _ - @"}},
		{[]string{"bind", "", "tcp", "10.0.0.0/8", "80"}, []string{"label: invalid: must not be empty"}},
		{[]string{"unbind", "web", "tcp"}, []string{"unbind: expected LABEL tcp|udp PREFIX PORTS, got 2 arguments"}},
		{[]string{"unbind", "web", "tcp", "10.0.0.0/8", "65536"}, []string{"out of range"}},
		{[]string{"unregister", "web", "tcp"}, []string{"unregister: expected LABEL tcp|udp ipv4|ipv6, got 2 arguments"}},
		{[]string{"unregister", "web", "tcp", "inet"}, []string{`family "inet": invalid: use ipv4 or ipv6`}},
		{[]string{"unregister", "web", "icmp", "ipv4"}, []string{"use tcp or udp"}},
		{[]string{"unregister", long, "tcp", "ipv4"}, []string{"longer than 255"}},
		{[]string{"status", "a", "b"}, []string{"status: expected [LABEL] [-o json], got 2 arguments"}},
		{[]string{"status", "-o=xml"}, []string{"output format"}},
		{[]string{"policy", "web"}, []string{"policy: expected LABEL none|bypass|splice [UPSTREAM], got 1 argument"}},
		{[]string{"policy", "web", "fast"}, []string{`policy "fast": invalid: use none, bypass or splice`}},
		{[]string{"policy", "web", "splice"}, []string{"needs an upstream; give host:port, or host:same"}},
		{[]string{"policy", "web", "splice", "10.0.0.5"}, []string{`upstream "10.0.0.5"`}},
		{[]string{"policy", "web", "bypass", "10.0.0.5:80"}, []string{"takes no upstream; only splice does"}},
		{[]string{"policy", "web", "splice", "bad!host:80"}, []string{`upstream "bad!host:80": invalid: "bad!host" is neither an IP address nor a DNS name`}},
		{[]string{"policy", "web", "splice", "a..b:80"}, []string{`upstream "a..b:80": invalid`}},
		{[]string{"policy", "web", "splice", "--", "-x:80"}, []string{`upstream "-x:80": invalid`}},
		{[]string{"policy", "web", "splice", "10.0.0.300:80"}, []string{`upstream "10.0.0.300:80": invalid`}},
		{[]string{"policy", "web", "bypass", "--engine", "kernel"}, []string{"engine kernel: policy bypass has no engine; only splice does"}},
		{[]string{"policy", "web", "splice", "h:1", "--engine", "ebpf"}, []string{`engine "ebpf": invalid: use kernel`}},
		{[]string{"apply"}, []string{"apply: no config file given: pass -f FILE"}},
		{[]string{"apply", "-f", "x.yaml", "extra"}, []string{"apply: expected -f FILE [--dry-run], got 1 argument"}},
		{[]string{"apply", "--dry-run=yes", "-f", "x"}, []string{"flag --dry-run=yes takes no value"}},
		{[]string{"register", "a", "b"}, []string{"register: expected [--fd N]... [LABEL], got 2 arguments"}},
		{[]string{"register", "--fd", "3"}, []string{"register: --fd needs LABEL"}},
		{[]string{"register", "--fd", "three", "web"}, []string{`register: --fd "three": give a file descriptor number`}},
		{[]string{"register", "--fd", "-1", "web"}, []string{`--fd "-1"`}},
		{[]string{"register", "--fd", "3", "--fd=3", "web"}, []string{"register: --fd 3 given twice"}},
		{[]string{"register", long}, []string{"longer than 255"}},
		{[]string{"register-pid", "1", "web", "tcp"}, []string{"register-pid: expected PID LABEL tcp|udp ADDR:PORT, got 3 arguments"}},
		{[]string{"register-pid", "0", "web", "tcp", "127.0.0.1:80"}, []string{`register-pid: PID "0": give the process id`}},
		{[]string{"register-pid", "self", "web", "tcp", "127.0.0.1:80"}, []string{`PID "self"`}},
		{[]string{"register-pid", "1", "web", "tcp", "127.0.0.1"}, []string{`register-pid: ADDR:PORT "127.0.0.1": give the address and port`}},
		{[]string{"register-pid", "1", "web", "tcp", "127.0.0.1:0"}, []string{`ADDR:PORT "127.0.0.1:0"`}},
		{[]string{"register-pid", "1", "web", "tcp", "::1:80"}, []string{`ADDR:PORT "::1:80"`}},
		{[]string{"register-pid", "1", "web", "raw", "127.0.0.1:80"}, []string{"use tcp or udp"}},
		{[]string{"register-pid", "1", long, "tcp", "127.0.0.1:80"}, []string{"longer than 255"}},
		{[]string{"version", "now"}, []string{"version: expected [-o json], got 1 argument"}},
		{[]string{"demo", "now"}, []string{"demo: expected no arguments, got 1 argument"}},
	} {
		args := append([]string{"--control", d.path}, tc.args...)
		r := runMain(t, nil, args...)
		wantFail(t, r, ExitUsage, tc.want...)
		oneLine(t, r)
	}
	if reqs := d.requests(); len(reqs) != 0 {
		t.Errorf("usage errors sent %d requests to the daemon: %+v", len(reqs), reqs)
	}
}

func TestBindUnbind(t *testing.T) {
	t.Parallel()
	d := newFakeDaemon(t, nil)
	r := runMain(t, nil, "--control", d.path, "bind", "web", "tcp", "10.0.0.1/24", "80")
	wantOK(t, r, "bound web tcp 10.0.0.0/24 80\n")
	got := d.only().body.(*control.BindRequest).Binding
	if want := mustBinding("web", "tcp", "10.0.0.0/24", "80"); got != want {
		t.Errorf("daemon got binding %v, want %v", got, want)
	}

	// Global flags after the command; '*' and a range.
	d = newFakeDaemon(t, nil)
	r = runMain(t, nil, "unbind", "dns", "udp", "2001:db8::/64", "*", "--control", d.path)
	wantOK(t, r, "unbound dns udp 2001:db8::/64 *\n")
	if got, want := d.only().body.(*control.UnbindRequest).Binding, mustBinding("dns", "udp", "2001:db8::/64", "*"); got != want {
		t.Errorf("daemon got %v, want %v", got, want)
	}
	d = newFakeDaemon(t, nil)
	wantOK(t, runMain(t, nil, "bind", "--control="+d.path, "web", "udp", "192.0.2.7", "8000-8999"), "bound web udp 192.0.2.7/32 8000-8999")
	// "--" lets a label start with a dash.
	wantOK(t, runMain(t, nil, "bind", "--control", d.path, "--", "-web", "tcp", "192.0.2.7", "1"), "bound -web tcp 192.0.2.7/32 1")
}

func TestDaemonErrors(t *testing.T) {
	t.Parallel()
	perm := control.Errorf(control.CodePermission, "uid 1000 may not change bindings")
	for _, tc := range []struct {
		err  error
		args []string
		want []string
	}{
		{perm, []string{"bind", "web", "tcp", "10.0.0.0/8", "80"},
			[]string{"bind: switchyardd refused: uid 1000 may not change bindings: changing bindings and label settings needs root"}},
		{perm, []string{"unbind", "web", "tcp", "10.0.0.0/8", "80"}, []string{"needs root"}},
		{perm, []string{"policy", "web", "none"}, []string{"needs root"}},
		{perm, []string{"unregister", "web", "tcp", "ipv6"},
			[]string{`registering sockets for label "web" needs root or a grant for it in the daemon's config (labels: web: grants:`}},
		{control.Errorf(control.CodeConflict, "binding web tcp 10.0.0.0/8 8000-8999 overlaps binding api tcp 10.0.0.0/8 8500-9500"),
			[]string{"bind", "web", "tcp", "10.0.0.0/8", "8000-8999"},
			[]string{"overlaps binding api tcp 10.0.0.0/8 8500-9500: run 'switchyard bindings' to see what is bound"}},
		{control.Errorf(control.CodeNotFound, "no binding web tcp 10.0.0.0/8 80"), []string{"unbind", "web", "tcp", "10.0.0.0/8", "80"},
			[]string{"unbind: no binding web tcp 10.0.0.0/8 80: run 'switchyard bindings' to see what is bound; the label must match too"}},
		{control.Errorf(control.CodeNotFound, "no socket"), []string{"unregister", "web", "tcp", "ipv4"},
			[]string{"run 'switchyard status' to see the registered sockets"}},
		{control.Errorf(control.CodeNotFound, `label "x": no such label`), []string{"status", "x"}, []string{`status: label "x": no such label: run 'switchyard status'`}},
		{control.Errorf(control.CodeInternal, "map update: no space"), []string{"bindings"},
			[]string{"bindings: switchyardd failed: map update: no space: its log has the details"}},
		{control.Errorf(control.CodeUnsupported, "protocol version 1 is not spoken"), []string{"bindings"},
			[]string{"upgrade the older one ('switchyard version' shows both)"}},
		{control.Errorf(control.CodeInvalid, "upstream: unresolvable"), []string{"policy", "web", "splice", "nowhere.invalid:80"},
			[]string{"policy: switchyardd refused: upstream: unresolvable"}},
	} {
		d := newFakeDaemon(t, errorHandler(tc.err))
		r := runMain(t, nil, append([]string{"--control", d.path}, tc.args...)...)
		wantFail(t, r, ExitFailure, tc.want...)
		oneLine(t, r)
	}
}

func TestDaemonNotRunning(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "control.sock")
	r := runMain(t, nil, "--control", missing, "bindings")
	wantFail(t, r, ExitFailure, "bindings: switchyardd is not running on that control socket (no control socket at "+missing+
		"): start it with 'switchyardd --control "+missing+"' (or 'systemctl start switchyardd'), or correct --control")
	oneLine(t, r)

	// A socket file nobody listens on any more.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	r = runMain(t, nil, "bind", "web", "tcp", "10.0.0.0/8", "80", "--control", stale)
	wantFail(t, r, ExitFailure, "nothing listens on "+stale)

	// A plain file.
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o600)
	r = runMain(t, nil, "--control", plain, "status")
	wantFail(t, r, ExitFailure, "status:", plain)

	// --netns: the default socket of that namespace, and how to start its daemon.
	r = runMain(t, nil, "--netns", plain, "status")
	wantFail(t, r, ExitFailure, "status: --netns "+plain, "give a network namespace file such as /run/netns/NAME")
	oneLine(t, r)
}

func TestDaemonNotRunningNetNS(t *testing.T) {
	t.Parallel()
	ns := testenv.NewNetNS(t)
	ino, err := control.NetNSInode(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	r := runMain(t, nil, "--netns", ns.Path(), "bindings")
	wantFail(t, r, ExitFailure,
		"bindings: switchyardd is not running for this network namespace (no control socket at "+control.DefaultPath(ino)+
			"): start it with 'switchyardd --netns "+ns.Path()+"' (or 'systemctl start switchyardd')")
	oneLine(t, r)
}

func TestBindings(t *testing.T) {
	t.Parallel()
	d := newFakeDaemon(t, nil)
	r := runMain(t, nil, "--control", d.path, "bindings")
	want := "" +
		"LABEL  PROTOCOL  PREFIX           PORTS\n" +
		"dns    udp       192.0.2.0/24     53\n" +
		"web    tcp       2001:db8::/64    *\n" +
		"web    tcp       198.51.100.7/32  8000-8999\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("got:\n%s\nwant stdout:\n%s", r, want)
	}

	r = runMain(t, nil, "--control", d.path, "bindings", "-o", "json")
	wantJSON := `{
  "bindings": [
    {
      "label": "dns",
      "protocol": "udp",
      "prefix": "192.0.2.0/24",
      "ports": "53"
    },
    {
      "label": "web",
      "protocol": "tcp",
      "prefix": "2001:db8::/64",
      "ports": "*"
    },
    {
      "label": "web",
      "protocol": "tcp",
      "prefix": "198.51.100.7/32",
      "ports": "8000-8999"
    }
  ]
}
`
	if r.code != 0 || r.stdout != wantJSON {
		t.Errorf("got:\n%s\nwant stdout:\n%s", r, wantJSON)
	}

	// A label filter goes to the daemon; JSON parses back into bindings.
	d = newFakeDaemon(t, nil)
	r = runMain(t, nil, "bindings", "web", "--output=json", "--control", d.path)
	if got := d.only().body.(*control.ListBindingsRequest).Label; got != "web" {
		t.Errorf("daemon got label filter %q, want web", got)
	}
	var out struct{ Bindings []binding.Binding }
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v:\n%s", err, r)
	}
	if !reflect.DeepEqual(out.Bindings, testBindings[1:]) {
		t.Errorf("JSON bindings %v, want %v", out.Bindings, testBindings[1:])
	}

	// Nothing bound.
	empty := func(*control.Request, []*os.File) (control.ResponseBody, error) {
		return &control.ListBindingsResponse{}, nil
	}
	d = newFakeDaemon(t, empty)
	wantOK(t, runMain(t, nil, "--control", d.path, "bindings"), "no bindings\n")
	wantOK(t, runMain(t, nil, "--control", d.path, "bindings", "web"), "no bindings for label web\n")
	r = runMain(t, nil, "--control", d.path, "bindings", "-o", "json")
	if r.stdout != "{\n  \"bindings\": []\n}\n" {
		t.Errorf("empty JSON list:\n%s", r)
	}
}

// A daemon of a release before control.StatusVersion refuses the
// version: status asks again in the version every daemon reads. A label
// spliced in the kernel says how much of its bytes the kernel moved.
func TestStatusOlderDaemon(t *testing.T) {
	t.Parallel()
	st := control.StatusResponse{Version: "9.9.8", NetNS: 1, Labels: []control.LabelStatus{{
		Label: "px", Bindings: 1, PolicyBytes: 40, PolicyKernelBytes: 30,
		Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "10.0.0.5", Port: 80}, Engine: settings.Kernel},
	}}}
	for _, older := range []bool{false, true} {
		d := newFakeDaemon(t, func(req *control.Request, files []*os.File) (control.ResponseBody, error) {
			switch req.Body.(type) {
			case *control.VersionRequest:
				if older {
					return &control.VersionResponse{Version: "9.9.8", Protocols: []uint16{1, 2, 3}}, nil
				}
				return &control.VersionResponse{Version: "9.9.8", Protocols: []uint16{1, 2, 3, 4}}, nil
			case *control.StatusRequest:
				if older && req.Version >= control.KernelBytesVersion {
					return nil, control.Errorf(control.CodeUnsupported, "control protocol version %d is not supported", req.Version)
				}
				return &st, nil
			}
			return nil, errors.ErrUnsupported
		})
		r := runMain(t, nil, "--control", d.path, "status")
		wantOK(t, r, "px: splice to 10.0.0.5:80 (engine kernel); the kernel moved 30 of its 40 bytes\n")
		var versions []uint16
		for _, q := range d.requests() {
			if _, ok := q.body.(*control.StatusRequest); ok {
				versions = append(versions, q.version)
			}
		}
		want := []uint16{control.StatusVersion}
		if older {
			want = append(want, control.ProtocolVersion)
		}
		if !slices.Equal(versions, want) {
			t.Errorf("older daemon %v: status asked in versions %v, want %v", older, versions, want)
		}
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	d := newFakeDaemon(t, nil)
	r := runMain(t, nil, "--control", d.path, "status")
	want := "" +
		"switchyardd 9.9.9, network namespace 4026531840\n" +
		"LABEL  POLICY  BINDINGS  LOOKUPS  HITS  MISSING  BAD  SOCKETS\n" +
		"dns    none    1         0        10    2        0    udp ipv4 192.0.2.1:53\n" +
		"                                                      udp ipv6 [::]:53\n" +
		"web    splice  2         0        0     0        0    none (refused)\n" +
		"\n" +
		"web: splice to 10.0.0.5:same\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("got:\n%s\nwant stdout:\n%s", r, want)
	}

	r = runMain(t, nil, "--control", d.path, "status", "-o", "json")
	var out map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v:\n%s", err, r)
	}
	wantOut := map[string]any{
		"version":        "9.9.9",
		"daemon_running": true,
		"netns":          float64(4026531840),
		"labels": []any{
			map[string]any{"label": "dns", "policy": "none", "upstream": "", "policy_state": "", "bindings": float64(1),
				"lookups": float64(0), "hits": float64(10), "missing": float64(2), "bad_socket": float64(0),
				"policy_bytes": float64(0), "policy_kernel_bytes": float64(0), "policy_connections": float64(0),
				"sockets": []any{
					map[string]any{"protocol": "udp", "family": "ipv4", "local": "192.0.2.1:53", "cookie": float64(4097)},
					map[string]any{"protocol": "udp", "family": "ipv6", "local": "[::]:53", "cookie": float64(4098)},
				}},
			map[string]any{"label": "web", "policy": "splice", "upstream": "10.0.0.5:same", "policy_state": "", "bindings": float64(2),
				"lookups": float64(0), "hits": float64(0), "missing": float64(0), "bad_socket": float64(0),
				"policy_bytes": float64(0), "policy_kernel_bytes": float64(0), "policy_connections": float64(0),
				"sockets": []any{}},
		},
	}
	if !reflect.DeepEqual(out, wantOut) {
		t.Errorf("status JSON:\n%s\nwant %v", r.stdout, wantOut)
	}

	// Asked in the version that carries the policies' kernel bytes.
	if v := d.requests()[0].version; v != control.StatusVersion {
		t.Errorf("status asked in protocol version %d, want %d", v, control.StatusVersion)
	}

	d = newFakeDaemon(t, nil)
	r = runMain(t, nil, "--control", d.path, "status", "web")
	wantOK(t, r, "web    splice  2", "web: splice to 10.0.0.5:same\n")
	if strings.Contains(r.stdout, "dns") {
		t.Errorf("status web shows dns:\n%s", r)
	}
	if got := d.only().body.(*control.StatusRequest).Label; got != "web" {
		t.Errorf("daemon got label %q, want web", got)
	}

	// The policy's explanation goes under the table, wrapped: every line
	// fits 100 columns with everyday counters, labels and upstreams.
	explained := func(*control.Request, []*os.File) (control.ResponseBody, error) {
		return &control.StatusResponse{Version: "9.9.9", NetNS: 4026531840, Labels: []control.LabelStatus{{
			Label: "dns-public", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "2001:db8::53"}}, Bindings: 1048576,
			Lookups: 123456789012, Hits: 123456789000, Missing: 12, BadSocket: 3,
			Sockets:     []control.SocketStatus{{Protocol: binding.TCP, Family: binding.IPv6, Local: netip.MustParseAddrPort("[2001:db8::53]:53"), Cookie: 1}},
			PolicyState: "splice to [2001:db8::53]:same (in userspace with splice(2), worker pid 123456: the in-kernel engine is off because the kernel lacks BPF_F_INGRESS for SK_SKB on this build, so bytes take a pipe)",
		}}}, nil
	}
	d = newFakeDaemon(t, explained)
	r = runMain(t, nil, "--control", d.path, "status")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) < 5 {
		t.Fatalf("got:\n%s", r)
	}
	for _, l := range lines {
		if len(l) > 100 {
			t.Errorf("line of %d columns:\n%s\nin:\n%s", len(l), l, r.stdout)
		}
	}
	if lines[3] != "" || !strings.HasPrefix(lines[4], "dns-public: splice to [2001:db8::53]:same (in userspace") || !strings.HasPrefix(lines[5], "    ") {
		t.Errorf("explanation not on its own lines under the table:\n%s", r.stdout)
	}
	if strings.Contains(lines[2], "worker pid") {
		t.Errorf("explanation in the table row:\n%s", r.stdout)
	}

	noLabels := func(*control.Request, []*os.File) (control.ResponseBody, error) {
		return &control.StatusResponse{Version: "9.9.9", NetNS: 1}, nil
	}
	d = newFakeDaemon(t, noLabels)
	wantOK(t, runMain(t, nil, "--control", d.path, "status"), "no labels: bind one with 'switchyard bind'")
	r = runMain(t, nil, "--control", d.path, "status", "-o", "json")
	wantOK(t, r, `"labels": []`)
}

func TestUnregister(t *testing.T) {
	t.Parallel()
	d := newFakeDaemon(t, nil)
	wantOK(t, runMain(t, nil, "--control", d.path, "unregister", "web", "udp", "ipv6"), "unregistered web udp ipv6\n")
	got := *d.only().body.(*control.UnregisterRequest)
	if want := (control.UnregisterRequest{Label: "web", Protocol: binding.UDP, Family: binding.IPv6}); got != want {
		t.Errorf("daemon got %+v, want %+v", got, want)
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want control.SetPolicyRequest
		out  string
	}{
		{[]string{"web", "splice", "10.0.0.5:same"}, control.SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "10.0.0.5"}}}, "policy of web: splice to 10.0.0.5:same\n"},
		{[]string{"web", "splice", "backend.example:443", "--engine", "kernel"}, control.SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "backend.example", Port: 443}, Engine: settings.Kernel}}, "policy of web: splice to backend.example:443 (engine kernel)\n"},
		{[]string{"web", "bypass"}, control.SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.Bypass}}, "policy of web: bypass\n"},
		{[]string{"web", "none"}, control.SetPolicyRequest{Label: "web", Policy: settings.Policy{Kind: settings.None}}, "policy of web: none\n"},
	} {
		d := newFakeDaemon(t, nil)
		r := runMain(t, nil, append([]string{"--control", d.path, "policy"}, tc.args...)...)
		if r.code != 0 || r.stdout != tc.out {
			t.Errorf("policy %v: got\n%s\nwant stdout %q", tc.args, r, tc.out)
		}
		if got := *d.only().body.(*control.SetPolicyRequest); got != tc.want {
			t.Errorf("policy %v: daemon got %+v, want %+v", tc.args, got, tc.want)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	d := newFakeDaemon(t, nil)
	r := runMain(t, nil, "--control", d.path, "version")
	if want := "switchyard " + Version + " (control protocol 1, 2, 3, 4)\nswitchyardd 9.9.9 (control protocol 1)\n"; r.code != 0 || r.stdout != want {
		t.Errorf("got\n%s\nwant stdout %q", r, want)
	}
	wantOK(t, runMain(t, nil, "--control", d.path, "--version"), "switchyardd 9.9.9")

	r = runMain(t, nil, "--control", d.path, "version", "-o", "json")
	var out struct {
		Client, Daemon *versionJSON
		DaemonError    string `json:"daemon_error"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v:\n%s", err, r)
	}
	if out.Client == nil || out.Client.Version != Version || out.Daemon == nil || out.Daemon.Version != "9.9.9" || out.DaemonError != "" {
		t.Errorf("version JSON:\n%s", r.stdout)
	}

	// No daemon: still a success, saying why.
	missing := filepath.Join(t.TempDir(), "control.sock")
	r = runMain(t, nil, "--control", missing, "version")
	wantOK(t, r, "switchyard "+Version+" (control protocol 1, 2, 3, 4)\nswitchyardd: not reachable: switchyardd is not running on that control socket")
	r = runMain(t, nil, "--control", missing, "version", "-o", "json")
	wantOK(t, r, `"daemon": null`, `"daemon_error": "switchyardd is not running on that control socket`)
}

func TestApply(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "switchyard.yaml")
	os.WriteFile(file, []byte(`version: 1
bindings:
  - {label: dns-public, protocol: udp, prefix: 192.0.2.0/24, ports: "53"}
  - {label: web, protocol: tcp, prefix: "2001:db8::/64", ports: "*"}
labels:
  dns-public:
    grants: {uids: [953], gids: [54], users: [knot], groups: [dns]}
  web:
    policy: splice
    upstream: 10.0.0.5:same
daemon:
  metrics_addr: 127.0.0.1:9100
`), 0o600)

	oldWeb := &settings.Named{Name: "web"}
	newWeb := &settings.Named{Name: "web", Label: settings.Label{Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "10.0.0.5"}}}}
	diff := control.Diff{
		AddBindings:    []binding.Binding{mustBinding("dns-public", "udp", "192.0.2.0/24", "53"), mustBinding("web", "tcp", "2001:db8::/64", "*")},
		RemoveBindings: []binding.Binding{mustBinding("dns", "udp", "192.0.2.0/24", "53")},
		Labels:         []control.LabelChange{{Label: "web", Old: oldWeb, New: newWeb}},
	}
	withDiff := func(req *control.Request, _ []*os.File) (control.ResponseBody, error) {
		return &control.ApplyResponse{Applied: !req.Body.(*control.ApplyRequest).DryRun, Diff: diff}, nil
	}
	d := newFakeDaemon(t, withDiff)
	r := runMain(t, nil, "--control", d.path, "apply", "-f", file)
	wantStdout := "" +
		"- dns udp 192.0.2.0/24 53\n" +
		"+ dns-public udp 192.0.2.0/24 53\n" +
		"+ web tcp 2001:db8::/64 *\n" +
		"- label web policy none\n" +
		"+ label web policy splice upstream 10.0.0.5:same\n"
	if r.code != 0 || r.stdout != wantStdout {
		t.Errorf("got\n%s\nwant stdout\n%s", r, wantStdout)
	}
	req := d.only().body.(*control.ApplyRequest)
	wantCfg := control.Config{
		Bindings: diff.AddBindings,
		Labels: []settings.Named{
			{Name: "dns-public", Label: settings.Label{Grants: settings.Grants{UIDs: []uint32{953}, GIDs: []uint32{54}, Users: []string{"knot"}, Groups: []string{"dns"}}}},
			*newWeb,
		},
	}
	if req.DryRun || !reflect.DeepEqual(req.Config, wantCfg) {
		t.Errorf("daemon got %+v, want %+v, not a dry run", *req, wantCfg)
	}

	// Dry run, reading stdin.
	d = newFakeDaemon(t, withDiff)
	content, _ := os.ReadFile(file)
	r = runMain(t, &testEnv{stdin: string(content)}, "--control", d.path, "apply", "--dry-run", "-f", "-")
	wantOK(t, r, wantStdout+"dry run: nothing changed; run without --dry-run to apply\n")
	if !d.only().body.(*control.ApplyRequest).DryRun {
		t.Error("--dry-run did not reach the daemon")
	}

	// Nothing to change; an empty file is an empty config.
	d = newFakeDaemon(t, nil)
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, []byte("version: 1\n"), 0o600)
	r = runMain(t, nil, "--control", d.path, "apply", "--file", empty)
	if r.code != 0 || r.stdout != "no changes\n" {
		t.Errorf("got\n%s\nwant no changes", r)
	}
	if got := d.only().body.(*control.ApplyRequest).Config; got.Bindings == nil || len(got.Bindings) != 0 || got.Labels != nil {
		t.Errorf("empty config sent as %+v", got)
	}

	// Problems in the file: exit 1, naming the file and line, nothing sent.
	d = newFakeDaemon(t, nil)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nbindings:\n  - {label: web, protocol: tcp, prefix: 10.0.0.0/8, ports: \"70000\"}\n"), 0o600)
	r = runMain(t, nil, "--control", d.path, "apply", "-f", bad)
	wantFail(t, r, ExitFailure, "apply: "+bad+": line 3: bindings[0]", "port 70000 is out of range", "fix the file and apply it again")
	oneLine(t, r)
	os.WriteFile(bad, []byte("version: 1\nbindings:\n  - {label: web, protocol: tcp, prefix: 10.0.0.0/8, ports: \"70000\"}\n  - {label: web, protocol: sctp, prefix: 10.0.0.0/8, ports: \"80\"}\n"), 0o600)
	r = runMain(t, nil, "--control", d.path, "apply", "-f", bad)
	wantFail(t, r, ExitFailure, "apply: "+bad+" has 2 problems; fix them and apply it again:\n  line 3: bindings[0]", "\n  line 4: bindings[1]")
	r = runMain(t, nil, "--control", d.path, "apply", "-f", filepath.Join(dir, "missing.yaml"))
	wantFail(t, r, ExitFailure, "apply: open "+filepath.Join(dir, "missing.yaml")+": no such file or directory: check the path given with -f")
	if reqs := d.requests(); len(reqs) != 0 {
		t.Errorf("bad files sent %d requests", len(reqs))
	}

	// The daemon refuses.
	d = newFakeDaemon(t, errorHandler(control.Errorf(control.CodeConflict, "binding a conflicts with binding b")))
	r = runMain(t, nil, "--control", d.path, "apply", "-f", file)
	wantFail(t, r, ExitFailure, "apply: binding a conflicts with binding b: run 'switchyard bindings'")
}
