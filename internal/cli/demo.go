package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/netns"
)

// demoPrefix is routed to lo in the demo's namespace and bound to one
// socket on every port.
var demoPrefix = netip.MustParsePrefix("10.99.0.0/16")

const demoLabel = "demo"

// demoDials is how many connections the demo makes.
const demoDials = 10

// runDemo shows dispatching end to end, without a daemon: a throwaway
// network namespace and bpffs, a dispatcher in this process, one binding
// for every port of demoPrefix, one socket, and connections to random
// addresses and ports of the prefix. Everything is removed at the end.
func runDemo(inv *invocation) (err error) {
	if err := inv.wantArgs(0, 0); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (it creates a network namespace, mounts a bpffs and loads a BPF program): run it with sudo")
	}
	ctx, stop := signal.NotifyContext(inv.ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := inv.stdout()
	fail := func(what string, err error) error { return fmt.Errorf("demo: %s: %w", what, err) }

	ns, err := newThrowawayNetNS(demoPrefix)
	if err != nil {
		return fail("create network namespace", err)
	}
	defer ns.Close()

	root, err := os.MkdirTemp("", "switchyard-demo-bpffs-")
	if err != nil {
		return fail("bpffs directory", err)
	}
	defer os.Remove(root)
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fail("mount bpffs on "+root, err)
	}
	defer func() {
		if uerr := unix.Unmount(root, unix.MNT_DETACH); uerr != nil && err == nil {
			err = fail("unmount bpffs "+root, uerr)
		}
	}()

	d, err := dispatch.Open(ns.Path(), dispatch.Options{Root: root})
	if err != nil {
		return fail("open dispatcher", err)
	}
	removed := false
	defer func() {
		if !removed {
			d.Remove()
		}
	}()
	fmt.Fprintf(w, "throwaway network namespace with %s routed to lo, bpffs on %s, dispatcher loaded\n", demoPrefix, root)

	b := binding.Binding{Label: demoLabel, Protocol: binding.TCP, Prefix: demoPrefix, Ports: binding.AnyPort}
	if _, err := d.AddBindings(b); err != nil {
		return fail("bind", err)
	}
	fmt.Fprintf(w, "bound %s\n", b)

	var ln net.Listener
	if err := ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // sockmap refuses MPTCP listeners
		var err error
		ln, err = lc.Listen(ctx, "tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		return fail("listen", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	closeListener := sync.OnceFunc(func() { ln.Close() })
	defer closeListener()
	wg.Go(func() { serveLocalAddr(ln, &wg) })

	if _, err := d.Register(demoLabel, ln.(*net.TCPListener)); err != nil {
		return fail("register", err)
	}
	fmt.Fprintf(w, "registered the one socket, listening on %s, for label %s\n\n", ln.Addr(), demoLabel)

	used := make(map[netip.AddrPort]bool)
	for range demoDials {
		var dst netip.AddrPort
		for dst = randomAddrPort(); used[dst]; dst = randomAddrPort() {
		}
		used[dst] = true
		saw, err := demoDial(ctx, ns, dst)
		if err != nil {
			return fail("dial "+dst.String(), err)
		}
		fmt.Fprintf(w, "dialled %s -> answered by the one socket on %s, which saw %s\n", dst, ln.Addr(), saw)
	}

	// Rule 5 of the design: with the label's socket gone, traffic bound to
	// it is refused, not handed to whatever else listens.
	closeListener()
	dst := randomAddrPort()
	if _, err := demoDial(ctx, ns, dst); errors.Is(err, unix.ECONNREFUSED) {
		fmt.Fprintf(w, "closed the socket; dialled %s -> connection refused: the label has no socket, and nothing else may answer\n", dst)
	} else {
		return fail("dial "+dst.String()+" after closing the socket", fmt.Errorf("want connection refused, got %v", err))
	}

	counters, unmatched, err := d.Counters()
	if err != nil {
		return fail("read counters", err)
	}
	c := counters[demoLabel]
	fmt.Fprintf(w, "\ncounters of label %s: %d lookups, %d hits, %d missing socket, %d bad socket; %d lookups matched no binding\n",
		demoLabel, c.Lookups, c.Hits, c.Missing, c.BadSocket, unmatched)

	removed = true
	if err := d.Remove(); err != nil {
		return fail("remove dispatcher", err)
	}
	fmt.Fprintln(w, "removed the dispatcher state; unmounting the bpffs and dropping the namespace")
	return nil
}

// serveLocalAddr answers each connection with the address the client
// dialled, as the accepted socket sees it.
func serveLocalAddr(ln net.Listener, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "%s\n", c.LocalAddr())
		})
	}
}

func randomAddrPort() netip.AddrPort {
	a := demoPrefix.Addr().As4()
	a[2] = byte(1 + rand.IntN(254))
	a[3] = byte(1 + rand.IntN(254))
	return netip.AddrPortFrom(netip.AddrFrom4(a), uint16(1+rand.IntN(65535)))
}

// demoDial connects to dst from inside the namespace and returns what the
// server answered.
func demoDial(ctx context.Context, ns *netns.NS, dst netip.AddrPort) (string, error) {
	var c net.Conn
	if err := ns.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		d.SetMultipathTCP(false)
		var err error
		c, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}
