package tests

import (
	"cmp"
	"fmt"
	"io"
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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The packet-path benchmark (make bench-packet): what the sk_lookup program
// costs an operator in new TCP connections and UDP datagrams per second.
//
// One client namespace is joined by a veth pair to each server namespace.
// The plain one has no program: its sockets are bound to the veth address
// as any service binds. Three have switchyard's program with 1, 100,000
// and 1,048,576 bindings, one of which sends the veth address's port to a
// socket bound to 127.0.0.1, so the traffic reaches it only through the
// program. Three more, for UDP only, are references (packetRef): an empty
// program, a program that only assigns the one socket of a sockmap, and no
// program with the plainly bound socket in a sockmap. The sockets,
// receiving threads and veths are the same in every namespace.
//
// TCP: the clients saturate the server. A round measures each program
// namespace once (the order rotates) and the plain one before and after
// each, PACKET_MS a window (default 500), PACKET_ROUNDS times (default 9).
// The rates are medians over the windows; each ratio is the median over
// the rounds of the program namespace's rate over the mean of the plain
// windows either side of it, so that a machine whose load drifts compares
// neighbours. Two clients each keep 16 non-blocking connects in flight
// (epoll) and close each connection as soon as it is established, with
// SO_LINGER 0 (a reset, so no TIME_WAIT state limits the rate). A connect
// not established within packetConnectTimeout is abandoned and counted: a
// lost SYN then costs one of 32 slots a moment, not a client a whole SYN
// retransmission timeout (1 s, twice a window), which is what made
// blocking clients measure the scheduler's luck rather than the receiver.
//
// UDP: saturating senders measured the CPU share the receiving thread got
// on a shared machine, not the path (the rates followed what the senders
// managed to send, and the receive buffers overflowed in some namespaces
// and not others). So one sender is paced (PACKET_UDP_RATE datagrams/s in
// all, default 100,000, far below what the receivers take) and sends
// bursts of 64 to the seven namespaces in turn: all are measured at
// once, under the same load, 3 x PACKET_ROUNDS windows. What is compared is
// the receiving host's CPU time per datagram: the veth's NAPI thread (the
// whole receive path, lookup included; see packet_napi_test.go) plus the
// receiving thread (recvmmsg), both pinned to the last CPU and the sender
// to the first. Its inverse is datagrams per second of CPU, the rate one
// CPU can receive at; a ratio is a window's plain cost over the program
// namespace's, median over the windows (vs_assign_only: the assign-only
// program's cost over switchyard's, what switchyard's own lookup adds;
// vs_plain_in_sockmap: the plainly bound socket's cost when a sockmap holds
// it, as one holds every registered socket, over switchyard's, what the
// program adds to the socket switchyard serves).
//
// TCP again, the same way (tcp-cpu): one thread, paced (PACKET_TCP_RATE
// connections/s in all, default 8,000), starts connects to plain and
// switchyard's namespaces in turn and resets each once established; the
// cost of a connection is the server's NAPI thread (the SYN and its
// lookup, the handshake's ACK, the reset) plus its accepting thread, per
// connection accepted. The client's veth end runs threaded NAPI too, on
// the first CPU, so that the client's half of the handshake is not
// charged to the server.
//
// The kernel's own counters of each namespace say what was lost in the
// windows (SYN retransmissions, accept queue overflows, full receive
// buffers); they are reported beside the rates.

const (
	// packetInflight connects per TCP client; packetConnectTimeout is
	// how long one may take before it is abandoned.
	packetInflight       = 16
	packetConnectTimeout = 250 * time.Millisecond

	packetTCPPort = 8080
	packetUDPPort = 5353
	packetLabel   = "bench"

	// packetServerIf is the veth end in each server namespace.
	packetServerIf = "s0"
	// packetUDPRate is the default datagrams/s of the paced sender
	// (PACKET_UDP_RATE); packetTCPRate the connections/s of the paced
	// TCP client (PACKET_TCP_RATE).
	packetUDPRate = 100000
	packetTCPRate = 8000
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

	recvTID    atomic.Int64 // the UDP receiving thread
	acceptTID  atomic.Int64 // the accepting thread
	napiPID    int          // the server veth's NAPI thread
	clientNAPI int          // the client veth's NAPI thread

	// ref is a reference program in place of switchyard's (n is 0),
	// measured for UDP only; refs holds what it loaded.
	ref  packetRef
	refs []io.Closer
}

// packetRef names a reference setup of the UDP half, which places
// switchyard's cost between the kernel's and its own: the hook with a
// program that does nothing; a program that does only what every
// sockmap dispatcher must (look up a socket, assign it, release it); and
// no program, but the plainly bound socket held in a sockmap, which is
// enough for the kernel to route its receive calls through sockmap's
// (net/ipv4/udp_bpf.c, udp_bpf_recvmsg).
type packetRef int

const (
	refNone   packetRef = iota
	refEmpty            // returns SK_PASS; the socket is bound to the veth address
	refAssign           // assigns the one socket of a sockmap, bound to 127.0.0.1
	refInMap            // no program; the socket, bound to the veth address, is in a sockmap
)

// cpuWindow is what one paced window measured in one namespace. A unit is
// a datagram, or a connection.
type cpuWindow struct {
	got, sent  float64           // units a second received (accepted), and sent (established at the client)
	napi, recv float64           // ns of CPU per unit received: the NAPI thread, the receiving (accepting) thread
	lost       map[string]uint64 // what the window lost, by counter
}

// cost is the receiving host's CPU time per unit.
func (w cpuWindow) cost() float64 { return w.napi + w.recv }

func BenchmarkPacketPath(b *testing.B) {
	testenv.RequireRoot(b)
	rounds := envInt(b, "PACKET_ROUNDS", 9)
	window := time.Duration(envInt(b, "PACKET_MS", 500)) * time.Millisecond
	udpRate := float64(envInt(b, "PACKET_UDP_RATE", packetUDPRate))

	client := testenv.NewNetNS(b)
	servers := []*packetServer{
		{name: "plain"},
		{name: "bindings=1", n: 1}, {name: "bindings=100000", n: 100000}, {name: "bindings=1048576", n: 1 << 20},
		{name: "empty-program", ref: refEmpty}, {name: "assign-only", ref: refAssign}, {name: "plain-in-sockmap", ref: refInMap},
	}
	for i, s := range servers {
		s.ns = testenv.NewNetNS(b)
		s.addr = netip.AddrFrom4([4]byte{192, 168, byte(10 + i), 1})
		testenv.NewVethPair(b, client, s.ns, fmt.Sprintf("c%d", i), packetServerIf,
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
	plain, progs := servers[0], servers[1:4] // progs: switchyard's

	// interleave measures every program namespace once a round, the
	// order rotating, each window between two of the plain namespace's,
	// and returns each program namespace's score over the mean of the
	// plain windows either side of it, a value a round: a load that
	// drifts over a round falls on both sides alike. score is higher
	// for a faster path.
	interleave := func(score func(s *packetServer) float64) map[string][]float64 {
		ratios := map[string][]float64{}
		before := score(plain)
		for r := range rounds {
			for j := range progs {
				s := progs[(j+r)%len(progs)]
				got := score(s)
				after := score(plain)
				if mean := (before + after) / 2; mean > 0 {
					ratios[s.name] = append(ratios[s.name], got/mean)
				}
				before = after
			}
		}
		return ratios
	}

	// TCP: the clients saturate the receiver; a score is the
	// connections accepted per second.
	tcpGot := map[string][]float64{}
	tcpSent := map[string][]float64{}
	tcpLost := map[string]map[string]uint64{} // name -> counter -> sum over the windows
	tcpRatios := interleave(func(s *packetServer) float64 {
		got, tried, l := s.measureTCP(b, client, window)
		tcpGot[s.name] = append(tcpGot[s.name], got)
		tcpSent[s.name] = append(tcpSent[s.name], tried)
		if tcpLost[s.name] == nil {
			tcpLost[s.name] = map[string]uint64{}
		}
		for k, v := range l {
			tcpLost[s.name][k] += v
		}
		return got
	})

	// UDP: one sender, paced below what the receivers can take, sends
	// a burst to each namespace in turn, so that all four are measured
	// at once under the same load; a score is datagrams per second of
	// the receiving host's CPU, a ratio is a window's plain cost per
	// datagram over the program namespace's.
	dir := b.TempDir()
	rxCPU := runtime.NumCPU() - 1
	pin := func(s *packetServer, tid, cpu int) {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			b.Fatalf("%s: pin thread %d to CPU %d: %v", s.name, tid, cpu, err)
		}
	}
	for i, s := range servers {
		// Both ends in NAPI mode, each end's receive path in a
		// thread of its own (the TCP cost below needs the client's
		// out of the server's).
		cif := fmt.Sprintf("c%d", i)
		if err := client.Do(func() error { return ethtoolSet(unix.ETHTOOL_STSO, cif, false) }); err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		if err := s.ns.Do(func() error { return ethtoolSet(unix.ETHTOOL_STSO, packetServerIf, false) }); err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		s.target(b, binding.UDP)
		pid, err := threadedNAPI(s.ns, packetServerIf, dir)
		if err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		s.napiPID = pid
		if s.clientNAPI, err = threadedNAPI(client, cif, dir); err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		pin(s, s.clientNAPI, 0)
		for _, tid := range []int{pid, int(s.recvTID.Load()), int(s.acceptTID.Load())} {
			pin(s, tid, rxCPU)
		}
		// SCHED_BATCH: the receivers do not preempt the NAPI thread
		// that wakes them (kernel/sched/fair.c,
		// check_preempt_wakeup_fair), so they take each burst whole,
		// however fast the lookup went.
		for _, tid := range []int{int(s.recvTID.Load()), int(s.acceptTID.Load())} {
			if err := unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}, 0); err != nil {
				b.Fatalf("%s: receiver to SCHED_BATCH: %v", s.name, err)
			}
		}
	}
	measureCPU(b, client, servers, binding.UDP, 200*time.Millisecond, udpRate) // warm-up, not counted
	// hits counts the program's deliveries to the label, beside the
	// datagrams received: more than one a datagram would mean the
	// program runs more than once for each (GRO's socket lookup).
	hits := func() map[string][2]uint64 {
		m := map[string][2]uint64{}
		for _, s := range progs {
			cs, _, err := s.d.Counters()
			if err != nil {
				b.Fatal(err)
			}
			m[s.name] = [2]uint64{cs[packetLabel].Hits, s.recv.Load()}
		}
		return m
	}
	hitsBefore := hits()
	assign := slices.IndexFunc(servers, func(s *packetServer) bool { return s.ref == refAssign })
	inMap := slices.IndexFunc(servers, func(s *packetServer) bool { return s.ref == refInMap })
	udp, udpRatios, vsRef := cpuRounds(b, client, servers, binding.UDP, 3*rounds, window, udpRate, assign, inMap)
	vsAssign, vsInMap := vsRef[0], vsRef[1]

	hitsAfter := hits()

	// TCP again, paced: the receiving host's CPU per connection,
	// switchyard's namespaces and plain at once.
	for _, s := range progs {
		s.target(b, binding.TCP)
	}
	tcpServers := servers[:4]
	tcpRate := float64(envInt(b, "PACKET_TCP_RATE", packetTCPRate))
	measureCPU(b, client, tcpServers, binding.TCP, 200*time.Millisecond, tcpRate) // warm-up, not counted
	tcpCost, tcpCostRatios, _ := cpuRounds(b, client, tcpServers, binding.TCP, 3*rounds, window, tcpRate)
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

	for _, s := range servers[:4] {
		b.Run("tcp/"+s.name, func(b *testing.B) {
			b.ReportMetric(median(tcpGot[s.name]), "conns/s")
			b.ReportMetric(median(tcpSent[s.name]), "connects/s")
			for k, v := range tcpLost[s.name] {
				b.ReportMetric(float64(v), k)
			}
		})
		if s.n > 0 {
			b.Run("tcp/"+s.name+"/vs_plain", func(b *testing.B) { b.ReportMetric(median(tcpRatios[s.name]), "ratio") })
		}
	}
	for _, s := range tcpServers {
		reportCPU(b, "tcp-cpu/"+s.name, "conn", tcpCost[s.name])
		if s != plain {
			b.Run("tcp-cpu/"+s.name+"/vs_plain", func(b *testing.B) { b.ReportMetric(median(tcpCostRatios[s.name]), "ratio") })
		}
	}
	for _, s := range servers {
		reportCPU(b, "udp/"+s.name, "datagram", udp[s.name])
		if s.n > 0 {
			h, r := hitsAfter[s.name][0]-hitsBefore[s.name][0], hitsAfter[s.name][1]-hitsBefore[s.name][1]
			b.Run("udp/"+s.name+"/lookups", func(b *testing.B) { b.ReportMetric(float64(h)/float64(r), "hits/datagram") })
			b.Run("udp/"+s.name+"/vs_assign_only", func(b *testing.B) { b.ReportMetric(median(vsAssign[s.name]), "ratio") })
			b.Run("udp/"+s.name+"/vs_plain_in_sockmap", func(b *testing.B) { b.ReportMetric(median(vsInMap[s.name]), "ratio") })
		}
		if s != plain {
			b.Run("udp/"+s.name+"/vs_plain", func(b *testing.B) { b.ReportMetric(median(udpRatios[s.name]), "ratio") })
		}
	}
}

// setUp opens the server's sockets and, for a program namespace, the
// dispatcher with its bindings (the TCP target among them).
func (s *packetServer) setUp(b *testing.B) {
	bindAddr := s.addr
	if s.n > 0 || s.ref == refAssign {
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
	if s.ref != refNone {
		if err := s.attachRef(); err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		return
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

// attachRef loads s's reference program and attaches it to s's namespace.
func (s *packetServer) attachRef() error {
	var m *ebpf.Map
	if s.ref == refAssign || s.ref == refInMap {
		var err error
		if m, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 1}); err != nil {
			return fmt.Errorf("sockmap: %w", err)
		}
		s.refs = append(s.refs, m)
		if err := m.Update(uint32(0), uint64(s.udp), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("sockmap: %w", err)
		}
	}
	spec := &ebpf.ProgramSpec{Name: "packet_ref", Type: ebpf.SkLookup, AttachType: ebpf.AttachSkLookup, License: "Dual BSD/GPL"}
	switch s.ref {
	case refInMap:
		return nil
	case refEmpty:
		spec.Instructions = asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()} // SK_PASS
	case refAssign:
		// r6 = ctx; sk = lookup(map, 0); if sk { assign(ctx, sk, 0);
		// release(sk) }; return SK_PASS.
		spec.Instructions = asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.Mov.Reg(asm.R7, asm.R0),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnSkAssign.Call(),
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.FnSkRelease.Call(),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("pass"),
			asm.Return(),
		}
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return fmt.Errorf("load %s: %w", s.name, err)
	}
	s.refs = append(s.refs, prog)
	l, err := link.AttachNetNs(s.ns.FD(), prog)
	if err != nil {
		return fmt.Errorf("attach %s: %w", s.name, err)
	}
	s.refs = append(s.refs, l)
	return nil
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
// arrives until close, and returns once both threads' ids are known.
func (s *packetServer) startReceivers() {
	s.wg.Add(2)
	var started sync.WaitGroup // until both threads' ids are known
	started.Add(2)
	defer started.Wait()
	go func() {
		defer s.wg.Done()
		runtime.LockOSThread()
		s.acceptTID.Store(int64(unix.Gettid()))
		started.Done()
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
		s.recvTID.Store(int64(unix.Gettid()))
		started.Done()
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
	for _, c := range slices.Backward(s.refs) {
		c.Close()
	}
}

// measureTCP runs the TCP clients against s for window and returns what s
// accepted per second, what the clients completed per second, and what was
// lost in the window: the namespaces' counters of losses (SYN
// retransmissions, listen queue drops) and the connects the clients
// abandoned.
func (s *packetServer) measureTCP(b *testing.B, client *testenv.NetNS, window time.Duration) (got, tried float64, lost map[string]uint64) {
	var stop atomic.Bool
	count, abandoned := make([]atomic.Uint64, 1), make([]atomic.Uint64, 1)
	var wg sync.WaitGroup
	const workers = 2
	errc := make(chan error, workers)
	ready := make(chan struct{}, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- client.Do(func() error { return connectLoop([]*packetServer{s}, &stop, count, abandoned, 0, ready) })
		}()
	}
	// Stopped and waited for on every way out, b.Fatal's included, so
	// that no client keeps connecting into namespaces being removed.
	halted := false
	halt := func() {
		if !halted {
			halted = true
			stop.Store(true)
			wg.Wait()
		}
	}
	defer halt()
	for range workers {
		select {
		case <-ready:
		case err := <-errc: // a client that failed before it started
			b.Fatalf("tcp %s: %v", s.name, err)
		}
	}
	cBefore, sBefore := netCounters(b, client), netCounters(b, s.ns)
	before, start := s.accept.Load(), time.Now()
	count[0].Store(0)
	abandoned[0].Store(0)
	time.Sleep(window) // the measurement window, not a synchronisation
	after, elapsed, sentN, abandonedN := s.accept.Load(), time.Since(start), count[0].Load(), abandoned[0].Load()
	cAfter, sAfter := netCounters(b, client), netCounters(b, s.ns)
	halt()
	close(errc)
	for err := range errc {
		if err != nil {
			b.Fatalf("tcp %s: %v", s.name, err)
		}
	}
	lost = map[string]uint64{
		"syn-retrans":        cAfter["TcpExt:TCPSynRetrans"] - cBefore["TcpExt:TCPSynRetrans"],
		"listen-drops":       sAfter["TcpExt:ListenDrops"] - sBefore["TcpExt:ListenDrops"],
		"connects-abandoned": abandonedN,
	}
	return float64(after-before) / elapsed.Seconds(), float64(sentN) / elapsed.Seconds(), lost
}

// cpuRounds measures proto's cost in servers (servers[0] is plain) over
// windows paced windows and returns each namespace's windows, its ratios to
// plain (plain's cost over its own, window by window) and, for each of refs
// that is a server's index, each switchyard namespace's ratios to that
// server, in the order of refs.
func cpuRounds(b *testing.B, client *testenv.NetNS, servers []*packetServer, proto binding.Protocol, windows int, window time.Duration, rate float64, refs ...int) (ws map[string][]cpuWindow, vsPlain map[string][]float64, vsRef []map[string][]float64) {
	ws, vsPlain = map[string][]cpuWindow{}, map[string][]float64{}
	for range refs {
		vsRef = append(vsRef, map[string][]float64{})
	}
	for range windows {
		round := measureCPU(b, client, servers, proto, window, rate)
		for i, s := range servers {
			w := round[i]
			b.Logf("%s %s: received %.0f/s of %.0f/s sent, %.0f+%.0f ns each (NAPI+receiver), lost %v", proto, s.name, w.got, w.sent, w.napi, w.recv, w.lost)
			ws[s.name] = append(ws[s.name], w)
			if i > 0 {
				vsPlain[s.name] = append(vsPlain[s.name], round[0].cost()/w.cost())
			}
			for j, ref := range refs {
				if ref >= 0 && s.n > 0 {
					vsRef[j][s.name] = append(vsRef[j][s.name], round[ref].cost()/w.cost())
				}
			}
		}
	}
	return ws, vsPlain, vsRef
}

// reportCPU prints the medians over ws as name's metrics, per unit.
func reportCPU(b *testing.B, name, unit string, ws []cpuWindow) {
	pick := func(f func(cpuWindow) float64) float64 {
		vs := make([]float64, len(ws))
		for i, w := range ws {
			vs[i] = f(w)
		}
		return median(vs)
	}
	lost := map[string]uint64{}
	for _, w := range ws {
		for k, v := range w.lost {
			lost[k] += v
		}
	}
	b.Run(name, func(b *testing.B) {
		b.ReportMetric(pick(func(w cpuWindow) float64 { return w.got }), unit+"s/s")
		b.ReportMetric(pick(func(w cpuWindow) float64 { return w.sent }), "sent/s")
		b.ReportMetric(pick(cpuWindow.cost), "ns/"+unit)
		b.ReportMetric(pick(func(w cpuWindow) float64 { return w.napi }), "napi-ns/"+unit)
		b.ReportMetric(pick(func(w cpuWindow) float64 { return w.recv }), "recv-ns/"+unit)
		b.ReportMetric(pick(func(w cpuWindow) float64 { return 1e9 / w.cost() }), unit+"s/cpu-s")
		for k, v := range lost {
			b.ReportMetric(float64(v), k)
		}
	})
}

// measureCPU runs the paced client of proto against all servers at once,
// rate in all (datagrams or connections a second), for window and returns
// what the window measured in each. The CPU times are each namespace's NAPI
// thread's (UDP: the whole receive path; TCP: the SYN and its lookup, the
// handshake's ACK, the reset) and its receiving or accepting thread's,
// read at the same moments as the counters; what is still under way at
// either end is a burst or two against thousands a window.
func measureCPU(b *testing.B, client *testenv.NetNS, servers []*packetServer, proto binding.Protocol, window time.Duration, rate float64) []cpuWindow {
	var stop atomic.Bool
	counts := make([]atomic.Uint64, len(servers))
	abandoned := make([]atomic.Uint64, len(servers))
	loop := sendLoop
	if proto == binding.TCP {
		loop = connectLoop
	}
	errc := make(chan error, 1)
	ready := make(chan struct{}, 1)
	go func() {
		errc <- client.Do(func() error {
			return onCPU(0, func() error { return loop(servers, &stop, counts, abandoned, rate, ready) })
		})
	}()
	// halt stops the client and returns its error; deferred too, so
	// that a b.Fatal mid-window does not leave it sending into
	// namespaces being removed.
	running := true
	var loopErr error
	halt := func() error {
		if running {
			running = false
			stop.Store(true)
			loopErr = <-errc
		}
		return loopErr
	}
	defer halt()
	select {
	case <-ready:
	case err := <-errc:
		running = false
		b.Fatalf("%s: %v", proto, err)
	}
	type sample struct {
		got, sent, abandoned, napiCPU, recvCPU uint64
		net                                    map[string]uint64
	}
	read := func() []sample {
		ss := make([]sample, len(servers))
		for i, s := range servers {
			got, tid := &s.recv, &s.recvTID
			if proto == binding.TCP {
				got, tid = &s.accept, &s.acceptTID
			}
			n, err := threadCPU(s.napiPID)
			if err != nil {
				b.Fatalf("%s %s: NAPI thread: %v", proto, s.name, err)
			}
			r, err := threadCPU(int(tid.Load()))
			if err != nil {
				b.Fatalf("%s %s: receiving thread: %v", proto, s.name, err)
			}
			ss[i] = sample{got.Load(), counts[i].Load(), abandoned[i].Load(), n, r, netCounters(b, s.ns)}
		}
		return ss
	}
	before, start := read(), time.Now()
	time.Sleep(window) // the measurement window, not a synchronisation
	after, elapsed := read(), time.Since(start)
	if err := halt(); err != nil {
		b.Fatalf("%s: %v", proto, err)
	}
	ws := make([]cpuWindow, len(servers))
	for i, s := range servers {
		x, y := before[i], after[i]
		if y.got == x.got {
			b.Fatalf("%s %s: nothing received in %v", proto, s.name, elapsed)
		}
		if y.napiCPU == x.napiCPU {
			// Then the traffic did not come through the thread
			// measured, and the figures would leave the lookup out.
			b.Fatalf("%s %s: %d received, but NAPI thread %d did not run", proto, s.name, y.got-x.got, s.napiPID)
		}
		n := float64(y.got - x.got)
		ws[i] = cpuWindow{
			got:  n / elapsed.Seconds(),
			sent: float64(y.sent-x.sent) / elapsed.Seconds(),
			napi: float64(y.napiCPU-x.napiCPU) / n,
			recv: float64(y.recvCPU-x.recvCPU) / n,
		}
		if proto == binding.TCP {
			ws[i].lost = map[string]uint64{
				"connects-abandoned": y.abandoned - x.abandoned,
				"listen-drops":       y.net["TcpExt:ListenDrops"] - x.net["TcpExt:ListenDrops"],
			}
		} else {
			ws[i].lost = map[string]uint64{
				"rcvbuf-errors": y.net["Udp:RcvbufErrors"] - x.net["Udp:RcvbufErrors"],
				"in-errors":     y.net["Udp:InErrors"] - x.net["Udp:InErrors"],
			}
		}
	}
	return ws
}

// onCPU runs fn on the calling thread pinned to cpu, and puts the
// thread's affinity back afterwards (netns.Run's threads go back to the
// pool).
func onCPU(cpu int, fn func() error) error {
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return fmt.Errorf("affinity: %w", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("affinity: %w", err)
	}
	defer unix.SchedSetaffinity(0, &old)
	return fn()
}

// connectLoop starts non-blocking connects to the servers' TCP port in
// turn, rate a second in all, and resets each connection as soon as it is
// established (SO_LINGER 0: no TIME_WAIT state limits the rate), counting
// it in counts, until stop. A connect older than packetConnectTimeout is
// closed and counted in abandoned. At most packetInflight connects a
// server are under way; with rate 0 the loop keeps that many in flight,
// else a client that falls behind skips what is more than 10 ms late. A
// connect that completes at once counts like any other; one refused for
// want of a local port is skipped (load, not failure). The loop sees stop
// at least every millisecond.
func connectLoop(servers []*packetServer, stop *atomic.Bool, counts, abandoned []atomic.Uint64, rate float64, ready chan<- struct{}) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	defer unix.Close(ep)
	type attempt struct {
		server int
		start  time.Time
	}
	started := map[int]attempt{} // fd -> its connect
	inflight := make([]int, len(servers))
	defer func() {
		for fd := range started {
			unix.Close(fd)
		}
	}()
	end := func(fd int) attempt {
		a := started[fd]
		unix.Close(fd) // established: a reset; else the attempt ends
		delete(started, fd)
		inflight[a.server]--
		return a
	}
	maxBacklog := max(uint64(rate/100), 1)
	var skipped, opened uint64
	next := 0
	events := make([]unix.EpollEvent, 64)
	start, lastSweep := time.Now(), time.Now()
	ready <- struct{}{}
	for !stop.Load() {
		due := uint64(packetInflight * len(servers)) // unpaced: up to the cap
		if rate > 0 {
			due = uint64(time.Since(start).Seconds()*rate) - skipped - opened
			if due > maxBacklog {
				skipped += due - maxBacklog
				due = maxBacklog
			}
		}
		for ; due > 0; due-- {
			i := next
			if inflight[i] >= packetInflight {
				break // that server is behind: wait for its connects
			}
			next = (next + 1) % len(servers)
			opened++
			s := servers[i]
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			switch err := unix.Connect(fd, &unix.SockaddrInet4{Addr: s.addr.As4(), Port: packetTCPPort}); err {
			case unix.EINPROGRESS:
			case nil:
				unix.Close(fd)
				counts[i].Add(1)
				continue
			case unix.EADDRNOTAVAIL, unix.EAGAIN:
				unix.Close(fd) // no local port free for a moment
				continue
			default:
				unix.Close(fd)
				return fmt.Errorf("connect %s:%d: %w", s.addr, packetTCPPort, err)
			}
			ev := unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}
			if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
				unix.Close(fd)
				return fmt.Errorf("epoll add: %w", err)
			}
			started[fd] = attempt{i, time.Now()}
			inflight[i]++
		}
		n, err := unix.EpollWait(ep, events, 1)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("epoll wait: %w", err)
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			a := end(fd)
			switch {
			case err != nil:
				return fmt.Errorf("SO_ERROR: %w", err)
			case soErr == 0:
				counts[a.server].Add(1)
			case unix.Errno(soErr) == unix.ETIMEDOUT:
				abandoned[a.server].Add(1)
			default:
				return fmt.Errorf("connect %s:%d: %w", servers[a.server].addr, packetTCPPort, unix.Errno(soErr))
			}
		}
		if now := time.Now(); now.Sub(lastSweep) > packetConnectTimeout/4 {
			lastSweep = now
			for fd, a := range started {
				if now.Sub(a.start) > packetConnectTimeout {
					end(fd)
					abandoned[a.server].Add(1)
				}
			}
		}
	}
	return nil
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

// sendLoop sends 32-byte datagrams to the servers' UDP port at rate
// datagrams/s in all, in bursts of 64 (one sendmmsg) to each server in
// turn, until stop, counting what each was sent in counts. Every receiving
// side sees the same bursts, as large as one call makes them, which
// spreads its fixed costs (a NAPI wakeup, a receiver wakeup) over the most
// datagrams, so that the lookup's share is not understated. A sender that
// falls behind (descheduled) sends at most 10 ms of backlog and skips the
// rest, so that the receivers never see a flood. abandoned is not used
// (a datagram is not abandoned; what is lost, the kernel counts).
func sendLoop(servers []*packetServer, stop *atomic.Bool, counts, _ []atomic.Uint64, rate float64, ready chan<- struct{}) error {
	fds := make([]int, len(servers))
	for i, s := range servers {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: s.addr.As4(), Port: packetUDPPort}); err != nil {
			return fmt.Errorf("connect %s: %w", s.addr, err)
		}
		fds[i] = fd
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
	maxBacklog := max(uint64(rate/100), batch)
	start := time.Now()
	var skipped, sent uint64
	next := 0 // the server the next burst goes to
	ready <- struct{}{}
	for !stop.Load() {
		due := uint64(time.Since(start).Seconds()*rate) - skipped - sent
		if due > maxBacklog {
			skipped += due - maxBacklog
			due = maxBacklog
		}
		if due < batch {
			// Sleep until the next burst is due, or 1 ms, so that
			// stop is seen whatever the rate.
			pause := unix.NsecToTimespec(min(int64(float64(batch-due)/rate*float64(time.Second)), int64(time.Millisecond)))
			unix.Nanosleep(&pause, nil)
			continue
		}
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fds[next]), uintptr(unsafe.Pointer(&hdrs[0])), batch, 0, 0, 0)
		switch errno {
		case 0:
			sent += uint64(n)
			counts[next].Add(uint64(n))
		case unix.ECONNREFUSED, unix.ENOBUFS, unix.EAGAIN, unix.EINTR:
			// An ICMP error from an earlier datagram, or a full
			// queue: the burst counts as sent and lost.
			sent += batch
		default:
			return fmt.Errorf("sendmmsg to %s: %w", servers[next].addr, errno)
		}
		next = (next + 1) % len(fds)
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

// A paced window that fails half-way (here: the NAPI thread it reads is
// not there) stops its client before it returns: no socket of the sender
// is left open in the client namespace, sending into namespaces that the
// benchmark's cleanup is about to remove.
func TestPacketWindowFailureStopsTheClient(t *testing.T) {
	testenv.RequireRoot(t)
	t.Parallel()
	client, srv := testenv.NewNetNS(t), testenv.NewNetNS(t)
	testenv.NewVethPair(t, client, srv, "c0", packetServerIf,
		netip.MustParsePrefix("192.168.10.2/24"), netip.MustParsePrefix("192.168.10.1/24"))
	s := &packetServer{name: "broken", ns: srv, addr: netip.MustParseAddr("192.168.10.1"), napiPID: -1}
	res := testing.Benchmark(func(b *testing.B) {
		measureCPU(b, client, []*packetServer{s}, binding.UDP, time.Millisecond, 1000)
	})
	if res.N != 0 {
		t.Fatalf("the window measured %d runs with no NAPI thread to read, want a failure", res.N)
	}
	var open []string
	if err := client.Do(func() error {
		data, err := os.ReadFile("/proc/thread-self/net/udp")
		if err != nil {
			return err
		}
		open = strings.Split(strings.TrimSpace(string(data)), "\n")[1:] // after the header
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(open) != 0 {
		t.Errorf("after the failed window, the client namespace still has %d UDP sockets open: %q", len(open), open)
	}
}
