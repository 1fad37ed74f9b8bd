package policy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/splice"
)

// helperMain is the helper process: "server RECV", "client ADDR SEED N",
// or "splice-worker FLAGS..." (WorkerMain, see workerOptions).
func helperMain(role string, args []string) int {
	switch role {
	case "splice-worker":
		return splice.WorkerMain(args)
	case "server":
		return serverMain(args[0])
	case "client":
		seed, _ := strconv.ParseUint(args[1], 10, 64)
		n, _ := strconv.ParseUint(args[2], 10, 64)
		return clientMain(args[0], seed, n)
	}
	return 2
}

// serverMain listens (plain TCP, never MPTCP), reports the listener's fd,
// and for each connection sends a greeting byte, reads to end of stream
// with recv ("read", "readv" or "splice"), then replies with the byte
// count and SHA-256 of what it got, and closes.
func serverMain(recv string) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	mustf(err, "socket")
	busyPoll(fd)
	mustf(unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}), "bind")
	mustf(unix.Listen(fd, 128), "listen")
	sa, err := unix.Getsockname(fd)
	mustf(err, "getsockname")
	fmt.Printf("listening %d %d\n", fd, sa.(*unix.SockaddrInet4).Port)
	for {
		c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		mustf(err, "accept")
		go serveConn(c, recv)
	}
}

func serveConn(c int, recv string) {
	defer unix.Close(c)
	// A greeting first: see clientMain.
	if _, err := unix.Write(c, []byte{greeting}); err != nil {
		fmt.Fprintf(os.Stderr, "server: greeting: %v\n", err)
		return
	}
	h := sha256.New()
	var total uint64
	buf := make([]byte, 256<<10)
	var pr, pw int
	if recv == "splice" {
		var p [2]int
		mustf(unix.Pipe2(p[:], unix.O_CLOEXEC), "pipe")
		pr, pw = p[0], p[1]
		defer unix.Close(pr)
		defer unix.Close(pw)
	}
	rnd := rand.New(rand.NewPCG(uint64(c), 7))
	for {
		var n int
		var err error
		switch recv {
		case "read":
			n, err = unix.Read(c, buf[:1+rnd.IntN(len(buf))])
		case "readv":
			a := 1 + rnd.IntN(4096)
			b := a + 1 + rnd.IntN(64<<10)
			n, err = unix.Readv(c, [][]byte{buf[:a], buf[a:b], buf[b:]})
		case "splice":
			var k int64
			k, err = unix.Splice(c, nil, pw, nil, 1+rnd.IntN(128<<10), unix.SPLICE_F_MOVE)
			n = int(k)
			for k > 0 && err == nil {
				m, rerr := unix.Read(pr, buf[:min(int(k), len(buf))])
				if rerr == unix.EINTR {
					continue
				}
				if rerr != nil {
					err = rerr
					break
				}
				h.Write(buf[:m])
				k -= int64(m)
			}
		}
		if err == unix.EINTR || err == unix.EAGAIN {
			// EAGAIN on a blocking socket: see clientMain.
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "server: %s: %v\n", recv, err)
			return
		}
		if n == 0 {
			break
		}
		if recv != "splice" {
			h.Write(buf[:n])
		}
		total += uint64(n)
	}
	reply := fmt.Sprintf("%d %s\n", total, hex.EncodeToString(h.Sum(nil)))
	unix.Write(c, []byte(reply))
}

// clientMain connects, sends n bytes of the seeded stream in random write
// sizes, half-closes and prints "ok N HASH" if the server's reply matches
// what was sent, else what the server said.
func clientMain(addr string, seed, n uint64) int {
	ap := netip.MustParseAddrPort(addr)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	mustf(err, "socket")
	busyPoll(fd)
	mustf(unix.Connect(fd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}), "connect %s", addr)
	// The client writes only once the server's greeting arrived. With
	// bypass, that proves the server's end has joined the sockhash (it
	// joins when its handshake completes, which the client's connect may
	// return before): data the client sent the normal way before that
	// would keep its connection off bypass for good under TrustReaders.
	g := make([]byte, 1)
	for {
		k, err := unix.Read(fd, g)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil || k != 1 || g[0] != greeting {
			fmt.Printf("error reading the greeting: %v (%d bytes, %q)\n", err, k, g[:k])
			return 1
		}
		break
	}
	if os.Getenv("SY_CLIENT_SAY_CONNECTED") != "" {
		fmt.Println("connected")
	}
	s := newStream(seed)
	rnd := rand.New(rand.NewPCG(seed, 9))
	pace, _ := time.ParseDuration(os.Getenv("SY_CLIENT_PACE"))
	h := sha256.New()
	buf := make([]byte, 1<<20)
	left := n
	for left > 0 {
		k := min(left, uint64(1+rnd.IntN(len(buf))))
		if rnd.IntN(4) == 0 {
			k = min(left, uint64(1+rnd.IntN(1500)))
		}
		b := buf[:k]
		s.fill(b)
		h.Write(b)
		for len(b) > 0 {
			w, err := unix.Write(fd, b)
			if err == unix.EINTR {
				continue
			}
			mustf(err, "write")
			b = b[w:]
		}
		left -= k
		if pace > 0 {
			time.Sleep(pace)
		}
	}
	if os.Getenv("SY_CLIENT_HOLD") != "" {
		// Everything is sent; the connection stays open until the
		// test writes a line.
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fmt.Printf("error waiting to close: %v\n", err)
			return 1
		}
	}
	mustf(unix.Shutdown(fd, unix.SHUT_WR), "shutdown")
	var reply []byte
	rb := make([]byte, 256)
	for !strings.HasSuffix(string(reply), "\n") {
		k, err := unix.Read(fd, rb)
		if err == unix.EINTR || err == unix.EAGAIN {
			// EAGAIN on a blocking socket: tcp_bpf_recvmsg returns it
			// when a signal (Go's preemption) interrupts the wait.
			continue
		}
		if err != nil {
			fmt.Printf("error reading reply: %v\n", err)
			return 1
		}
		if k == 0 {
			fmt.Printf("error reading reply: end of stream after %q\n", reply)
			return 1
		}
		reply = append(reply, rb[:k]...)
	}
	want := fmt.Sprintf("%d %s", n, hex.EncodeToString(h.Sum(nil)))
	if strings.TrimSpace(string(reply)) != want {
		fmt.Printf("server got %s\n", strings.TrimSpace(string(reply)))
		return 1
	}
	fmt.Printf("ok %s\n", want)
	return 0
}

// greeting is the byte the server helper sends first on each connection.
const greeting = '+'

// busyPoll turns on busy polling for fd's reads (SO_BUSY_POLL) for the
// microseconds SY_BUSY_POLL says, if set.
func busyPoll(fd int) {
	if v := os.Getenv("SY_BUSY_POLL"); v != "" {
		us, err := strconv.Atoi(v)
		mustf(err, "SY_BUSY_POLL")
		mustf(unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUSY_POLL, us), "SO_BUSY_POLL")
	}
}
