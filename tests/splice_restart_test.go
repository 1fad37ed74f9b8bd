package tests

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sinkService answers each connection, once the client half-closes, with
// the number of bytes it received and their SHA-256.
func sinkService(t *testing.T, ln net.Listener) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil {
					fmt.Fprintf(c, "error %v\n", err)
					return
				}
				fmt.Fprintf(c, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
			}()
		}
	}()
}

// streamer sends random bytes on one connection and remembers their hash.
type streamer struct {
	c    *net.TCPConn
	h    hashWriter
	n    int64
	rand *rand.ChaCha8
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

func newStreamer(t *testing.T, w *world, addr string, seed byte) *streamer {
	t.Helper()
	c, err := w.ns.DialTCP(addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &streamer{c: c.(*net.TCPConn), h: sha256.New(), rand: rand.NewChaCha8([32]byte{seed})}
}

// send writes n bytes.
func (s *streamer) send(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for n > 0 {
		b := buf[:min(n, len(buf))]
		s.rand.Read(b)
		s.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.c.Write(b); err != nil {
			t.Fatalf("send after %d bytes: %v", s.n, err)
		}
		s.h.Write(b)
		s.n += int64(len(b))
		n -= len(b)
	}
}

// finish half-closes and checks the sink's answer against what was sent.
func (s *streamer) finish(t *testing.T) {
	t.Helper()
	if err := s.c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := bufio.NewReader(s.c).ReadString('\n')
	want := fmt.Sprintf("%d %s\n", s.n, hex.EncodeToString(s.h.Sum(nil)))
	if err != nil || got != want {
		t.Errorf("the upstream got %q (%v), want %q", got, err, want)
	}
}

var workerPID = regexp.MustCompile(`worker pid (\d+)`)

// spliceWorker returns the pid of the worker that serves label, from
// status.
func (w *world) spliceWorker(label string) int {
	w.t.Helper()
	var st struct {
		Labels []struct {
			PolicyState string `json:"policy_state"`
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(w.mustCLI("status", label, "-o", "json")), &st); err != nil || len(st.Labels) != 1 {
		w.t.Fatalf("status %s: %v %+v", label, err, st)
	}
	m := workerPID.FindStringSubmatch(st.Labels[0].PolicyState)
	if m == nil {
		w.t.Fatalf("status of %s names no splice worker: %q", label, st.Labels[0].PolicyState)
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// A spliced connection outlives the daemon: it keeps flowing, losing
// nothing, while the daemon stops with SIGTERM, is killed, and is upgraded
// to another build. The restarted daemon adopts the worker of its own
// build; the upgraded one starts a worker of its own for new connections,
// and the old one exits once its last connection ends. New connections
// work after each step.
func TestSpliceSurvivesRestartAndUpgrade(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	upstream := w.ns.ListenTCP(t, "127.0.0.1:0")
	sinkService(t, upstream)
	w.mustCLI("bind", "proxied", "tcp", "10.6.0.0/24", "*")
	w.mustCLI("policy", "proxied", "splice", upstream.Addr().String())
	first := w.spliceWorker("proxied")

	short := func(seed byte) {
		t.Helper()
		s := newStreamer(t, w, "10.6.0.2:443", seed)
		s.send(t, 256<<10)
		s.finish(t)
	}
	long := newStreamer(t, w, "10.6.0.1:80", 1)
	long.send(t, 4<<20)

	w.d.stop(t, syscall.SIGTERM)
	long.send(t, 4<<20) // no daemon at all
	w.d = w.startDaemon()
	long.send(t, 4<<20)
	if pid := w.spliceWorker("proxied"); pid != first {
		t.Errorf("after a restart the splice runs in worker %d, want the adopted %d", pid, first)
	}
	short(2)

	w.d.stop(t, syscall.SIGKILL)
	long.send(t, 4<<20)
	w.d = w.startDaemon()
	long.send(t, 4<<20)
	short(3)

	w.d.stop(t, syscall.SIGTERM)
	w.d = w.startDaemonBin(bin.next)
	if v := w.mustCLI("version"); !strings.Contains(v, "next") {
		t.Fatalf("upgraded daemon says %q", v)
	}
	second := w.spliceWorker("proxied")
	if second == first {
		t.Errorf("the upgraded daemon adopted worker %d of the older build", first)
	}
	short(4) // to the new worker
	long.send(t, 4<<20)
	pidfd, err := unix.PidfdOpen(first, 0)
	if err != nil {
		t.Fatalf("old worker %d: %v", first, err)
	}
	defer unix.Close(pidfd)
	long.finish(t)
	// The old worker exits once its last connection has ended.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, 10000); n != 1 {
		t.Errorf("old worker %d still runs 10s after its last connection ended", first)
	}
	if socks, _ := filepath.Glob(w.control + ".splice/*.sock"); len(socks) != 1 {
		t.Errorf("worker sockets after the old worker ended: %v, want one", socks)
	}
	short(5)
}
