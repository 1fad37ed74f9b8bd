package server

import (
	"sync"
	"sync/atomic"
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
// takes it without a lock. The daemon is the only writer of its
// namespace's bindings, so gen sees every change.

// snapshot is a value built from the bindings at one gen.
type snapshot[T any] struct {
	gen uint64
	v   T
}

// cache holds the latest snapshot of one kind.
type cache[T any] struct {
	mu  sync.Mutex // one build at a time
	cur atomic.Pointer[snapshot[T]]
}

// get returns a snapshot at least as new as gen, building one if needed.
func (c *cache[T]) get(gen *atomic.Uint64, build func() (T, error)) (T, error) {
	g := gen.Load()
	if s := c.cur.Load(); s != nil && s.gen >= g {
		return s.v, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.cur.Load(); s != nil && s.gen >= g {
		return s.v, nil
	}
	// Read gen again: a build that starts after a change saw it, and may
	// carry its number.
	g = gen.Load()
	v, err := build()
	if err != nil {
		var zero T
		return zero, err
	}
	c.cur.Store(&snapshot[T]{gen: g, v: v})
	return v, nil
}

// snapshots are the server's cached reads.
type snapshots struct {
	gen      atomic.Uint64
	bindings cache[listing]
	counts   cache[map[string]int]
}

// changed marks the bindings changed; call it after every change, also a
// failed one.
func (s *snapshots) changed() { s.gen.Add(1) }
