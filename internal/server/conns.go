package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/control"
)

// Limits on what local users can make the control server hold. Root is
// trusted and only bounded in total; every other uid is bounded per uid
// and, all together, below the total, so that root always has room. The
// README's "Threat model" lists them.
const (
	// maxConns caps control connections held at once, root's included.
	maxConns = 1024
	// rootReserve of maxConns only root may use.
	rootReserve = 64
	// maxConnsPerUID caps the connections of one non-root uid.
	maxConnsPerUID = 32
	// fdReserveMax is the most descriptors kept free for root: a non-root
	// connection whose descriptor falls in the top min(fdReserveMax,
	// RLIMIT_NOFILE/4) of the daemon's descriptor limit is turned away.
	// The kernel gives the lowest free descriptor, so a connection's
	// number says how many are in use.
	fdReserveMax = 64

	// idleTimeout is how long a connection may wait for its next request
	// (the whole request must arrive in that time); one that says nothing
	// does not hold the daemon's resources.
	idleTimeout = 30 * time.Second
	// frameTimeout is how long a peer may take to accept each datagram of
	// a reply.
	frameTimeout = 10 * time.Second
	// replyTimeout is how long a non-root peer may take to read a whole
	// reply; root's replies are bounded per datagram only, so a listing of
	// a million bindings may take as long as it needs while root reads.
	replyTimeout = 30 * time.Second
	// replyBudget caps, per non-root uid, the bytes of encoded replies
	// waiting to be read (ListBindings streams and does not count: it holds
	// one datagram). A status reply over the rest of the budget is refused.
	replyBudget = 16 << 20
)

// conn is one served control connection.
type conn struct {
	c    *control.Conn
	uid  uint32
	busy atomic.Bool // a request is being handled or answered
	shed bool        // closed by shed; guarded by connTable.mu
}

// connTable tracks the connections served, for the limits.
type connTable struct {
	mu      sync.Mutex
	byUID   map[uint32]map[*conn]struct{}
	total   int
	nonRoot int
	// inFlight holds each non-root uid's encoded reply bytes not yet
	// sent.
	inFlight map[uint32]int
}

// admit adds c, or says why it may not be served.
func (t *connTable) admit(c *conn, fd int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byUID == nil {
		t.byUID = map[uint32]map[*conn]struct{}{}
		t.inFlight = map[uint32]int{}
	}
	if c.uid != 0 {
		switch {
		case len(t.byUID[c.uid]) >= maxConnsPerUID:
			return fmt.Errorf("uid %d has %d control connections open, the most one user may have; close some", c.uid, maxConnsPerUID)
		case t.nonRoot >= maxConns-rootReserve:
			return fmt.Errorf("the daemon serves %d control connections of users other than root, the most it will; try again later", maxConns-rootReserve)
		}
		if lim, reserve := fdLimit(); fd >= lim-reserve {
			return fmt.Errorf("the daemon is short of file descriptors (%d of %d in use); try again later", fd, lim)
		}
	} else if t.total >= maxConns {
		return fmt.Errorf("the daemon serves %d control connections, the most it will; close some", maxConns)
	}
	m := t.byUID[c.uid]
	if m == nil {
		m = map[*conn]struct{}{}
		t.byUID[c.uid] = m
	}
	m[c] = struct{}{}
	t.total++
	if c.uid != 0 {
		t.nonRoot++
	}
	return nil
}

func (t *connTable) remove(c *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.byUID[c.uid]
	if _, ok := m[c]; !ok {
		return
	}
	delete(m, c)
	if len(m) == 0 {
		delete(t.byUID, c.uid)
	}
	t.total--
	if c.uid != 0 {
		t.nonRoot--
	}
}

// shed closes one non-root connection, preferring an idle one of the uid
// with the most, to free a descriptor. It reports whether it closed one.
func (t *connTable) shed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	// A connection closed by an earlier shed may not have left the table
	// yet: it frees no more descriptors, so it is not chosen again.
	live := func(m map[*conn]struct{}) int {
		n := 0
		for c := range m {
			if !c.shed {
				n++
			}
		}
		return n
	}
	var uid uint32
	most := 0
	for u, m := range t.byUID {
		if n := live(m); u != 0 && n > most {
			uid, most = u, n
		}
	}
	if most == 0 {
		return false
	}
	var victim *conn
	for c := range t.byUID[uid] {
		if c.shed {
			continue
		}
		victim = c
		if !c.busy.Load() {
			break
		}
	}
	victim.shed = true
	victim.c.Close()
	return true
}

// reserve takes n bytes of uid's reply budget; release gives them back.
func (t *connTable) reserve(uid uint32, n int) error {
	if uid == 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inFlight[uid]+n > replyBudget {
		return control.Errorf(control.CodeInvalid, "uid %d has %d bytes of replies unread; a %d byte reply would pass the limit of %d: read your replies before asking again", uid, t.inFlight[uid], n, replyBudget)
	}
	t.inFlight[uid] += n
	return nil
}

func (t *connTable) release(uid uint32, n int) {
	if uid == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inFlight[uid] -= n; t.inFlight[uid] <= 0 {
		delete(t.inFlight, uid)
	}
}

// fdLimit returns the daemon's current descriptor limit (it may be lowered
// while the daemon runs, with prlimit) and how many of them to keep for
// root.
func fdLimit() (limit, reserve int) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1 << 30, fdReserveMax
	}
	limit = int(rl.Cur)
	return limit, min(fdReserveMax, limit/4)
}

// acceptBackoff is the longest pause after a failed accept.
const acceptBackoff = time.Second

// Serve accepts control connections until ctx is done, then waits for the
// requests under way to finish. No accept error ends it: out of
// descriptors (EMFILE, ENFILE) it closes a non-root connection to make
// room, else it pauses (5 ms, doubling up to 1 s) and tries again.
func (s *Server) Serve(ctx context.Context, ln *control.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.wg.Wait()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.Stats.AcceptErrors.Add(1)
			if (errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)) && s.conns.shed() {
				s.logLimited(0, "control accept: out of file descriptors; closed a connection of a user other than root", "err", err)
				continue
			}
			delay = min(max(2*delay, 5*time.Millisecond), acceptBackoff)
			s.logLimited(0, "control accept failed; pausing", "err", err, "pause", delay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}
