package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
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
	// entry here gets the zero settings.Label: root-only registration,
	// policy none.
	Labels map[string]settings.Label
	// Daemon holds switchyardd's settings; switchyard apply ignores it.
	Daemon Daemon
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
