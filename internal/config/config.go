package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
)

// CurrentVersion is the only schema version this package reads and writes.
const CurrentVersion = 1

// Limits on what Parse accepts.
const (
	// MaxFileSize is the largest config accepted, in bytes (128 MiB): room
	// for MaxBindings bindings of 128 bytes each, which one-line entries
	// with a 20-byte label and an IPv6 /64 take.
	MaxFileSize = 128 << 20
	// MaxBindings is the most bindings one config may hold: what the
	// dispatch maps hold.
	MaxBindings = 1 << 20
	// MaxLabels is the most entries the labels section may hold.
	MaxLabels = 65536
	// maxErrors is how many problems one Parse reports before giving up.
	maxErrors = 20
)

// Sentinel errors. Every problem found in a config's content is an *Error,
// which matches ErrInvalid; the more specific sentinels below are wrapped
// where they apply.
var (
	// ErrInvalid matches every *Error.
	ErrInvalid = errors.New("invalid config")
	// ErrTooLarge: the file or one of its lists exceeds a hard limit.
	ErrTooLarge = errors.New("config too large")
	// ErrSyntax: the file is not well-formed YAML.
	ErrSyntax = errors.New("yaml syntax error")
	// ErrUnknownField: a mapping has a field the schema does not know.
	ErrUnknownField = errors.New("unknown field")
	// ErrDuplicate: the same binding or the same field appears twice.
	ErrDuplicate = errors.New("duplicate")
	// ErrConflict: two bindings make dispatch ambiguous.
	ErrConflict = errors.New("conflicting bindings")
)

// Config is the content of a switchyard config file.
type Config struct {
	// Version is the schema version, CurrentVersion. Marshal writes
	// CurrentVersion when it is zero.
	Version int
	// Bindings in file order.
	Bindings []binding.Binding
	// Labels holds per-label settings. A label that has bindings but no
	// entry here gets the zero Label: root-only registration, policy none.
	Labels map[string]Label
	// Daemon holds switchyardd's settings; switchyard apply ignores it.
	Daemon Daemon
}

// Label holds the settings of one label.
type Label struct {
	// Grants lists who, besides root, may register sockets for the label.
	Grants Grants
	// Policy is applied to the connections the label's socket accepts.
	Policy Policy
	// Upstream is where PolicySplice sends connections. It is the zero
	// Upstream for the other policies.
	Upstream Upstream
}

// Grants names users and groups. Names are resolved to ids only when the
// caller asks (see Grants.Resolve), so a config can be parsed on a machine
// without those accounts.
type Grants struct {
	UIDs   []uint32
	GIDs   []uint32
	Users  []string
	Groups []string
}

// IsZero reports whether g grants nothing.
func (g Grants) IsZero() bool {
	return len(g.UIDs) == 0 && len(g.GIDs) == 0 && len(g.Users) == 0 && len(g.Groups) == 0
}

// Daemon holds switchyardd settings. Empty fields mean the daemon's default;
// command-line flags take precedence over them.
type Daemon struct {
	// BypassCgroup is the cgroup v2 directory the bypass policy's sockops
	// program attaches to (default: the cgroup v2 root).
	BypassCgroup string
	// Control is the path of the control socket (--control).
	Control string
	// BPFFS is the bpffs directory that holds pinned state (--bpffs).
	BPFFS string
	// MetricsAddr is the host:port to serve Prometheus metrics on
	// (--metrics-addr).
	MetricsAddr string
}

// IsZero reports whether no daemon setting is given.
func (d Daemon) IsZero() bool { return d == Daemon{} }

// Policy is a connection policy: the control protocol's type, so that a
// file's settings go over the wire as they are.
type Policy = control.Policy

// Connection policies; the zero value is PolicyNone.
const (
	PolicyNone   = control.PolicyNone
	PolicyBypass = control.PolicyBypass
	PolicySplice = control.PolicySplice
)

// ParsePolicy accepts "none", "bypass" or "splice".
func ParsePolicy(s string) (Policy, error) { return control.ParsePolicy(s) }

// Upstream is where the splice policy connects to: a host and a port, or the
// host and whatever port the client dialled ("host:same"), so that one label
// can proxy every port.
type Upstream struct {
	// Host is an IP address or a DNS name.
	Host string
	// Port is the port to dial; 0 means the port the client dialled.
	Port uint16
}

// SamePortWord is the port part of an Upstream that keeps the dialled port.
const SamePortWord = "same"

// IsZero reports whether u is unset.
func (u Upstream) IsZero() bool { return u == Upstream{} }

// SamePort reports whether u keeps the port the client dialled.
func (u Upstream) SamePort() bool { return u.Port == 0 }

// Dial returns the address to dial for a connection the client made to
// port dialled.
func (u Upstream) Dial(dialled uint16) string {
	p := u.Port
	if p == 0 {
		p = dialled
	}
	return net.JoinHostPort(u.Host, strconv.Itoa(int(p)))
}

func (u Upstream) String() string {
	if u.IsZero() {
		return ""
	}
	port := SamePortWord
	if u.Port != 0 {
		port = strconv.Itoa(int(u.Port))
	}
	return net.JoinHostPort(u.Host, port)
}

// MarshalText implements encoding.TextMarshaler.
func (u Upstream) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (u *Upstream) UnmarshalText(b []byte) error {
	v, err := ParseUpstream(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

const upstreamHelp = "write host:port or host:same, e.g. 10.0.0.5:8080, [2001:db8::5]:same or backend.example:443"

// ParseUpstream accepts "host:port" or "host:same". The host is an IP
// address (IPv6 in brackets) or a DNS name; the port a number from 1 to 65535.
func ParseUpstream(s string) (Upstream, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream %s: %w: %s", quote(s), binding.ErrInvalid, upstreamHelp)
	}
	if err := checkHost(host); err != nil {
		return Upstream{}, fmt.Errorf("upstream %s: %w", quote(s), err)
	}
	u := Upstream{Host: host}
	if port == SamePortWord {
		return u, nil
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || port[0] == '+' {
		return Upstream{}, fmt.Errorf("upstream %s: %w: port %s is not a number from 1 to 65535 or %q; %s", quote(s), binding.ErrInvalid, quote(port), SamePortWord, upstreamHelp)
	}
	u.Port = uint16(n)
	return u, nil
}

func checkHost(h string) error {
	if h == "" {
		return fmt.Errorf("%w: the host is empty; %s", binding.ErrInvalid, upstreamHelp)
	}
	if strings.Contains(h, ":") {
		if _, err := netip.ParseAddr(h); err != nil {
			return fmt.Errorf("%w: %s is not an IPv6 address; %s", binding.ErrInvalid, quote(h), upstreamHelp)
		}
		return nil
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if len(h) > 253 {
		return fmt.Errorf("%w: host name is longer than 253 bytes", binding.ErrInvalid)
	}
	for part := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if part == "" || len(part) > 63 || part[0] == '-' || part[len(part)-1] == '-' {
			return fmt.Errorf("%w: %s is neither an IP address nor a DNS name; %s", binding.ErrInvalid, quote(h), upstreamHelp)
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%w: %s is neither an IP address nor a DNS name; %s", binding.ErrInvalid, quote(h), upstreamHelp)
			}
		}
	}
	return nil
}

// Error is one problem in a config. It matches ErrInvalid.
type Error struct {
	// File is the path given to Load; empty for Parse.
	File string
	// Line is the 1-based line of the problem; 0 when unknown (a Config
	// built in code).
	Line int
	// Path names the value, e.g. "bindings[3]" or "labels.web.policy".
	Path string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes every *Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// quote quotes s for an error message, shortened if it is long.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
