package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

const example = `# switchyard config
version: 1
bindings:
  - {label: dns-public, protocol: udp, prefix: 192.0.2.0/24, ports: "53"}
  - {label: dns-public, protocol: tcp, prefix: 192.0.2.0/24, ports: 53}  # plain number
  - {label: web, protocol: tcp, prefix: "2001:db8::/64", ports: "*"}
  - label: web-alt
    protocol: tcp
    prefix: 198.51.100.7
    ports: 8000-8999
  - {label: web-alt, protocol: tcp, prefix: 198.51.100.7/32, ports: "8080"}   # nested in 8000-8999
labels:
  dns-public:
    grants: {uids: [953], gids: [], users: [knot], groups: [dns]}
    policy: none
    upstream: ""
  web:
    policy: splice
    upstream: 10.0.0.5:same
  web-alt:
    policy: bypass
  idle:
daemon:
  bypass_cgroup: /sys/fs/cgroup/unified
  control: /run/switchyard/control.sock
  bpffs: /sys/fs/bpf/switchyard
  metrics_addr: 127.0.0.1:9100
`

func mustBinding(t testing.TB, label, proto, prefix, ports string) binding.Binding {
	t.Helper()
	b, err := binding.Parse(label, proto, prefix, ports)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func exampleConfig(t testing.TB) *Config {
	return &Config{
		Version: 1,
		Bindings: []binding.Binding{
			mustBinding(t, "dns-public", "udp", "192.0.2.0/24", "53"),
			mustBinding(t, "dns-public", "tcp", "192.0.2.0/24", "53"),
			mustBinding(t, "web", "tcp", "2001:db8::/64", "*"),
			mustBinding(t, "web-alt", "tcp", "198.51.100.7", "8000-8999"),
			mustBinding(t, "web-alt", "tcp", "198.51.100.7", "8080"),
		},
		Labels: map[string]settings.Label{
			"dns-public": {Grants: settings.Grants{UIDs: []uint32{953}, Users: []string{"knot"}, Groups: []string{"dns"}}},
			"web":        {Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "10.0.0.5"}}},
			"web-alt":    {Policy: settings.Policy{Kind: settings.Bypass}},
			"idle":       {},
		},
		Daemon: Daemon{
			BypassCgroup: "/sys/fs/cgroup/unified",
			Control:      "/run/switchyard/control.sock",
			BPFFS:        "/sys/fs/bpf/switchyard",
			MetricsAddr:  "127.0.0.1:9100",
		},
	}
}

func TestParseExample(t *testing.T) {
	t.Parallel()
	got, err := Parse(strings.NewReader(example))
	if err != nil {
		t.Fatal(err)
	}
	if want := exampleConfig(t); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
	}
	if _, ok := scanBindings([]byte(example)); !ok {
		t.Error("the example does not take the fast path")
	}
}

// TestParseDocExample parses the example in doc.go, so that it stays valid.
func TestParseDocExample(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var yml strings.Builder
	in := false
	for line := range strings.SplitSeq(string(src), "\n") {
		body, isCode := strings.CutPrefix(line, "//\t")
		switch {
		case isCode && strings.HasPrefix(body, "# Comments"):
			in = true
		case in && !isCode && line != "//":
			in = false
		}
		if in && isCode {
			yml.WriteString(body + "\n")
		}
	}
	c, err := Parse(strings.NewReader(yml.String()))
	if err != nil {
		t.Fatalf("doc.go example:\n%s\n%v", yml.String(), err)
	}
	if len(c.Bindings) != 4 || len(c.Labels) != 2 || c.Daemon.MetricsAddr == "" {
		t.Errorf("doc.go example parsed to %+v", c)
	}
}

type errCase struct {
	name     string
	src      string
	sentinel error // besides ErrInvalid
	says     []string
}

func checkErr(t *testing.T, tc errCase, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error for:\n%s", tc.src)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %v does not match ErrInvalid", err)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Errorf("error %v is not an *Error", err)
	}
	if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
		t.Errorf("error %v does not match %v", err, tc.sentinel)
	}
	for _, s := range tc.says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

const (
	v  = "version: 1\n"
	bs = v + "bindings:\n"
)

// parseErrorCases are bad configs with what their error must say. They also
// seed FuzzParse.
var parseErrorCases = []errCase{
	{"empty", "", nil, []string{"empty", "version: 1"}},
	{"comments only", "# nothing\n", nil, []string{"empty"}},
	{"not a mapping", "- a\n", nil, []string{"line 1", "expected a mapping"}},
	{"missing version", "bindings: []\n", nil, []string{"line 1: version: missing", `"version: 1"`}},
	{"missing version fast", "bindings:\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", nil, []string{"version: missing"}},
	{"newer version", "version: 2\n", nil, []string{"line 1: version:", "newer", "upgrade switchyard"}},
	{"version zero", "version: 0\n", nil, []string{"not supported", "use version: 1"}},
	{"version string", "version: \"1\"\n", nil, []string{"version: expected a decimal number, got a string"}},
	{"unknown top field", v + "bindngs: []\n", ErrUnknownField, []string{"line 2", `"bindngs"`, "known fields are version, bindings, labels, daemon"}},
	{"repeated top field", v + "labels: {}\nlabels: {}\n", ErrDuplicate, []string{"line 3: labels", "already set at line 2"}},
	{"repeated version", v + "version: 1\n", ErrDuplicate, []string{"line 2: version"}},
	{"repeated bindings", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\nbindings: []\n", ErrDuplicate, []string{"line 4: bindings", "already set at line 2"}},
	{"bindings not a list", bs[:len(bs)-1] + " {a: b}\n", nil, []string{"line 2: bindings: expected a list, got a mapping"}},
	{"binding not a mapping", bs + "  - web tcp 10.0.0.0/8 80\n", nil, []string{"line 3: bindings[0]: expected a mapping"}},
	{"binding empty", bs + "  -\n", nil, []string{"line 3: bindings[0]: empty entry"}},
	{"binding unknown field", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, port: 80}\n", ErrUnknownField, []string{"line 3: bindings[0]", `"port"`, "known fields are label, protocol, prefix, ports"}},
	{"binding missing field", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8}\n", nil, []string{"line 3: bindings[0]", `missing field "ports"`}},
	{"binding repeated field", bs + "  - {label: a, label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", ErrDuplicate, []string{"line 3: bindings[0].label"}},
	{"binding bad label", bs + "  - {label: 'a b', protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", binding.ErrInvalid, []string{"line 3: bindings[0]: label \"a b\""}},
	{"binding long label", bs + "  - {label: " + strings.Repeat("x", 300) + ", protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", binding.ErrInvalid, []string{"longer than 255"}},
	{"binding bad protocol", bs + "  - {label: a, protocol: sctp, prefix: 10.0.0.0/8, ports: '1'}\n", binding.ErrInvalid, []string{"bindings[0]", "use tcp or udp"}},
	{"binding bad prefix", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n  - {label: a, protocol: tcp, prefix: 10.0.0.300/24, ports: '1'}\n", binding.ErrInvalid, []string{"line 4: bindings[1]: prefix \"10.0.0.300/24\""}},
	{"binding mapped prefix", bs + "  - {label: a, protocol: tcp, prefix: '::ffff:10.0.0.0/104', ports: '1'}\n", binding.ErrInvalid, []string{"IPv4-mapped"}},
	{"binding bad ports", bs + "  - label: a\n    protocol: tcp\n    prefix: 10.0.0.0/8\n    ports: 0\n", binding.ErrInvalid, []string{"line 3: bindings[0]: ports \"0\"", "out of range"}},
	{"binding reversed ports", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 90-80}\n", binding.ErrInvalid, []string{"write it as 80-90"}},
	{"binding bool label", bs + "  - {label: true, protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", nil, []string{"bindings[0].label: expected a string, got a boolean (true); quote it"}},
	{"binding list label", bs + "  - {label: [a], protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", nil, []string{"bindings[0].label: expected a string, got a list"}},
	{"binding float ports", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 1.5}\n", nil, []string{"expected a string, got a decimal number"}},
	{"binding date label", bs + "  - {label: 2024-01-02, protocol: tcp, prefix: 10.0.0.0/8, ports: 1}\n", nil, []string{"got a date"}},
	{"binding tagged", bs + "  - {label: !custom a, protocol: tcp, prefix: 10.0.0.0/8, ports: 1}\n", nil, []string{`got a value tagged "!custom"`}},
	{"unquoted star", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: *}\n", ErrSyntax, []string{"line 3", `quote it, as in ports: "*"`}},
	{"unquoted ::/0", bs + "  - {label: a, protocol: tcp, prefix: ::/0, ports: '1'}\n", ErrSyntax, []string{`prefix: "::/0"`}},
	{"tab indent", bs + "\t- {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '1'}\n", ErrSyntax, []string{"line 3", "not tabs"}},
	{"alias", v + "labels:\n  a: &x {policy: bypass}\n  b: *x\n", nil, []string{"line 4: labels.b", "aliases (*x) are not supported"}},
	{"merge key", v + "labels:\n  a: &x {policy: bypass}\n  b: {<<: *x}\n", ErrUnknownField, []string{"line 4: labels.b"}},
	{"second document", v + "---\nversion: 1\n", ErrSyntax, []string{"line 2", "second YAML document"}},
	{"labels not a mapping", v + "labels: [a]\n", nil, []string{"line 2: labels: expected a mapping"}},
	{"bad label name", v + "labels:\n  'a/b': {}\n", binding.ErrInvalid, []string{"line 3: labels: label \"a/b\""}},
	{"repeated label", v + "labels:\n  a: {}\n  b: {}\n  a: {policy: bypass}\n", ErrDuplicate, []string{"line 5: labels.a", "already listed at line 3"}},
	{"label unknown field", v + "labels:\n  a: {polcy: bypass}\n", ErrUnknownField, []string{"line 3: labels.a", `"polcy"`, "known fields are grants, policy, upstream"}},
	{"bad policy", v + "labels:\n  a:\n    policy: redirect\n", binding.ErrInvalid, []string{"line 4: labels.a.policy", "use none, bypass or splice"}},
	{"splice without upstream", v + "labels:\n  a:\n    policy: splice\n", nil, []string{"line 4: labels.a.policy: policy splice needs an upstream", "host:same"}},
	{"upstream without splice", v + "labels:\n  a:\n    policy: bypass\n    upstream: 10.0.0.1:80\n", nil, []string{"line 5: labels.a.upstream", "set policy: splice or remove the upstream"}},
	{"upstream no port", v + "labels:\n  a: {policy: splice, upstream: 10.0.0.1}\n", binding.ErrInvalid, []string{"labels.a.upstream", "host:port or host:same"}},
	{"upstream bad host", v + "labels:\n  a: {policy: splice, upstream: 'bad!host:80'}\n", binding.ErrInvalid, []string{"line 3: labels.a.upstream", `"bad!host" is neither an IP address nor a DNS name`}},
	{"upstream empty name label", v + "labels:\n  a: {policy: splice, upstream: 'a..b:80'}\n", binding.ErrInvalid, []string{"line 3: labels.a.upstream"}},
	{"upstream numeric name", v + "labels:\n  a: {policy: splice, upstream: '10.0.0.300:80'}\n", binding.ErrInvalid, []string{"line 3: labels.a.upstream"}},
	{"engine without splice", v + "labels:\n  a:\n    policy: bypass\n    engine: kernel\n", binding.ErrInvalid, []string{"line 5: labels.a.engine", "policy bypass has no engine"}},
	{"bad engine", v + "labels:\n  a: {policy: splice, upstream: 'h:1', engine: ebpf}\n", binding.ErrInvalid, []string{"line 3: labels.a.engine", `engine "ebpf"`}},
	{"upstream port 0", v + "labels:\n  a: {policy: splice, upstream: 'h:0'}\n", binding.ErrInvalid, []string{"port \"0\""}},
	{"upstream bad host", v + "labels:\n  a: {policy: splice, upstream: 'a b:1'}\n", binding.ErrInvalid, []string{"neither an IP address nor a DNS name"}},
	{"upstream named port", v + "labels:\n  a: {policy: splice, upstream: 'h:http'}\n", binding.ErrInvalid, []string{"not a number from 1 to 65535"}},
	{"grants unknown field", v + "labels:\n  a:\n    grants: {user: [x]}\n", ErrUnknownField, []string{"line 4: labels.a.grants", `"user"`}},
	{"grants not a list", v + "labels:\n  a:\n    grants: {uids: 5}\n", nil, []string{"labels.a.grants.uids: expected a list, got a number"}},
	{"uid string", v + "labels:\n  a:\n    grants: {uids: [\"953\"]}\n", nil, []string{"labels.a.grants.uids[0]: expected a decimal number, got a string"}},
	{"uid negative", v + "labels:\n  a:\n    grants: {uids: [-1]}\n", nil, []string{"labels.a.grants.uids[0]: expected a decimal number"}},
	{"uid hex", v + "labels:\n  a:\n    grants: {uids: [0x10]}\n", nil, []string{"expected a decimal number"}},
	{"uid too big", v + "labels:\n  a:\n    grants: {gids: [1, 4294967296]}\n", nil, []string{"labels.a.grants.gids[1]", "out of range"}},
	{"uid -1", v + "labels:\n  a:\n    grants: {uids: [4294967295]}\n", nil, []string{"names nobody"}},
	{"numeric user", v + "labels:\n  a:\n    grants: {users: [\"953\"]}\n", nil, []string{"labels.a.grants.users[0]", "list numeric ids under uids"}},
	{"bad user", v + "labels:\n  a:\n    grants:\n      groups: [ok, 'b c']\n", nil, []string{"line 5: labels.a.grants.groups[1]"}},
	{"daemon unknown", v + "daemon:\n  bypass-cgroup: /x\n", ErrUnknownField, []string{"line 3: daemon", "bypass_cgroup"}},
	{"daemon relative", v + "daemon:\n  bpffs: sys/fs/bpf\n", binding.ErrInvalid, []string{"line 3: daemon.bpffs", "not an absolute path"}},
	{"daemon metrics", v + "daemon:\n  metrics_addr: 9100\n", binding.ErrInvalid, []string{"daemon.metrics_addr", ":9100"}},
	{"duplicate binding", bs +
		"  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '80'}\n" +
		"  - {label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: '81'}\n" +
		"  - {label: a, protocol: tcp, prefix: 10.0.0.1/8, ports: '80'}\n",
		ErrDuplicate, []string{"line 5: bindings[2]: duplicate binding: a tcp 10.0.0.0/8 80 repeats bindings[0] (line 3: a tcp 10.0.0.0/8 80); remove one"}},
	{"same key other label", bs +
		"  - {label: a, protocol: udp, prefix: '2001:db8::/32', ports: '53'}\n" +
		"  - {label: b, protocol: udp, prefix: '2001:db8::/32', ports: '53'}\n",
		ErrConflict, []string{"line 4: bindings[1]: conflicting bindings: b udp 2001:db8::/32 53 and bindings[0] (line 3: a udp 2001:db8::/32 53) have the same protocol, prefix and ports but different labels"}},
	{"partial overlap", bs +
		"  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 8500-9500}\n" +
		"  - {label: c, protocol: udp, prefix: 10.0.0.0/8, ports: 8000-8999}\n" +
		"  - {label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: 8000-8999}\n",
		ErrConflict, []string{"line 5: bindings[2]: conflicting bindings: b tcp 10.0.0.0/8 8000-8999 and bindings[0] (line 3: a tcp 10.0.0.0/8 8500-9500) have partially overlapping port ranges", "make the ranges disjoint or put one inside the other"}},
	{"partial overlap with any inside", bs +
		"  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '*'}\n" +
		"  - {label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: 1-100}\n" +
		"  - {label: c, protocol: tcp, prefix: 10.0.0.0/8, ports: 50-60}\n" +
		"  - {label: d, protocol: tcp, prefix: 10.0.0.0/8, ports: 90-110}\n",
		ErrConflict, []string{"line 6: bindings[3]", "bindings[1] (line 4: b tcp 10.0.0.0/8 1-100)"}},
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range parseErrorCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.src))
			checkErr(t, tc, err)
			t.Log(err)
			// The YAML-only path must agree.
			_, slow := parseBytes([]byte(tc.src), "", false)
			if slow == nil || slow.Error() != err.Error() {
				t.Errorf("YAML-only parse disagrees:\n fast: %v\n slow: %v", err, slow)
			}
		})
	}
}

// acceptedCases are good configs with their number of bindings. They also
// seed FuzzParse.
var acceptedCases = []struct {
	name, src string
	n         int
}{
	{"nested ranges", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: '*'}\n  - {label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: 1000-2000}\n  - {label: c, protocol: tcp, prefix: 10.0.0.0/8, ports: 1000-1500}\n  - {label: d, protocol: tcp, prefix: 10.0.0.0/8, ports: 1500}\n  - {label: e, protocol: tcp, prefix: 10.0.0.0/8, ports: 2000}\n", 5},
	{"disjoint ranges", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 1-100}\n  - {label: b, protocol: tcp, prefix: 10.0.0.0/8, ports: 101-200}\n", 2},
	{"same ports other prefix", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 80}\n  - {label: b, protocol: tcp, prefix: 10.0.0.0/16, ports: 80}\n  - {label: c, protocol: tcp, prefix: 11.0.0.0/8, ports: 70-90}\n", 3},
	{"same key other protocol", bs + "  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 80}\n  - {label: b, protocol: udp, prefix: 10.0.0.0/8, ports: 80}\n", 2},
	{"v4 and v6 any", bs + "  - {label: a, protocol: tcp, prefix: 0.0.0.0/0, ports: 80}\n  - {label: b, protocol: tcp, prefix: '::/0', ports: 80}\n", 2},
	{"host bits", bs + "  - {label: a, protocol: tcp, prefix: 10.1.2.3/8, ports: 80}\n", 1},
	{"null sections", "version: 1\nbindings:\nlabels:\ndaemon:\n", 0},
	{"empty sections", "version: 1\nbindings: []\nlabels: {}\ndaemon: {}\n", 0},
	{"indentless list", "version: 1\nbindings:\n- {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 80}\n- label: b\n  protocol: udp\n  prefix: 10.0.0.0/8\n  ports: 80\n", 2},
	{"bindings first", "bindings:\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 80}\nversion: 1\n", 1},
	{"numeric label", bs + "  - {label: 053, protocol: tcp, prefix: 10.0.0.0/8, ports: 053}\n", 1},
	{"crlf", "version: 1\r\nbindings:\r\n  - {label: a, protocol: tcp, prefix: 10.0.0.0/8, ports: 80}\r\n", 1},
}

func TestAccepted(t *testing.T) {
	t.Parallel()
	for _, tc := range acceptedCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(strings.NewReader(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Bindings) != tc.n {
				t.Errorf("%d bindings, want %d: %v", len(c.Bindings), tc.n, c.Bindings)
			}
			slow, err := parseBytes([]byte(tc.src), "", false)
			if err != nil || !reflect.DeepEqual(c, slow) {
				t.Errorf("YAML-only parse disagrees: %+v, %v", slow, err)
			}
		})
	}
}

func TestNumericLabelKeepsText(t *testing.T) {
	t.Parallel()
	c, err := Parse(strings.NewReader("version: 1\nbindings:\n  - {label: 053, protocol: tcp, prefix: 10.0.0.0/8, ports: 053}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Bindings[0]; b.Label != "053" || b.Ports != (binding.Ports{Lo: 53, Hi: 53}) {
		t.Errorf("got %v", b)
	}
}

func TestManyErrors(t *testing.T) {
	t.Parallel()
	var src strings.Builder
	src.WriteString("version: 1\nbindings:\n")
	for i := range 30 {
		fmt.Fprintf(&src, "  - {label: a, protocol: tcp, prefix: 10.0.0.%d/40, ports: 80}\n", i)
	}
	src.WriteString("bogus: 1\n")
	_, err := Parse(strings.NewReader(src.String()))
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxErrors+1 {
		t.Fatalf("%d lines, want %d:\n%v", len(lines), maxErrors+1, err)
	}
	if !strings.HasPrefix(lines[0], "line 3: bindings[0]:") || !strings.HasPrefix(lines[19], "line 22: bindings[19]:") {
		t.Errorf("errors not sorted by line:\n%v", err)
	}
	if !strings.Contains(lines[20], "11 more problems not shown") {
		t.Errorf("last line %q", lines[20])
	}
}

// endless yields n bytes of YAML comment, in lines of 80 bytes.
type endless struct{ n, col int }

var commentLine = []byte(strings.Repeat("#", 79) + "\n")

func (e *endless) Read(p []byte) (int, error) {
	if e.n == 0 {
		return 0, io.EOF
	}
	k := 0
	for k < len(p) && k < e.n {
		c := copy(p[k:min(len(p), e.n)], commentLine[e.col:])
		e.col = (e.col + c) % len(commentLine)
		k += c
	}
	e.n -= k
	return k, nil
}

func TestTooLarge(t *testing.T) {
	t.Parallel()
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		_, err := Parse(io.MultiReader(strings.NewReader("version: 1\n"), &endless{n: MaxFileSize}))
		checkErr(t, errCase{sentinel: ErrTooLarge, says: []string{"larger than the limit of 134217728 bytes (128 MiB)"}}, err)
		// Exactly at the limit is fine; checked at a lower limit, as a
		// file of 128 MiB takes minutes to parse with the race detector.
		lim := limits{fileSize: 1 << 20, bindings: MaxBindings}
		if _, err := parseReaderLimits(io.MultiReader(strings.NewReader("version: 1\n"), &endless{n: lim.fileSize - 11}), "", lim); err != nil {
			t.Errorf("file of exactly %d bytes: %v", lim.fileSize, err)
		}
		_, err = parseReaderLimits(io.MultiReader(strings.NewReader("version: 1\n"), &endless{n: lim.fileSize - 10}), "", lim)
		checkErr(t, errCase{sentinel: ErrTooLarge, says: []string{"larger than the limit of 1048576 bytes (1 MiB)"}}, err)
	})
	// The count is checked at a lower limit, by the fast scanner and by
	// the YAML parser; tests/ applies a file of exactly MaxBindings.
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("bindings/fast=%v", fast), func(t *testing.T) {
			t.Parallel()
			lim := limits{fileSize: MaxFileSize, bindings: 1000}
			_, err := parseBytesLimits([]byte(generate(1001, false)), "", fast, lim)
			checkErr(t, errCase{sentinel: ErrTooLarge, says: []string{"line 2: bindings", "1001 bindings, more than the limit of 1000"}}, err)
			c, err := parseBytesLimits([]byte(generate(1000, false)), "", fast, lim)
			if err != nil || len(c.Bindings) != 1000 {
				t.Errorf("1000 bindings: %v", err)
			}
		})
	}
}

// generate writes a config of n distinct bindings, one per line, or as
// block mappings.
func generate(n int, block bool) string {
	var b strings.Builder
	b.WriteString("version: 1\nbindings:\n")
	for i := range n {
		proto := [2]string{"tcp", "udp"}[i%2]
		if block {
			fmt.Fprintf(&b, "  - label: svc-%d\n    protocol: %s\n    prefix: 10.%d.%d.0/24\n    ports: \"%d\"\n", i%500, proto, i>>8&255, i&255, 1+i>>16)
		} else {
			fmt.Fprintf(&b, "  - {label: svc-%d, protocol: %s, prefix: 10.%d.%d.0/24, ports: \"%d\"}\n", i%500, proto, i>>8&255, i&255, 1+i>>16)
		}
	}
	b.WriteString("labels:\n  svc-1: {policy: bypass}\n")
	return b.String()
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, c := range []*Config{
		{Version: 1},
		exampleConfig(t),
		{
			Version: 1,
			Bindings: []binding.Binding{
				mustBinding(t, "053", "udp", "::/0", "*"),
				mustBinding(t, "@odd_label.x", "tcp", "2001:db8::1", "1-65535"),
				mustBinding(t, "true", "tcp", "0.0.0.0/0", "65535"),
				mustBinding(t, "null", "udp", "::1", "1"),
				mustBinding(t, "1.5", "udp", "fe80::/10", "1"),
				mustBinding(t, "2024-01-02", "udp", "fe80::/10", "2"),
			},
			Labels: map[string]settings.Label{
				"053":  {Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "2001:db8::5", Port: 443}}},
				"true": {Grants: settings.Grants{GIDs: []uint32{0, 4294967294}, Users: []string{"yes", "a.b-c_d$"}}},
				"null": {Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "backend.example", Port: 0}}},
				"k":    {Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "10.0.0.5", Port: 8080}, Engine: settings.Kernel}},
			},
			Daemon: Daemon{MetricsAddr: "[::1]:9100"},
		},
	} {
		out, err := Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(strings.NewReader(string(out)))
		if err != nil {
			t.Fatalf("Parse(Marshal()): %v\n%s", err, out)
		}
		want := *c
		want.Version = CurrentVersion
		if !reflect.DeepEqual(back, &want) {
			t.Errorf("round trip changed the config:\n%s\n got %+v\nwant %+v", out, back, &want)
		}
		again, err := Marshal(back)
		if err != nil || string(again) != string(out) {
			t.Errorf("Marshal is not stable: %v\n%s\n%s", err, out, again)
		}
		if len(c.Bindings) > 0 {
			if _, ok := scanBindings(out); !ok {
				t.Errorf("Marshal output does not take the fast path:\n%s", out)
			}
		}
		t.Logf("\n%s", out)
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	t.Parallel()
	b := mustBinding(t, "a", "tcp", "10.0.0.0/8", "80")
	for _, tc := range []struct {
		name string
		c    Config
		says string
	}{
		{"duplicate", Config{Bindings: []binding.Binding{b, b}}, "bindings[1]: duplicate binding"},
		{"host bits", Config{Bindings: []binding.Binding{{Label: "a", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.0.0.1/8"), Ports: binding.AnyPort}}}, "host bits"},
		{"version", Config{Version: 7}, "version 7"},
		{"splice", Config{Labels: map[string]settings.Label{"a": {Policy: settings.Policy{Kind: settings.Splice}}}}, "labels.a.policy: policy splice needs an upstream"},
		{"policy", Config{Labels: map[string]settings.Label{"a": {Policy: settings.Policy{Kind: 9}}}}, "labels.a.policy: policy 9"},
		{"upstream", Config{Labels: map[string]settings.Label{"a": {Policy: settings.Policy{Kind: settings.Splice, Upstream: settings.Upstream{Host: "a b"}}}}}, "labels.a.upstream"},
		{"label", Config{Labels: map[string]settings.Label{"": {}}}, "label: invalid: must not be empty"},
		{"user", Config{Labels: map[string]settings.Label{"a": {Grants: settings.Grants{Users: []string{""}}}}}, "labels.a.grants.users[0]"},
		{"daemon", Config{Daemon: Daemon{Control: "x.sock"}}, "daemon.control"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Marshal(&tc.c)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("Marshal: %v, want an error saying %q", err, tc.says)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte(example), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("version: 1\nbindings:\n  - {label: a, protocol: tcp, prefix: nope, ports: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(good); err != nil || !reflect.DeepEqual(c, exampleConfig(t)) {
		t.Errorf("Load(good) = %+v, %v", c, err)
	}
	_, err := Load(bad)
	if err == nil || !strings.HasPrefix(err.Error(), bad+":3: bindings[0]: prefix \"nope\"") {
		t.Errorf("Load(bad) = %v", err)
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v", err)
	}
}

func TestSystemResolver(t *testing.T) {
	t.Parallel()
	r := SystemResolver()
	// root exists in every passwd database this runs on; the made-up name
	// does not.
	if id, err := r.User("root"); err != nil || id != 0 {
		t.Skipf("no root user in the passwd database (%v); skipping", err)
	}
	if _, err := r.User("switchyard-no-such-user"); !errors.Is(err, ErrUnknownName) || !strings.Contains(err.Error(), "grant its numeric id under uids") {
		t.Errorf("unknown user: %v", err)
	}
	if _, err := r.Group("switchyard-no-such-group"); !errors.Is(err, ErrUnknownName) {
		t.Errorf("unknown group: %v", err)
	}
}
