package tests

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The packet-path benchmark (make bench-packet): what the sk_lookup program
// costs an operator in new TCP connections and UDP datagrams per second.
//
// One client namespace is joined by a veth pair to each of four server
// namespaces. The plain one has no program: its sockets are bound to the
// veth address as any service binds. The others have switchyard's program
// with 1, 100,000 and 1,048,576 bindings, one of which sends the veth
// address's port to a socket bound to 127.0.0.1, so the traffic reaches it
// only through the program. A round measures each program namespace once
// (the order rotates) and the plain one before and after each, PACKET_MS a
// window (default 500), PACKET_ROUNDS times (default 9). The rates are
// medians over the windows; each ratio is the median over the rounds of the
// program namespace's rate over the mean of the plain windows either side
// of it, so that a machine whose load drifts compares neighbours.
//
// The load generator is this process, in raw system calls on locked
// threads. TCP: two clients, each keeping 16 non-blocking connects in
// flight (epoll) and closing each connection as soon as it is established,
// with SO_LINGER 0 (a reset, so no TIME_WAIT state limits the rate). A
// connect not established within packetConnectTimeout is abandoned and
// counted: a lost SYN then costs one of 32 slots a moment, not a client a
// whole SYN retransmission timeout (1 s, twice a window), which is what
// made blocking clients measure the scheduler's luck rather than the
// receiver. UDP: two senders that use sendmmsg with 64 datagrams a call.
// The receive side runs in the veth's softirq on the sending CPU, and the
// receivers (accept4, recvmmsg) on the other. The kernel's own counters of
// each namespace say what was lost in the windows (SYN retransmissions,
// accept queue overflows, full receive buffers); they are reported beside
// the rates.

const (
	// packetInflight connects per TCP client; packetConnectTimeout is
	// how long one may take before it is abandoned.
	packetInflight       = 16
	packetConnectTimeout = 250 * time.Millisecond

	packetTCPPort = 8080
	packetUDPPort = 5353
	packetLabel   = "bench"
)

// packetServer is one server namespace and its sockets.
type packetServer struct {
	name   string
	n      int // bindings; 0: no program
	ns     *testenv.NetNS
	addr   netip.Addr // the veth address the client sends to
	d      *dispatch.Dispatcher
	tcp    int // listening socket
	udp    int
	accept atomic.Uint64
	recv   atomic.Uint64
	stop   atomic.Bool
	wg     sync.WaitGroup
}

func BenchmarkPacketPath(b *testing.B) {
	testenv.RequireRoot(b)
	rounds := envInt(b, "PACKET_ROUNDS", 9)
	window := time.Duration(envInt(b, "PACKET_MS", 500)) * time.Millisecond

	client := testenv.NewNetNS(b)
	servers := []*packetServer{{name: "plain"}, {name: "bindings=1", n: 1}, {name: "bindings=100000", n: 100000}, {name: "bindings=1048576", n: 1 << 20}}
	for i, s := range servers {
		s.ns = testenv.NewNetNS(b)
		s.addr = netip.AddrFrom4([4]byte{192, 168, byte(10 + i), 1})
		testenv.NewVethPair(b, client, s.ns, fmt.Sprintf("c%d", i), "s0",
			netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(10 + i), 2}), 24), netip.PrefixFrom(s.addr, 24))
		s.setUp(b)
	}
	for _, s := range servers {
		s.startReceivers()
	}
	b.Cleanup(func() {
		for _, s := range servers {
			s.close()
		}
	})

	results := map[string][]float64{} // "proto/name" -> rate of each window
	sent := map[string][]float64{}
	ratios := map[string][]float64{}       // "proto/name" -> ratio to plain of each round
	lost := map[string]map[string]uint64{} // "proto/name" -> counter -> sum over the windows
	plain, progs := servers[0], servers[1:]
	for _, proto := range []binding.Protocol{binding.TCP, binding.UDP} {
		if proto == binding.UDP {
			for _, s := range servers {
				s.target(b, binding.UDP)
			}
		}
		run := func(s *packetServer) float64 {
			got, tried, l := s.measure(b, client, proto, window)
			key := proto.String() + "/" + s.name
			results[key] = append(results[key], got)
			sent[key] = append(sent[key], tried)
			if lost[key] == nil {
				lost[key] = map[string]uint64{}
			}
			for k, v := range l {
				lost[key][k] += v
			}
			return got
		}
		// Each program namespace's window lies between two of the plain
		// one's, and its ratio is to their mean: a load that drifts
		// over a round falls on both sides alike.
		before := run(plain)
		for r := range rounds {
			for j := range progs {
				s := progs[(j+r)%len(progs)]
				got := run(s)
				after := run(plain)
				if mean := (before + after) / 2; mean > 0 {
					key := proto.String() + "/" + s.name
					ratios[key] = append(ratios[key], got/mean)
				}
				before = after
			}
		}
	}
	for _, s := range servers {
		if s.d == nil {
			continue
		}
		cs, _, err := s.d.Counters()
		if err != nil {
			b.Fatal(err)
		}
		if cs[packetLabel].Hits == 0 {
			b.Fatalf("%s: the program sent no traffic to label %s", s.name, packetLabel)
		}
	}

	for _, proto := range []string{"tcp", "udp"} {
		unit, sentUnit := "conns/s", "connects/s"
		if proto == "udp" {
			unit, sentUnit = "datagrams/s", "sent/s"
		}
		for _, s := range servers {
			key := proto + "/" + s.name
			got := results[key]
			b.Run(key, func(b *testing.B) {
				b.ReportMetric(median(got), unit)
				b.ReportMetric(median(sent[key]), sentUnit)
				for k, v := range lost[key] {
					b.ReportMetric(float64(v), k)
				}
			})
			if s.n == 0 {
				continue
			}
			b.Run(key+"/vs_plain", func(b *testing.B) { b.ReportMetric(median(ratios[key]), "ratio") })
		}
	}
}

// setUp opens the server's sockets and, for a program namespace, the
// dispatcher with its bindings (the TCP target among them).
func (s *packetServer) setUp(b *testing.B) {
	bindAddr := s.addr
	if s.n > 0 {
		bindAddr = netip.MustParseAddr("127.0.0.1")
	}
	if err := s.ns.Do(func() error {
		var err error
		if s.tcp, err = rawSocket(unix.SOCK_STREAM, bindAddr, packetTCPPort); err != nil {
			return err
		}
		if err := unix.Listen(s.tcp, 4096); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		s.udp, err = rawSocket(unix.SOCK_DGRAM, bindAddr, packetUDPPort)
		return err
	}); err != nil {
		b.Fatalf("%s: %v", s.name, err)
	}
	if s.n == 0 {
		return
	}
	d, err := dispatch.Open(s.ns.Path(), dispatch.Options{Root: testenv.BPFFS(b)})
	if err != nil {
		b.Fatal(err)
	}
	s.d = d
	bs := make([]binding.Binding, 0, s.n)
	for i := range s.n - 1 {
		bs = append(bs, testenv.ScaleBinding(i, 0))
	}
	bs = append(bs, s.targetBinding(binding.TCP))
	start := time.Now()
	if _, err := d.AddBindings(bs...); err != nil {
		b.Fatalf("%s: %v", s.name, err)
	}
	b.Logf("%s: %d bindings in %v", s.name, len(bs), time.Since(start))
	if _, err := d.RegisterFD(packetLabel, s.tcp); err != nil {
		b.Fatalf("%s: %v", s.name, err)
	}
}

func (s *packetServer) targetBinding(proto binding.Protocol) binding.Binding {
	port := uint16(packetTCPPort)
	if proto == binding.UDP {
		port = packetUDPPort
	}
	return binding.Binding{Label: packetLabel, Protocol: proto, Prefix: netip.PrefixFrom(s.addr, 32), Ports: binding.Ports{Lo: port, Hi: port}}
}

// target makes the binding of the veth address the one for proto, keeping
// the number of bindings.
func (s *packetServer) target(b *testing.B, proto binding.Protocol) {
	if s.d == nil {
		return
	}
	other := binding.TCP
	if proto == binding.TCP {
		other = binding.UDP
	}
	if err := s.d.RemoveBindings(s.targetBinding(other)); err != nil {
		b.Fatal(err)
	}
	if _, err := s.d.AddBindings(s.targetBinding(proto)); err != nil {
		b.Fatal(err)
	}
	fd := s.tcp
	if proto == binding.UDP {
		fd = s.udp
	}
	if _, err := s.d.RegisterFD(packetLabel, fd); err != nil {
		b.Fatalf("%s: %v", s.name, err)
	}
}

// rawSocket opens a socket of type typ bound to addr:port.
func rawSocket(typ int, addr netip.Addr, port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if typ == unix.SOCK_DGRAM {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.As4(), Port: port}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s:%d: %w", addr, port, err)
	}
	return fd, nil
}

// startReceivers runs an accepting and a receiving thread, counting what
// arrives until close.
func (s *packetServer) startReceivers() {
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		runtime.LockOSThread()
		for !s.stop.Load() {
			fd, _, err := unix.Accept4(s.tcp, unix.SOCK_CLOEXEC)
			if err != nil {
				if err == unix.EINTR || err == unix.ECONNABORTED {
					continue
				}
				return // shut down
			}
			s.accept.Add(1)
			unix.Close(fd)
		}
	}()
	go func() {
		defer s.wg.Done()
		runtime.LockOSThread()
		const batch = 64
		bufs := make([][64]byte, batch)
		iovs := make([]unix.Iovec, batch)
		hdrs := make([]unix.Mmsghdr, batch)
		for i := range hdrs {
			iovs[i].Base = &bufs[i][0]
			iovs[i].SetLen(len(bufs[i]))
			hdrs[i].Hdr.Iov = &iovs[i]
			hdrs[i].Hdr.SetIovlen(1)
		}
		for !s.stop.Load() {
			n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(s.udp), uintptr(unsafe.Pointer(&hdrs[0])), batch, unix.MSG_WAITFORONE, 0, 0)
			if errno == 0 {
				s.recv.Add(uint64(n))
			}
		}
	}()
}

func (s *packetServer) close() {
	s.stop.Store(true)
	unix.Shutdown(s.tcp, unix.SHUT_RDWR)
	s.wg.Wait()
	unix.Close(s.tcp)
	unix.Close(s.udp)
	if s.d != nil {
		s.d.Close()
	}
}

// measure runs the client side against s for window and returns what s
// received per second, what the clients sent (connects or datagrams) per
// second, and what was lost in the window: the namespaces' counters of
// losses that bear on proto, and the connects the clients abandoned.
func (s *packetServer) measure(b *testing.B, client *testenv.NetNS, proto binding.Protocol, window time.Duration) (got, tried float64, lost map[string]uint64) {
	var stop atomic.Bool
	var count, abandoned atomic.Uint64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	workers, work := 2, s.connectLoop
	counter := &s.accept
	if proto == binding.UDP {
		workers, work = 2, s.sendLoop
		counter = &s.recv
	}
	ready := make(chan struct{}, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- client.Do(func() error { return work(&stop, &count, &abandoned, ready) })
		}()
	}
	for range workers {
		<-ready
	}
	cBefore, sBefore := netCounters(b, client), netCounters(b, s.ns)
	before, start := counter.Load(), time.Now()
	count.Store(0)
	abandoned.Store(0)
	time.Sleep(window) // the measurement window, not a synchronisation
	after, elapsed, sentN, abandonedN := counter.Load(), time.Since(start), count.Load(), abandoned.Load()
	cAfter, sAfter := netCounters(b, client), netCounters(b, s.ns)
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			b.Fatalf("%s %s: %v", proto, s.name, err)
		}
	}
	lost = map[string]uint64{}
	if proto == binding.TCP {
		lost["syn-retrans"] = cAfter["TcpExt:TCPSynRetrans"] - cBefore["TcpExt:TCPSynRetrans"]
		lost["listen-drops"] = sAfter["TcpExt:ListenDrops"] - sBefore["TcpExt:ListenDrops"]
		lost["connects-abandoned"] = abandonedN
	} else {
		lost["rcvbuf-errors"] = sAfter["Udp:RcvbufErrors"] - sBefore["Udp:RcvbufErrors"]
	}
	return float64(after-before) / elapsed.Seconds(), float64(sentN) / elapsed.Seconds(), lost
}

// netCounters reads the SNMP counters of ns (/proc/net/snmp and netstat as
// a thread in it sees them), as "Group:Name" -> value.
func netCounters(b *testing.B, ns *testenv.NetNS) map[string]uint64 {
	out := map[string]uint64{}
	err := ns.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			data, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			// Each group is two lines: "Group: names..." and
			// "Group: values...".
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			for i := 0; i+1 < len(lines); i += 2 {
				names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				if len(names) != len(values) || len(names) == 0 || names[0] != values[0] {
					return fmt.Errorf("%s: unexpected lines %q and %q", f, lines[i], lines[i+1])
				}
				for j := 1; j < len(names); j++ {
					v, err := strconv.ParseInt(values[j], 10, 64)
					if err != nil {
						return fmt.Errorf("%s: %s: %w", f, names[j], err)
					}
					out[names[0]+names[j]] = uint64(v)
				}
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// connectLoop keeps packetInflight non-blocking connects to s's TCP port in
// flight and resets each connection as soon as it is established, counting
// them, until stop. A connect older than packetConnectTimeout is closed
// and counted in abandoned.
func (s *packetServer) connectLoop(stop *atomic.Bool, count, abandoned *atomic.Uint64, ready chan<- struct{}) error {
	sa := &unix.SockaddrInet4{Addr: s.addr.As4(), Port: packetTCPPort}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	defer unix.Close(ep)
	started := map[int]time.Time{} // fd -> when its connect began
	defer func() {
		for fd := range started {
			unix.Close(fd)
		}
	}()
	open := func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		switch err := unix.Connect(fd, sa); err {
		case unix.EINPROGRESS:
		case unix.EADDRNOTAVAIL, unix.EAGAIN:
			// Ports ran out for a moment: load, not failure.
			unix.Close(fd)
			return nil
		default:
			unix.Close(fd)
			return fmt.Errorf("connect %s:%d: %v", s.addr, packetTCPPort, err)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(fd)
			return fmt.Errorf("epoll add: %w", err)
		}
		started[fd] = time.Now()
		return nil
	}
	events := make([]unix.EpollEvent, packetInflight)
	lastSweep := time.Now()
	ready <- struct{}{}
	for !stop.Load() {
		for len(started) < packetInflight {
			if err := open(); err != nil {
				return err
			}
		}
		n, err := unix.EpollWait(ep, events, 10)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("epoll wait: %w", err)
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			unix.Close(fd) // established: a reset; else the attempt ends
			delete(started, fd)
			switch {
			case err != nil:
				return fmt.Errorf("SO_ERROR: %w", err)
			case soErr == 0:
				count.Add(1)
			case unix.Errno(soErr) == unix.ETIMEDOUT:
				abandoned.Add(1)
			default:
				return fmt.Errorf("connect %s:%d: %v", s.addr, packetTCPPort, unix.Errno(soErr))
			}
		}
		if now := time.Now(); now.Sub(lastSweep) > packetConnectTimeout/4 {
			lastSweep = now
			for fd, t := range started {
				if now.Sub(t) > packetConnectTimeout {
					unix.Close(fd)
					delete(started, fd)
					abandoned.Add(1)
				}
			}
		}
	}
	return nil
}

// sendLoop sends 32-byte datagrams to s's UDP port, 64 a call, until stop.
func (s *packetServer) sendLoop(stop *atomic.Bool, count, _ *atomic.Uint64, ready chan<- struct{}) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: s.addr.As4(), Port: packetUDPPort}); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	const batch = 64
	var payload [32]byte
	iov := unix.Iovec{Base: &payload[0]}
	iov.SetLen(len(payload))
	hdrs := make([]unix.Mmsghdr, batch)
	for i := range hdrs {
		hdrs[i].Hdr.Iov = &iov
		hdrs[i].Hdr.SetIovlen(1)
	}
	ready <- struct{}{}
	for !stop.Load() {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), batch, 0, 0, 0)
		switch errno {
		case 0:
			count.Add(uint64(n))
		case unix.ECONNREFUSED, unix.ENOBUFS, unix.EAGAIN, unix.EINTR:
			// An ICMP error from an earlier datagram, or a full queue.
		default:
			return fmt.Errorf("sendmmsg: %w", errno)
		}
	}
	return nil
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.SortFunc(s, cmp.Compare)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}
