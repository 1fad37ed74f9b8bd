package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The paced half of the packet-path benchmark (udp, tcp-cpu) counts the
// CPU time the receiving host spends per datagram or connection. A veth
// normally hands a packet to the receiving namespace in the sender's own
// system call (netif_rx, then the softirq when the sender re-enables
// bottom halves), so that time is mixed with the sender's. With GRO on, the receiving veth polls its ring
// with NAPI (drivers/net/veth.c, veth_set_features), and with threaded
// NAPI that poll runs in a kernel thread of its own, napi/IFNAME-ID
// (net/core/dev.c, napi_kthread_create). That thread's run time is then
// exactly the receive path up to the socket's queue: IP, the socket lookup
// with the sk_lookup program, the queueing and the wakeup (for TCP, also
// the replies the handshake sends, up to the client veth's ring).
//
// A veth takes the NAPI path only for packets it may aggregate
// (veth_skb_is_eligible_for_gro): with TSO on at the sending end, that is
// only with UDP GRO forwarding or fraglist GRO at the receiving end, and
// those would merge datagrams so that one lookup served many. So both ends
// have TSO off instead (the server's replies to a TCP client go the other
// way), and the receiving end has only plain GRO, which leaves datagrams to a socket without UDP_GRO unmerged
// (net/ipv4/udp_offload.c, udp_gro_receive): one lookup per datagram, as
// without NAPI.

// threadedNAPI switches GRO and threaded NAPI on for the veth ifname in ns
// and returns the pid of the NAPI thread that this started: the one thread
// named after ifname that was not there before. The caller must not run
// it for two namespaces at once.
//
// "threaded" is set through sysfs, which shows the devices of the namespace
// that mounted it, so it runs on a thread of its own that enters ns and a
// private mount namespace, mounts sysfs on dir and then ends, taking both
// namespaces with it: nothing outside the thread sees the mount.
func threadedNAPI(ns *testenv.NetNS, ifname, dir string) (int, error) {
	old, err := napiThreads(ifname)
	if err != nil {
		return 0, err
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread when this
		// goroutine returns, with the namespaces it entered.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Setns(ns.FD(), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("setns: %w", err)
			}
			if err := ethtoolSet(unix.ETHTOOL_SGRO, ifname, true); err != nil {
				return err
			}
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare mount namespace: %w", err)
			}
			// Private first: a mount under a shared one would
			// propagate to the host's namespace.
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("make mounts private: %w", err)
			}
			if err := unix.Mount("sysfs", dir, "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
				return fmt.Errorf("mount sysfs: %w", err)
			}
			defer unix.Unmount(dir, unix.MNT_DETACH)
			f := filepath.Join(dir, "class", "net", ifname, "threaded")
			if err := os.WriteFile(f, []byte("1"), 0); err != nil {
				return fmt.Errorf("threaded NAPI on %s: %w", ifname, err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		return 0, err
	}
	now, err := napiThreads(ifname)
	if err != nil {
		return 0, err
	}
	var pids []int
	for pid := range now {
		if !old[pid] {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("threaded NAPI on %s: want one new thread napi/%s-*, have %v", ifname, ifname, pids)
	}
	return pids[0], nil
}

// ethtoolSet switches a feature of ifname in the calling thread's
// namespace with a legacy ethtool set request (ETHTOOL_SGRO,
// ETHTOOL_STSO...), which the kernel maps onto the feature flags; x/sys has
// no wrapper for them.
func ethtoolSet(cmd uint32, ifname string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	val := struct{ cmd, data uint32 }{cmd: cmd}
	if on {
		val.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
	ifr.data = unsafe.Pointer(&val)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("ethtool request %#x on %s: %w", cmd, ifname, errno)
	}
	return nil
}

// napiThreads returns the pids of the kernel threads named napi/IFNAME-*
// (the name is cut at TASK_COMM_LEN, 15 bytes). The NAPI id in the name is
// not reachable otherwise here: a UDP socket's SO_INCOMING_NAPI_ID stays 0
// behind a veth on the benchmark's kernel, and vishvananda/netlink has no
// netdev family.
func napiThreads(ifname string) (map[int]bool, error) {
	prefix := "napi/" + ifname + "-"
	procs, err := filepath.Glob("/proc/[0-9]*/comm")
	if err != nil {
		return nil, err
	}
	pids := map[int]bool{}
	for _, p := range procs {
		comm, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(comm), prefix) {
			continue // gone, or another thread
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			return nil, err
		}
		pids[pid] = true
	}
	return pids, nil
}

// threadCPU returns the nanoseconds thread tid (of any process) has run,
// from /proc/TID/schedstat: the scheduler's own sum, exact, not sampled at
// ticks. Without IRQ_TIME_ACCOUNTING (as on the benchmark machine)
// softirqs are charged to the thread they interrupt or run in.
func threadCPU(tid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", tid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/%d/schedstat: empty", tid)
	}
	return strconv.ParseUint(f[0], 10, 64)
}
