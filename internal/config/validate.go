package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Validate checks a Config built in code with the rules Parse applies to a
// file. Errors name values by path (bindings[3], labels.web.policy).
func (c *Config) Validate() error {
	d := &decoder{}
	if c.Version != 0 && c.Version != CurrentVersion {
		d.failf(0, "version", "version %d is not supported: use version: %d", c.Version, CurrentVersion)
	}
	if len(c.Bindings) > MaxBindings {
		d.failf(0, "bindings", "%w: %d bindings, more than the limit of %d", ErrTooLarge, len(c.Bindings), MaxBindings)
	} else {
		es := make([]entry, 0, len(c.Bindings))
		for i, b := range c.Bindings {
			if err := b.Validate(); err != nil {
				d.fail(0, "bindings["+strconv.Itoa(i)+"]", err)
				continue
			}
			es = append(es, entry{b: b, index: i})
		}
		d.errs = append(d.errs, checkConflicts(es)...)
	}
	if len(c.Labels) > MaxLabels {
		d.failf(0, "labels", "%w: %d labels, more than the limit of %d", ErrTooLarge, len(c.Labels), MaxLabels)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Labels)) {
		l := c.Labels[name]
		if err := binding.ValidateLabel(name); err != nil {
			d.fail(0, "labels", err)
			continue
		}
		path := "labels." + name
		if field, err := l.Policy.Check(); err != nil {
			d.fail(0, path+"."+field, err)
			continue
		}
		checkList(d, path+".grants.uids", l.Grants.UIDs, settings.ValidateID)
		checkList(d, path+".grants.gids", l.Grants.GIDs, settings.ValidateID)
		checkList(d, path+".grants.users", l.Grants.Users, settings.ValidateName)
		checkList(d, path+".grants.groups", l.Grants.Groups, settings.ValidateName)
	}
	for _, f := range []struct {
		path, value string
		check       func(string) error
	}{
		{"daemon.bypass_cgroup", c.Daemon.BypassCgroup, checkAbsPath},
		{"daemon.control", c.Daemon.Control, checkAbsPath},
		{"daemon.bpffs", c.Daemon.BPFFS, checkAbsPath},
		{"daemon.metrics_addr", c.Daemon.MetricsAddr, checkListenAddr},
	} {
		if f.value != "" {
			d.check(0, f.path, f.check(f.value))
		}
	}
	return d.result()
}

func checkList[T any](d *decoder, path string, vs []T, check func(T) error) {
	for i, v := range vs {
		d.check(0, path+"["+strconv.Itoa(i)+"]", check(v))
	}
}

func checkAbsPath(s string) error {
	if s == "" {
		return nil
	}
	if !filepath.IsAbs(s) || strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%w: %s is not an absolute path; write it from /", binding.ErrInvalid, quote(s))
	}
	return nil
}

func checkListenAddr(s string) error {
	if s == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		var n uint64
		n, err = strconv.ParseUint(port, 10, 16)
		if err == nil && (n == 0 || port[0] == '+') {
			err = errors.New("port 0")
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %s is not a host:port to listen on; write e.g. 127.0.0.1:9100 or :9100", binding.ErrInvalid, quote(s))
	}
	return nil
}

// entry is a valid binding with where it came from.
type entry struct {
	b     binding.Binding
	index int // position in the bindings list
	line  int // 0 when unknown
}

func (e entry) name() string {
	if e.line > 0 {
		return fmt.Sprintf("bindings[%d] (line %d: %s)", e.index, e.line, e.b)
	}
	return fmt.Sprintf("bindings[%d] (%s)", e.index, e.b)
}

// checkConflicts finds repeated bindings, bindings with the same key and
// different labels, and partially overlapping port ranges at the same
// protocol and prefix (binding.Conflict). Each problem is reported once, on
// the later of the two entries, naming the earlier.
func checkConflicts(es []entry) []*Error {
	if len(es) < 2 {
		return nil
	}
	// Group the entries by protocol and prefix, with one map lookup each
	// and a counting sort into order (positions ascending within a group),
	// so that only each group's few entries are sorted: a sort of the
	// whole list took most of the check at a million bindings.
	type groupKey struct {
		proto binding.Protocol
		is6   bool
		bits  uint8
		addr  [16]byte
	}
	pos := make(map[groupKey]int32, len(es)/2)
	gi := make([]int32, len(es))
	var next []int32 // per group: its count, then where its next entry goes
	for i := range es {
		b := &es[i].b
		a := b.Prefix.Addr()
		k := groupKey{b.Protocol, a.Is6(), uint8(b.Prefix.Bits()), a.As16()}
		g, ok := pos[k]
		if !ok {
			g = int32(len(next))
			pos[k] = g
			next = append(next, 0)
		}
		gi[i] = g
		next[g]++
	}
	pos = nil
	start := make([]int32, len(next)+1)
	for g, n := range next {
		start[g+1] = start[g] + n
		next[g] = start[g]
	}
	order := make([]int32, len(es))
	for i, g := range gi {
		order[next[g]] = int32(i)
		next[g]++
	}
	gi, next = nil, nil

	// A group's entries in order of range start ascending and range end
	// descending, so that a range comes before the ranges it contains,
	// then by position.
	byPorts := func(x, y int32) int {
		px, py := es[x].b.Ports, es[y].b.Ports
		if c := cmp.Compare(px.Lo, py.Lo); c != 0 {
			return c
		}
		if c := cmp.Compare(py.Hi, px.Hi); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	}
	type found struct {
		at  int32 // the entry being checked when the problem showed
		err *Error
	}
	var errs []found
	// stack holds a chain of nested ranges of the group, outermost
	// first. runFirst is the earliest entry with the current port set.
	var stack []entry
	for g := range len(start) - 1 {
		grp := order[start[g]:start[g+1]]
		if len(grp) < 2 {
			continue
		}
		slices.SortFunc(grp, byPorts)
		stack = stack[:0]
		var runFirst entry
		for k, oi := range grp {
			cur := es[oi]
			report := func(later entry, err error) {
				errs = append(errs, found{oi, &Error{Line: later.line, Path: "bindings[" + strconv.Itoa(later.index) + "]", Err: err}})
			}
			if k > 0 && es[grp[k-1]].b.Ports == cur.b.Ports {
				if runFirst.b.Label == cur.b.Label {
					report(cur, fmt.Errorf("%w binding: %s repeats %s; remove one of them", ErrDuplicate, cur.b, runFirst.name()))
				} else {
					report(cur, fmt.Errorf("%w: %s and %s have the same protocol, prefix and ports but different labels; keep one of them", ErrConflict, cur.b, runFirst.name()))
				}
				continue
			}
			runFirst = cur
			for len(stack) > 0 && stack[len(stack)-1].b.Ports.Hi < cur.b.Ports.Lo {
				stack = stack[:len(stack)-1]
			}
			if len(stack) > 0 {
				if top := stack[len(stack)-1]; binding.Conflict(top.b, cur.b) {
					x, y := top, cur
					if x.index > y.index {
						x, y = y, x
					}
					report(y, fmt.Errorf("%w: %s and %s have partially overlapping port ranges at the same protocol and prefix, so neither is more specific; make the ranges disjoint or put one inside the other",
						ErrConflict, y.b, x.name()))
					continue
				}
			}
			stack = append(stack, cur)
		}
	}
	// In the order of the entries they were found at by protocol, address,
	// prefix length, then ports as above: as a sort of the whole list
	// found them (the caller orders them by line, stably).
	slices.SortFunc(errs, func(x, y found) int {
		a, b := es[x.at].b, es[y.at].b
		if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
			return c
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return byPorts(x.at, y.at)
	})
	out := make([]*Error, len(errs))
	for i, f := range errs {
		out[i] = f.err
	}
	return out
}
