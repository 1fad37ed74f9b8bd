package server

import (
	"sync"
	"time"
)

// Refusals are logged at most logBurst at once and logPerMinute a minute
// per uid; the rest are counted (Stats stay exact) and the number left out
// is logged with the next line of that uid.
const (
	logBurst     = 10
	logPerMinute = 10
	// logUIDs bounds the uids tracked; past it, uids whose allowance is
	// full again are forgotten (they would be allowed a line anyway).
	logUIDs = 4096
)

type logBucket struct {
	tokens     float64
	last       time.Time
	suppressed uint64
}

// logLimiter is a token bucket per uid.
type logLimiter struct {
	mu sync.Mutex
	m  map[uint32]*logBucket
	// now is time.Now, replaceable in tests.
	now func() time.Time
}

// allow reports whether a line for uid may be logged now, and how many
// lines of uid were left out since the last one logged.
func (l *logLimiter) allow(uid uint32) (ok bool, suppressed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	if l.m == nil {
		l.m = map[uint32]*logBucket{}
	}
	b := l.m[uid]
	if b == nil {
		if len(l.m) >= logUIDs {
			l.forget(now)
		}
		b = &logBucket{tokens: logBurst, last: now}
		l.m[uid] = b
	}
	b.tokens = min(logBurst, b.tokens+now.Sub(b.last).Minutes()*logPerMinute)
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// forget drops the uids whose allowance has refilled.
func (l *logLimiter) forget(now time.Time) {
	for uid, b := range l.m {
		if b.suppressed == 0 && b.tokens+now.Sub(b.last).Minutes()*logPerMinute >= logBurst {
			delete(l.m, uid)
		}
	}
}

// logLimited logs a warning about uid's request, unless uid has had its
// share of lines.
func (s *Server) logLimited(uid uint32, msg string, args ...any) {
	ok, suppressed := s.logLimit.allow(uid)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	s.log.Warn(msg, args...)
}
