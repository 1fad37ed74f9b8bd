package server

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/control"
)

func TestConnTableLimits(t *testing.T) {
	var tab connTable
	var held []*conn
	admit := func(uid uint32) error {
		c := &conn{uid: uid}
		err := tab.admit(c, 10)
		if err == nil {
			held = append(held, c)
		}
		return err
	}
	for i := range maxConnsPerUID {
		if err := admit(1000); err != nil {
			t.Fatalf("connection %d of uid 1000: %v", i, err)
		}
	}
	if err := admit(1000); err == nil || !strings.Contains(err.Error(), "uid 1000 has 32 control connections open") {
		t.Fatalf("connection past the per-uid cap: %v", err)
	}
	// Other users fill what is theirs, then only root gets in.
	for uid := uint32(2000); tab.nonRoot < maxConns-rootReserve; uid++ {
		for range maxConnsPerUID {
			if tab.nonRoot == maxConns-rootReserve {
				break
			}
			if err := admit(uid); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := admit(99999); err == nil || !strings.Contains(err.Error(), "users other than root") {
		t.Fatalf("connection past the non-root total: %v", err)
	}
	for i := range rootReserve {
		if err := admit(0); err != nil {
			t.Fatalf("root's connection %d with others at their cap: %v", i, err)
		}
	}
	if err := admit(0); err == nil {
		t.Fatal("root's connection past the total was admitted")
	}
	for _, c := range held {
		tab.remove(c)
	}
	if tab.total != 0 || tab.nonRoot != 0 || len(tab.byUID) != 0 {
		t.Fatalf("after removing all: total %d, non-root %d, %d uids", tab.total, tab.nonRoot, len(tab.byUID))
	}
}

func TestConnTableDescriptorReserve(t *testing.T) {
	var tab connTable
	lim, reserve := fdLimit()
	if err := tab.admit(&conn{uid: 1000}, lim-reserve); err == nil || !strings.Contains(err.Error(), "short of file descriptors") {
		t.Fatalf("non-root connection in the reserved descriptors: %v", err)
	}
	if err := tab.admit(&conn{uid: 0}, lim-1); err != nil {
		t.Fatalf("root's connection in the reserved descriptors: %v", err)
	}
}

func TestReplyBudget(t *testing.T) {
	var tab connTable
	tab.admit(&conn{uid: 5}, 1)
	if err := tab.reserve(5, replyBudget-10); err != nil {
		t.Fatal(err)
	}
	if err := tab.reserve(5, 11); err == nil || !strings.Contains(err.Error(), "read your replies") {
		t.Fatalf("reply past the budget: %v", err)
	}
	if err := tab.reserve(0, 1<<30); err != nil {
		t.Fatalf("root has no budget: %v", err)
	}
	tab.release(5, replyBudget-10)
	if err := tab.reserve(5, replyBudget); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestLogLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := logLimiter{now: func() time.Time { return now }}
	logged := 0
	for range 1000 {
		if ok, _ := l.allow(7); ok {
			logged++
		}
	}
	if logged != logBurst {
		t.Fatalf("%d lines of 1000 at once, want %d", logged, logBurst)
	}
	if ok, _ := l.allow(8); !ok {
		t.Fatal("another uid is limited by uid 7's lines")
	}
	now = now.Add(time.Minute / logPerMinute)
	ok, suppressed := l.allow(7)
	if !ok || suppressed != 1000-logBurst {
		t.Fatalf("after %v: allowed %v, suppressed %d, want true and %d", time.Minute/logPerMinute, ok, suppressed, 1000-logBurst)
	}
	// The table of uids stays bounded.
	for uid := range uint32(3 * logUIDs) {
		now = now.Add(time.Second)
		l.allow(100 + uid)
	}
	if len(l.m) > logUIDs+1 {
		t.Fatalf("%d uids tracked, want at most %d", len(l.m), logUIDs+1)
	}
}

func TestCacheSnapshots(t *testing.T) {
	var gen atomic.Uint64
	builds := 0
	build := func() ([]int, error) { builds++; return make([]int, 1<<20), nil }
	c := cache[[]int]{keep: func(v []int) bool { return len(v) < 100 }}
	a, _ := c.get(&gen, build)
	b, _ := c.get(&gen, build)
	if a != b || builds != 1 {
		t.Fatalf("two reads at one gen: same snapshot %v, %d builds", a == b, builds)
	}
	gen.Add(1)
	if n, _ := c.get(&gen, build); n == a || builds != 2 {
		t.Fatalf("read after a change: new snapshot %v, %d builds", n != a, builds)
	}
	runtime.KeepAlive(a)
	// With no reader holding it, a weak snapshot goes at the next GC.
	runtime.GC()
	if c.load() != nil {
		t.Error("a weak snapshot no reader holds survived a GC")
	}
	// A small one is kept.
	gen.Add(1)
	if _, err := c.get(&gen, func() ([]int, error) { return make([]int, 10), nil }); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	if c.load() == nil {
		t.Error("a kept snapshot went at a GC")
	}
	gen.Add(1)
	if _, err := c.get(&gen, func() ([]int, error) { return nil, errors.New("boom") }); err == nil {
		t.Error("a failed build gave a snapshot")
	}
}

func TestShedClosesEachOnce(t *testing.T) {
	var tab connTable
	var cs []*conn
	for _, uid := range []uint32{0, 7, 7, 8} {
		c := &conn{uid: uid, c: pairConn(t)}
		if err := tab.admit(c, 3); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// uid 7 has the most; then uid 8 and 7's other one; never root's.
	for i := range 3 {
		if !tab.shed() {
			t.Fatalf("shed %d found nothing to close", i)
		}
	}
	if tab.shed() {
		t.Fatal("shed closed a fourth connection: root's, or one already closed")
	}
	if cs[0].shed || !cs[1].shed || !cs[2].shed || !cs[3].shed {
		t.Fatalf("shed: root %v, uid 7 %v %v, uid 8 %v", cs[0].shed, cs[1].shed, cs[2].shed, cs[3].shed)
	}
}

// pairConn is one end of a connected SOCK_SEQPACKET pair, closed with the
// test.
func pairConn(t *testing.T) *control.Conn {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "pair")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := control.NewConn(nc.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
