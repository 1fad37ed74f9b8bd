package server

import (
	"sync"
	"sync/atomic"
	"weak"
)

// Reads of the binding set are served from immutable snapshots, so that
// listings neither queue behind each other nor hold the dispatcher's lock
// while a client reads: before, each ListBindings built its list under the
// dispatcher's one mutex, and 64 users listing at once made root's status
// wait half a minute.
//
// Every change the server makes to the bindings bumps gen when it is done.
// A snapshot remembers the gen it was built at; a read whose snapshot is
// older rebuilds it once (readers arriving meanwhile wait for that one
// build, not for each other), and every later read until the next change
// takes it without a lock, as long as the snapshot lives: a listing over
// keptListing is kept only while some reader holds it (see cache), so an
// idle daemon does not keep a copy of a million bindings. The daemon is the only writer of
// its namespace's bindings, so gen sees every change.

// snapshot is a value built from the bindings at one gen.
type snapshot[T any] struct {
	gen uint64
	v   T
}

// cache holds the latest snapshot of one kind. A snapshot that keep
// rejects is held weakly, only while some reader holds it: a listing of a
// million bindings is tens of megabytes that an idle daemon need not keep,
// while readers that overlap (a flood of listings) share one. With keep
// nil every snapshot is kept.
type cache[T any] struct {
	mu     sync.Mutex // one build at a time
	keep   func(T) bool
	cur    atomic.Pointer[weak.Pointer[snapshot[T]]]
	strong atomic.Pointer[snapshot[T]] // the snapshot, if kept
}

func (c *cache[T]) load() *snapshot[T] {
	if s := c.strong.Load(); s != nil {
		return s
	}
	if w := c.cur.Load(); w != nil {
		return w.Value()
	}
	return nil
}

// get returns a snapshot at least as new as gen, building one if needed.
// The caller keeps the snapshot reachable while it uses its value.
func (c *cache[T]) get(gen *atomic.Uint64, build func() (T, error)) (*snapshot[T], error) {
	g := gen.Load()
	if s := c.load(); s != nil && s.gen >= g {
		return s, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.load(); s != nil && s.gen >= g {
		return s, nil
	}
	// Read gen again: a build that starts after a change saw it, and may
	// carry its number.
	g = gen.Load()
	v, err := build()
	if err != nil {
		return nil, err
	}
	s := &snapshot[T]{gen: g, v: v}
	w := weak.Make(s)
	c.cur.Store(&w)
	if c.keep == nil || c.keep(v) {
		c.strong.Store(s)
	} else {
		c.strong.Store(nil)
	}
	return s, nil
}

// snapshots are the server's cached reads.
type snapshots struct {
	gen      atomic.Uint64
	bindings cache[listing] // kept up to keptListing
	counts   cache[map[string]int]
}

// keptListing is the largest listing (reply bytes) kept between reads:
// some 150,000 bindings. Larger ones live only while read.
const keptListing = 16 << 20

// changed marks the bindings changed; call it after every change, also a
// failed one.
func (s *snapshots) changed() { s.gen.Add(1) }
