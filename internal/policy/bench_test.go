package policy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The benchmarks drive sockperf, iperf3 and socat (Debian packages of the
// same names) between two namespaces joined by a veth pair, and report
// their figures with b.ReportMetric; scripts/bench-policy.sh runs them
// several times and prints medians and ratios. Each runs its tool once per
// b.N-independent measurement: use -benchtime 1x.

func requireTool(b *testing.B, name string) {
	if _, err := exec.LookPath(name); err != nil {
		b.Skipf("%s not installed: apt-get install -y %s", name, name)
	}
}

// benchSeconds is how long each tool runs.
func benchSeconds() string {
	if s := os.Getenv("SY_BENCH_SECONDS"); s != "" {
		return s
	}
	return "4"
}

// run starts cmd in ns (in the test cgroup when inCgroup), pinned to cpu
// unless cpu < 0.
func (e *env) cmd(ns *testenv.NetNS, inCgroup bool, cpu int, name string, args ...string) *exec.Cmd {
	if cpu >= 0 {
		args = append([]string{"-c", strconv.Itoa(cpu), name}, args...)
		name = "taskset"
	}
	c := ns.Command(name, args...)
	if inCgroup {
		c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.cgfd}
	}
	return c
}

// registerListener takes the listening TCP socket of process pid with
// pidfd_getfd and registers it for label.
func (e *env) registerListener(pid int, label string) {
	e.t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		e.t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, ent := range ents {
			fd, err := strconv.Atoi(ent.Name())
			if err != nil {
				continue
			}
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
			if !strings.HasPrefix(target, "socket:") {
				continue
			}
			lfd, err := unix.PidfdGetfd(pidfd, fd, 0)
			if err != nil {
				continue
			}
			acc, _ := unix.GetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
			typ, _ := unix.GetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_TYPE)
			if acc == 1 && typ == unix.SOCK_STREAM {
				_, err := e.d.RegisterFD(label, lfd)
				unix.Close(lfd)
				if err != nil {
					e.t.Fatalf("register: %v", err)
				}
				return
			}
			unix.Close(lfd)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("no listening socket in process %d", pid)
}

func startBG(tb testing.TB, c *exec.Cmd) {
	tb.Helper()
	c.Stdout, c.Stderr = nil, nil
	if err := c.Start(); err != nil {
		tb.Fatalf("start %s: %v", c.Args, err)
	}
	tb.Cleanup(func() {
		c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			c.Process.Kill()
			<-done
		}
	})
}

// cpuMeter measures busy cores over an interval: ncpu minus idle time per
// second of uptime (/proc/uptime), which counts bursty network load that
// /proc/stat's user and system ticks miss.
type cpuMeter struct{ up, idle float64 }

func readUptime() (float64, float64) {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0
	}
	up, _ := strconv.ParseFloat(f[0], 64)
	idle, _ := strconv.ParseFloat(f[1], 64)
	return up, idle
}

func startCPU() cpuMeter { u, i := readUptime(); return cpuMeter{u, i} }

// busy returns the busy cores since start and the elapsed seconds.
func (m cpuMeter) busy() (float64, float64) {
	u, i := readUptime()
	du := u - m.up
	if du <= 0 {
		return 0, 0
	}
	return float64(runtime.NumCPU()) - (i-m.idle)/du, du
}

var rttRe = regexp.MustCompile(`ReceivedMessages=([0-9]+)`)

// ctxSwitches is the voluntary context switches of pid's threads.
func ctxSwitches(pid int) int64 {
	var total int64
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				total += n
			}
		}
	}
	return total
}

var pctRe = regexp.MustCompile(`---> percentile\s+([0-9.]+)\s*=\s*([0-9.]+)`)

// BenchmarkBypassPingPong: sockperf ping-pong TCP latency (half round
// trip, usec) between two namespaces, without and with bypass, unpinned,
// on one CPU and across CPUs, without and with busy polling (--lls).
func BenchmarkBypassPingPong(b *testing.B) {
	requireTool(b, "sockperf")
	placements := []struct {
		name     string
		srv, cli int
	}{{"unpinned", -1, -1}, {"samecpu", 0, 0}, {"crosscpu", 0, 1}}
	// Normal and bypass runs of a case follow each other, so that the
	// load of other tenants drifts as little as possible between them.
	for _, pl := range placements {
		for _, busy := range []bool{false, true} {
			for _, bypass := range []bool{false, true} {
				name := fmt.Sprintf("bypass=%v/cpu=%s/busypoll=%v", bypass, pl.name, busy)
				b.Run(name, func(b *testing.B) {
					var lls []string
					if busy {
						// Busy polling on sockperf's own sockets
						// (SO_BUSY_POLL). The global busy_poll sysctl,
						// which pauses bypass, and busy_read belong to
						// the host: a benchmark must not set them.
						lls = []string{"--lls", "50"}
					}
					e := newEnv(b, Options{TrustReaders: true})
					e.bind("svc", srvAddr+"/32", "8080")
					if busy {
						// veth has a NAPI instance, which busy polling
						// needs, only with GRO or XDP: attach XDP_PASS.
						e.vethNAPI(b)
					}
					srv := e.cmd(e.srv, true, pl.srv, "sockperf", append([]string{"server", "--tcp", "-i", srvAddr, "-p", "8080"}, lls...)...)
					startBG(b, srv)
					e.registerListener(srv.Process.Pid, "svc")
					if err := e.m.SetBypass("svc", bypass); err != nil {
						b.Fatal(err)
					}
					cli := e.cmd(e.cli, true, pl.cli, "sockperf", append([]string{"ping-pong", "--tcp", "-i", srvAddr, "-p", "8080", "-m", "64", "-t", benchSeconds()}, lls...)...)
					srvSw := ctxSwitches(srv.Process.Pid)
					out, err := cli.CombinedOutput()
					if err != nil {
						b.Fatalf("sockperf: %v\n%s", err, out)
					}
					// Sleeps per round trip: how often the two sides
					// wait (each wait costs a wakeup, across CPUs an IPI).
					if m := rttRe.FindStringSubmatch(string(out)); m != nil {
						n, _ := strconv.ParseFloat(m[1], 64)
						sw := float64(ctxSwitches(srv.Process.Pid) - srvSw)
						if ru, ok := cli.ProcessState.SysUsage().(*syscall.Rusage); ok {
							sw += float64(ru.Nvcsw)
						}
						if n > 0 {
							b.ReportMetric(sw/n, "sleeps/rtt")
						}
					}
					got := map[string]float64{}
					for _, m := range pctRe.FindAllStringSubmatch(string(out), -1) {
						v, _ := strconv.ParseFloat(m[2], 64)
						got[m[1]] = v
					}
					for _, p := range []struct{ key, unit string }{{"50.000", "p50_us"}, {"99.000", "p99_us"}, {"99.900", "p99.9_us"}} {
						v, ok := got[p.key]
						if !ok {
							b.Fatalf("sockperf output lacks percentile %s:\n%s", p.key, out)
						}
						b.ReportMetric(v, p.unit)
					}
					c := e.counters("svc")
					switch {
					case bypass && busy && (c.BusyPoll == 0 || c.Messages != 0):
						// sockperf's sockets busy-poll: bypass must
						// leave the connection on the normal path.
						b.Errorf("bypass on with busy polling: want the connection left alone, counters %+v", c)
					case bypass && !busy && c.Messages == 0:
						b.Errorf("bypass on but nothing redirected: %+v", c)
					}
					b.ReportMetric(0, "ns/op")
				})
			}
		}
	}
}

// BenchmarkWakeupFloor: the latency floor of any ping-pong that sleeps
// while it waits. Two threads of this process, pinned like the sockperf
// runs, pass 64 bytes back and forth over a pair of pipes with blocking
// reads: no network stack at all, only a write, a wakeup and a read each
// way. Reported as half a round trip (usec), as sockperf reports. A socket
// path, with bypass or without, cannot be faster than this; across CPUs on
// a virtual machine the wakeup (an IPI to an idle vCPU) is most of it.
func BenchmarkWakeupFloor(b *testing.B) {
	for _, pl := range []struct {
		name     string
		srv, cli int
	}{{"samecpu", 0, 0}, {"crosscpu", 0, 1}} {
		b.Run("cpu="+pl.name, func(b *testing.B) {
			if runtime.NumCPU() <= max(pl.srv, pl.cli) {
				b.Skip("not enough CPUs")
			}
			var ping, pong [2]int
			if err := unix.Pipe2(ping[:], unix.O_CLOEXEC); err != nil {
				b.Fatal(err)
			}
			if err := unix.Pipe2(pong[:], unix.O_CLOEXEC); err != nil {
				b.Fatal(err)
			}
			defer func() {
				for _, fd := range append(ping[:], pong[:]...) {
					unix.Close(fd)
				}
			}()
			secs, _ := strconv.ParseFloat(benchSeconds(), 64)
			until := time.Now().Add(time.Duration(secs * float64(time.Second)))
			pin := func(cpu int) error {
				runtime.LockOSThread()
				var set unix.CPUSet
				set.Set(cpu)
				return unix.SchedSetaffinity(0, &set)
			}
			echoed := make(chan error, 1)
			go func() {
				defer runtime.UnlockOSThread()
				if err := pin(pl.srv); err != nil {
					echoed <- err
					return
				}
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(fdReader(ping[0]), buf); err != nil {
						echoed <- nil // the client closed its end
						return
					}
					if _, err := unix.Write(pong[1], buf); err != nil {
						echoed <- err
						return
					}
				}
			}()
			if err := pin(pl.cli); err != nil {
				b.Fatal(err)
			}
			defer runtime.UnlockOSThread()
			buf := make([]byte, 64)
			var rtts []time.Duration
			for time.Now().Before(until) {
				t0 := time.Now()
				if _, err := unix.Write(ping[1], buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(fdReader(pong[0]), buf); err != nil {
					b.Fatal(err)
				}
				rtts = append(rtts, time.Since(t0))
			}
			unix.Close(ping[1])
			ping[1] = -1
			if err := <-echoed; err != nil {
				b.Fatal(err)
			}
			slices.Sort(rtts)
			for _, p := range []struct {
				q    float64
				unit string
			}{{0.5, "p50_us"}, {0.99, "p99_us"}, {0.999, "p99.9_us"}} {
				rtt := rtts[int(p.q*float64(len(rtts)-1))]
				b.ReportMetric(float64(rtt)/2/float64(time.Microsecond), p.unit)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// fdReader reads a file descriptor with read(2), blocking.
type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), p)
		if err == unix.EINTR {
			continue
		}
		if err == nil && n == 0 {
			return 0, io.EOF
		}
		return n, err
	}
}

// vethNAPI attaches an XDP program that passes everything to both veth
// ends, which gives them the NAPI instances busy polling works on.
func (e *env) vethNAPI(b *testing.B) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
	})
	if err != nil {
		b.Fatalf("xdp program: %v", err)
	}
	b.Cleanup(func() { prog.Close() })
	for _, side := range []struct {
		ns   *testenv.NetNS
		name string
	}{{e.srv, e.vethSrv}, {e.cli, e.vethCli}} {
		var l link.Link
		err := side.ns.Do(func() error {
			ifc, err := net.InterfaceByName(side.name)
			if err != nil {
				return err
			}
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index})
			return err
		})
		if err != nil {
			b.Fatalf("attach xdp to %s: %v", side.name, err)
		}
		b.Cleanup(func() { l.Close() })
	}
}

// iperf3 runs an iperf3 client from the client namespace and returns
// received bits per second.
func (e *env) iperf3(inCgroup bool, addr string, port int, extra ...string) (float64, error) {
	cli := e.cmd(e.cli, inCgroup, -1, "iperf3", append([]string{"-c", addr, "-p", strconv.Itoa(port), "-t", benchSeconds(), "-J"}, extra...)...)
	out, err := cli.Output()
	if err != nil {
		return 0, fmt.Errorf("iperf3: %v\n%s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.Error != "" {
		return 0, fmt.Errorf("iperf3 output: %v %s", err, r.Error)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

// BenchmarkBypassThroughput: iperf3 over the veth, without and with bypass.
func BenchmarkBypassThroughput(b *testing.B) {
	requireTool(b, "iperf3")
	for _, bypass := range []bool{false, true} {
		b.Run(fmt.Sprintf("bypass=%v", bypass), func(b *testing.B) {
			e := newEnv(b, Options{TrustReaders: true})
			e.bind("svc", srvAddr+"/32", "8080")
			srv := e.cmd(e.srv, true, -1, "iperf3", "-s", "-B", srvAddr, "-p", "8080")
			startBG(b, srv)
			e.registerListener(srv.Process.Pid, "svc")
			if err := e.m.SetBypass("svc", bypass); err != nil {
				b.Fatal(err)
			}
			cpu := startCPU()
			bps, err := e.iperf3(true, srvAddr, 8080)
			if err != nil {
				b.Fatal(err)
			}
			cores, _ := cpu.busy()
			b.ReportMetric(bps/1e9, "Gbit/s")
			b.ReportMetric(cores, "busy_cores")
			b.ReportMetric(cores/(bps/8/1e9), "core_s/GB")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkSpliceThroughput: iperf3 from the client namespace to an iperf3
// server in the server namespace, directly, through socat, and through the
// splice proxy with each engine; busy cores, CPU per byte and the most the
// proxy held.
func BenchmarkSpliceThroughput(b *testing.B) {
	requireTool(b, "iperf3")
	requireTool(b, "socat")
	// rate=1G: a sender paced at 1 Gbit/s, slower than the kernel
	// engine's redirect worker, so that its bytes stay in the kernel.
	vias := []string{"direct", "socat", "proxy=userspace", "proxy=kernel", "proxy=userspace,rate=1G", "proxy=kernel,rate=1G"}
	if os.Getenv("SY_BENCH_EXTRA") != "" {
		// The kernel path with larger bounds, to see what it does
		// when it does not fall back to userspace, and the splice
		// engine with the kernel's buffer autotuning.
		vias = append(vias, "proxy=kernel,limit=16", "proxy=kernel,limit=4000", "proxy=userspace,buf=auto")
	}
	for _, via := range vias {
		b.Run("via="+via, func(b *testing.B) {
			opts := Options{}
			var engine settings.Engine
			var rate []string
			if eng, ok := strings.CutPrefix(via, "proxy="); ok {
				eng, r, _ := strings.Cut(eng, ",rate=")
				if r != "" {
					rate = []string{"-b", r}
				}
				eng, buf, _ := strings.Cut(eng, ",buf=")
				if buf == "auto" {
					opts.SpliceBuffer = -1
				}
				eng, limit, _ := strings.Cut(eng, ",limit=")
				engine = settings.Engine(eng)
				if mib, err := strconv.Atoi(limit); err == nil {
					opts.SpliceLimit = uint32(mib) << 20
				}
			}
			e := newEnv(b, opts, engine)
			up := e.cmd(e.srv, false, -1, "iperf3", "-s", "-p", "5201")
			startBG(b, up)
			time.Sleep(200 * time.Millisecond)
			port := 5201
			spliced := false
			var peak atomic.Int64
			stop := make(chan struct{})
			defer close(stop)
			switch via {
			case "socat":
				port = 9001
				s := e.cmd(e.srv, false, -1, "socat", "TCP4-LISTEN:9001,bind="+srvAddr+",reuseaddr,fork", "TCP4:127.0.0.1:5201")
				startBG(b, s)
				time.Sleep(200 * time.Millisecond)
				go sampleRSS(s.Process.Pid, &peak, stop)
			case "direct":
			default:
				port = 9000
				e.bind("px", srvAddr+"/32", "9000")
				err := e.m.StartSplice(context.Background(), "px", "127.0.0.1:5201", engine, func(ln *net.TCPListener) error {
					_, err := e.d.Register("px", ln)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				spliced = true
				go func() {
					for {
						select {
						case <-stop:
							return
						case <-time.After(20 * time.Millisecond):
						}
						if q, _ := e.m.Splices().Queued("px"); q > peak.Load() {
							peak.Store(q)
						}
					}
				}()
			}
			cpu := startCPU()
			bps, err := e.iperf3(false, srvAddr, port, rate...)
			if err != nil {
				b.Fatal(err)
			}
			cores, _ := cpu.busy()
			b.ReportMetric(bps/1e9, "Gbit/s")
			b.ReportMetric(cores, "busy_cores")
			b.ReportMetric(cores/(bps/8/1e9), "core_s/GB")
			switch {
			case spliced:
				b.ReportMetric(float64(peak.Load())/(1<<20), "MiB_held")
				// Share of the bytes the kernel moved (the rest went
				// through userspace after a fallback).
				c := e.counters("px")
				if c.Bytes > 0 {
					b.ReportMetric(float64(c.KernelBytes)/float64(c.Bytes), "kernel_share")
				}
			case via == "socat":
				b.ReportMetric(float64(peak.Load())/(1<<20), "MiB_rss")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// sampleRSS records the largest resident set of pid and its children.
func sampleRSS(pid int, peak *atomic.Int64, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
		var total int64
		for _, p := range append([]int{pid}, children(pid)...) {
			total += rss(p)
		}
		if total > peak.Load() {
			peak.Store(total)
		}
	}
}

func children(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
		out = append(out, children(n)...)
	}
	return out
}

func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
