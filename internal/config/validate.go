package config

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net"
	"path/filepath"
	"runtime"
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
		l := &list{bs: make([]binding.Binding, 0, len(c.Bindings))}
		for i, b := range c.Bindings {
			if err := b.Validate(); err != nil {
				d.fail(0, "bindings["+strconv.Itoa(i)+"]", err)
				if l.index == nil {
					l.index = make([]int32, len(l.bs), len(c.Bindings))
					for k := range l.index {
						l.index[k] = int32(k)
					}
				}
				continue
			}
			l.bs = append(l.bs, b)
			if l.index != nil {
				l.index = append(l.index, int32(i))
			}
		}
		d.errs = append(d.errs, checkConflicts(l)...)
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

// list is the valid bindings of a config, with where each came from.
type list struct {
	bs []binding.Binding
	// index holds each binding's position in the bindings list; nil when
	// that is its position in bs.
	index []int32
	// line holds each binding's line; nil when unknown (a Config built in
	// code).
	line []int32
}

func (l *list) entry(i int32) entry {
	e := entry{b: l.bs[i], index: int(i)}
	if l.index != nil {
		e.index = int(l.index[i])
	}
	if l.line != nil {
		e.line = int(l.line[i])
	}
	return e
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
func checkConflicts(l *list) []*Error { return checkConflictsHashed(l, ^uint32(0)) }

// checkConflictsHashed is checkConflicts with the hashes masked with mask:
// tests make different groups share hashes.
func checkConflictsHashed(l *list, mask uint32) []*Error {
	n := len(l.bs)
	if n < 2 {
		return nil
	}
	// Group the entries by protocol and prefix: sort what the check needs
	// of them by a hash of the two (a radix sort, which keeps positions
	// ascending among equal hashes), and split each run of equal hashes
	// by the protocol and prefix themselves, so that only each group's
	// few entries are sorted. A sort of the whole list took most of the
	// check at a million bindings, and a map of the groups, or reading the
	// bindings in the order of their hashes, half of it.
	// Each CPU checks the groups of its share of the buckets.
	nw := min(runtime.GOMAXPROCS(0), 8)
	if n < 1<<14 {
		nw = 1
	}
	gs, starts := bucketByHash(l.bs, nw, mask)

	// A group's entries in order of range start ascending and range end
	// descending, so that a range comes before the ranges it contains,
	// then by position.
	byPorts := func(x, y groupEntry) int {
		if c := cmp.Compare(x.ports.Lo, y.ports.Lo); c != 0 {
			return c
		}
		if c := cmp.Compare(y.ports.Hi, x.ports.Hi); c != 0 {
			return c
		}
		return cmp.Compare(x.pos, y.pos)
	}
	type found struct {
		at  int32 // the entry being checked when the problem showed
		err *Error
	}
	founds := make([][]found, nw)
	parallel(nw, func(w int) {
		var errs []found
		// stack holds a chain of nested ranges of the group, outermost
		// first. runFirst is the earliest entry with the current port
		// set.
		var stack []groupEntry
		check := func(grp []groupEntry) {
			slices.SortFunc(grp, byPorts)
			stack = stack[:0]
			var runFirst groupEntry
			for k, cur := range grp {
				report := func(later entry, err error) {
					errs = append(errs, found{cur.pos, &Error{Line: later.line, Path: "bindings[" + strconv.Itoa(later.index) + "]", Err: err}})
				}
				if k > 0 && grp[k-1].ports == cur.ports {
					c, first := l.entry(cur.pos), l.entry(runFirst.pos)
					if first.b.Label == c.b.Label {
						report(c, fmt.Errorf("%w binding: %s repeats %s; remove one of them", ErrDuplicate, c.b, first.name()))
					} else {
						report(c, fmt.Errorf("%w: %s and %s have the same protocol, prefix and ports but different labels; keep one of them", ErrConflict, c.b, first.name()))
					}
					continue
				}
				runFirst = cur
				for len(stack) > 0 && stack[len(stack)-1].ports.Hi < cur.ports.Lo {
					stack = stack[:len(stack)-1]
				}
				if len(stack) > 0 {
					// binding.Conflict of two bindings with the same
					// protocol and prefix and different ports.
					if top := stack[len(stack)-1]; top.ports.Overlaps(cur.ports) && !top.ports.Nested(cur.ports) {
						x, y := l.entry(top.pos), l.entry(cur.pos)
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
		nb := len(starts) - 1
		var keys []uint64
		var run []groupEntry
		for bk := w * nb / nw; bk < (w+1)*nb/nw; bk++ {
			bucket := gs[starts[bk]:starts[bk+1]]
			keys = keys[:0]
			for i := range bucket {
				keys = append(keys, uint64(bucket[i].hash)<<32|uint64(i))
			}
			slices.Sort(keys)
			for i := 0; i < len(keys); {
				j := i + 1
				for j < len(keys) && keys[j]>>32 == keys[i]>>32 {
					j++
				}
				if j-i > 1 {
					run = run[:0]
					for _, k := range keys[i:j] {
						run = append(run, bucket[uint32(k)])
					}
					if !slices.ContainsFunc(run, func(g groupEntry) bool { return !g.sameGroup(&run[0]) }) {
						check(run)
					} else {
						// Different groups with the same hash.
						slices.SortFunc(run, groupEntry.compareGroup)
						for a := 0; a < len(run); {
							b := a + 1
							for b < len(run) && run[b].sameGroup(&run[a]) {
								b++
							}
							if b-a > 1 {
								check(run[a:b])
							}
							a = b
						}
					}
				}
				i = j
			}
		}
		founds[w] = errs
	})
	errs := slices.Concat(founds...)
	// In the order of the entries they were found at by protocol, address,
	// prefix length, then ports as above: as a sort of the whole list
	// found them (the caller orders them by line, stably).
	slices.SortFunc(errs, func(x, y found) int {
		a, b := &l.bs[x.at], &l.bs[y.at]
		if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
			return c
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return byPorts(groupEntry{pos: x.at, ports: a.Ports}, groupEntry{pos: y.at, ports: b.Ports})
	})
	out := make([]*Error, len(errs))
	for i, f := range errs {
		out[i] = f.err
	}
	return out
}

// groupEntry is what checkConflicts needs of a binding: its protocol and
// prefix (the group), its ports and position, and the group's hash.
type groupEntry struct {
	hi, lo uint64 // the prefix's address
	kind   uint32 // protocol, prefix length + 1, family
	hash   uint32
	ports  binding.Ports
	pos    int32
}

func newGroupEntry(b *binding.Binding, pos int32) groupEntry {
	g := groupEntry{ports: b.Ports, pos: pos}
	g.hi, g.lo, g.kind, g.hash = groupKey(b)
	return g
}

// groupHash is newGroupEntry's hash.
func groupHash(b *binding.Binding) uint32 {
	_, _, _, h := groupKey(b)
	return h
}

// groupKey returns a binding's prefix address, its protocol, prefix length
// and family, and a hash of them.
func groupKey(b *binding.Binding) (hi, lo uint64, kind, hash uint32) {
	a := b.Prefix.Addr()
	a16 := a.As16()
	hi, lo = binary.BigEndian.Uint64(a16[:8]), binary.BigEndian.Uint64(a16[8:])
	kind = uint32(b.Protocol) | uint32(b.Prefix.Bits()+1)<<8
	if a.Is6() {
		kind |= 1 << 16
	}
	// Multiply and fold (as wyhash mixes): every input bit reaches the
	// high half of the result.
	h := mix(hi^0xa0761d6478bd642f, lo^0xe7037ed1a0b428db)
	h = mix(h^uint64(kind), 0x8ebc6af09c88c6e3)
	return hi, lo, kind, uint32(h >> 32)
}

func (g *groupEntry) sameGroup(o *groupEntry) bool {
	return g.hi == o.hi && g.lo == o.lo && g.kind == o.kind
}

func (g groupEntry) compareGroup(o groupEntry) int {
	if c := cmp.Compare(g.kind, o.kind); c != 0 {
		return c
	}
	if c := cmp.Compare(g.hi, o.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(g.lo, o.lo); c != 0 {
		return c
	}
	return cmp.Compare(g.pos, o.pos)
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// bucketByHash returns the groupEntry of each binding, sorted into
// buckets by the top bits of their hashes, and where each bucket starts,
// with a last element len(bs): a bucket is a few hundred entries at a
// million, which its CPU's cache holds as it is sorted. nw CPUs share the
// work.
func bucketByHash(bs []binding.Binding, nw int, mask uint32) ([]groupEntry, []int) {
	const bits = 11
	const shift = 32 - bits
	counts := make([][1 << bits]int, nw)
	part := func(w int) (int, int) { return w * len(bs) / nw, (w + 1) * len(bs) / nw }
	// Count, then place each record in its bucket, making it again
	// rather than keeping a second copy of them all (32 MB at a million).
	parallel(nw, func(w int) {
		lo, hi := part(w)
		c := &counts[w]
		for i := lo; i < hi; i++ {
			c[(groupHash(&bs[i])&mask)>>shift]++
		}
	})
	// Bucket by bucket, each CPU's entries after the CPUs' before it.
	starts := make([]int, 1<<bits+1)
	at := 0
	for d := range 1 << bits {
		starts[d] = at
		for w := range counts {
			c := counts[w][d]
			counts[w][d] = at
			at += c
		}
	}
	starts[1<<bits] = at
	out := make([]groupEntry, len(bs))
	parallel(nw, func(w int) {
		lo, hi := part(w)
		next := &counts[w]
		for i := lo; i < hi; i++ {
			g := newGroupEntry(&bs[i], int32(i))
			g.hash &= mask
			d := g.hash >> shift
			out[next[d]] = g
			next[d]++
		}
	})
	return out, starts
}
