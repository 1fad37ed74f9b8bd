package splice

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchyard-project/switchyard/internal/safepath"
)

// Splice workers: with Config.Workers set, each label's splice proxy runs
// in a process of its own (the daemon's executable, started as
// "splice-worker"), which holds the label's listening sockets and its
// connections. The worker is in a process group of its own and outlives
// the daemon, so proxied connections keep flowing while the daemon stops,
// crashes or is upgraded, as the pinned BPF state does. A new daemon finds
// the workers through their control sockets in WorkerOptions.Dir:
//
//   - a worker of the same build, label and upstream is adopted as it is;
//   - otherwise a new worker takes over the label's socket, and the old one
//     drains: it stops accepting once no connection has reached its
//     listeners for workerQuiet, lets its connections run to their end,
//     then exits;
//   - a worker whose label is no longer spliced (Stop, or
//     SettleWorkers for one no Start took over) finishes: nothing
//     replaces its socket, so it stops accepting at once, lets its
//     connections run to their end, then exits.
//
// A proxy whose bytes the in-kernel engine moves shares that engine's maps
// and pair slots with the other labels', and stays in the Set's process.

// WorkerOptions makes splice proxies run in worker processes.
type WorkerOptions struct {
	// Command starts a worker: a program and its first arguments, to
	// which the worker's flags are appended; the program must pass them
	// to WorkerMain. Default: this executable, "splice-worker".
	Command []string
	// Dir holds the workers' control sockets. It is created (mode 0700)
	// if missing, and must be the same for the daemon that follows.
	Dir string
	// Build identifies the proxy code: a worker of another build is
	// replaced. Default: the SHA-256 of this executable.
	Build string
}

// workerQuiet: a draining worker keeps accepting until no connection has
// reached its listeners for this long. Connections in the middle of their
// handshake when the label's socket changed complete on the old listener.
// Only a takeover needs it: under steady traffic to a socket nothing
// replaced, a worker would never stop.
const workerQuiet = time.Second

// workerStatus is a worker's answer to any request.
type workerStatus struct {
	PID         int    `json:"pid"`
	Label       string `json:"label"`
	Upstream    string `json:"upstream"`
	Build       string `json:"build"`
	Why         string `json:"why"`
	Bytes       uint64 `json:"bytes"`
	Connections uint64 `json:"connections"`
	Open        int    `json:"open"`
	Draining    bool   `json:"draining"`
}

// worker is the daemon's handle of a worker process.
type worker struct {
	sock     string // its control socket
	label    string
	upstream string
	build    string
	why      string
	pid      int

	// What it last answered, so that its counters do not go back once it
	// has exited; gone once its socket is (it exited).
	mu   sync.Mutex
	last Counters
	gone bool
}

// Requests a worker takes on its control socket; it answers each with
// its workerStatus.
const (
	// opStatus changes nothing.
	opStatus = "status"
	// opDrain: another worker's listener took over the label's socket.
	// Keep accepting until workerQuiet passes without a connection, then
	// close the listeners, let the open connections finish and exit.
	opDrain = "drain"
	// opFinish: nothing replaces the label's socket. Close the listeners
	// at once (new connections are refused), let the open connections
	// finish and exit.
	opFinish = "finish"
	// opStop: close the listeners and the open connections, and exit.
	opStop = "stop"
)

// ask sends a request (op*) to the worker.
func (w *worker) ask(op string) (workerStatus, error) {
	var st workerStatus
	w.mu.Lock()
	gone := w.gone
	w.mu.Unlock()
	if gone {
		return st, fmt.Errorf("splice worker %s: %w", w.sock, os.ErrNotExist)
	}
	c, err := net.DialTimeout("unix", w.sock, 2*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			w.mu.Lock()
			w.gone = true
			w.mu.Unlock()
		}
		return st, fmt.Errorf("splice worker %s: %w", w.sock, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, op); err != nil {
		return st, fmt.Errorf("splice worker %s: %w", w.sock, err)
	}
	if err := json.NewDecoder(io.LimitReader(c, 1<<16)).Decode(&st); err != nil {
		return st, fmt.Errorf("splice worker %s: reply: %w", w.sock, err)
	}
	w.mu.Lock()
	w.last = Counters{Bytes: st.Bytes, Connections: st.Connections}
	w.mu.Unlock()
	return st, nil
}

// counters are the worker's counters, or the last it gave once it exited.
func (w *worker) counters() Counters {
	w.ask(opStatus)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *worker) status() string {
	return fmt.Sprintf("splice to %s (in userspace with splice(2), worker pid %d: %s)", w.upstream, w.pid, w.why)
}

// stop finishes the worker (graceful: its listeners close at once, its
// connections run to their end) or ends it and its connections.
func (w *worker) stop(graceful bool) {
	op := opStop
	if graceful {
		op = opFinish
	}
	w.ask(op)
}

// drain tells the worker that another took over its label's socket: it
// stops accepting once connections stop reaching its listeners (see
// workerQuiet), then finishes.
func (w *worker) drain() {
	w.ask(opDrain)
}

// buildID is the SHA-256 of this executable.
func buildID() (string, error) {
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		return "", fmt.Errorf("build id: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("build id: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// findWorkers asks each worker with a socket in the workers' directory
// what it serves; sockets nobody answers on are left-overs and removed.
func (m *Set) findWorkers() error {
	wo := m.opts.Workers
	// Only root (or this uid) may place sockets there: the daemon acts on
	// what answers on them.
	if err := safepath.MkdirAll("splice worker directory", wo.Dir, 0o700); err != nil {
		return fmt.Errorf("splice workers: %w", err)
	}
	socks, err := filepath.Glob(filepath.Join(wo.Dir, "*.sock"))
	if err != nil {
		return fmt.Errorf("splice workers: %w", err)
	}
	for _, sock := range socks {
		w := &worker{sock: sock}
		st, err := w.ask(opStatus)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				os.Remove(sock)
			}
			m.log.Info("splice worker gone", "socket", sock, "error", err)
			continue
		}
		w.label, w.upstream, w.build, w.why, w.pid = st.Label, st.Upstream, st.Build, st.Why, st.PID
		if st.Draining {
			m.retired[w.label] = append(m.retired[w.label], w)
		} else {
			m.found = append(m.found, w)
		}
		m.log.Info("found splice worker", "label", w.label, "upstream", w.upstream, "pid", w.pid,
			"draining", st.Draining, "same_build", w.build == wo.Build)
	}
	return nil
}

// adoptWorker takes over the found worker that serves label with
// upstream and is of this build, or returns nil if there is none.
func (m *Set) adoptWorker(label, upstream string) *worker {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, w := range m.found {
		if w.label == label && w.upstream == upstream && w.build == m.opts.Workers.Build {
			m.found = slices.Delete(m.found, i, i+1)
			m.log.Info("adopted splice worker", "label", label, "upstream", upstream, "pid", w.pid)
			return w
		}
	}
	return nil
}

// retireFound retires the found workers of label, which another socket
// serves now: they drain (see workerQuiet). With label "", it retires all
// found workers, whose labels are not spliced any more: nothing replaces
// their sockets, so they finish (stop accepting at once).
func (m *Set) retireFound(label string) {
	m.mu.Lock()
	var old []*worker
	m.found = slices.DeleteFunc(m.found, func(w *worker) bool {
		if label == "" || w.label == label {
			old = append(old, w)
			return true
		}
		return false
	})
	for _, w := range old {
		m.retired[w.label] = append(m.retired[w.label], w)
	}
	m.mu.Unlock()
	for _, w := range old {
		if label != "" {
			m.log.Info("draining splice worker", "label", w.label, "upstream", w.upstream, "pid", w.pid)
			w.drain()
		} else {
			m.log.Info("finishing splice worker", "label", w.label, "upstream", w.upstream, "pid", w.pid)
			w.stop(true)
		}
	}
}

// SettleWorkers finishes the workers found at NewSet that no Start took
// over since, as Stop would: their label has no splice policy
// any more, so their listeners close at once and their connections run to
// their end. Call it once the label settings are in force.
func (m *Set) SettleWorkers() {
	if m.opts.Workers != nil {
		m.retireFound("")
	}
}

// startWorker runs a worker for label on the listeners lns (the worker
// gets copies) and waits until it serves.
func (m *Set) startWorker(label, upstream, why string, lns []*net.TCPListener) (*worker, error) {
	wo := m.opts.Workers
	w := &worker{label: label, upstream: upstream, build: wo.Build, why: why,
		sock: filepath.Join(wo.Dir, fmt.Sprintf("splice-%d.sock", time.Now().UnixNano()))}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, ln := range lns {
		f, err := ln.File()
		if err != nil {
			return nil, fmt.Errorf("splice worker: %w", err)
		}
		files = append(files, f)
	}
	args := append(slices.Clone(wo.Command[1:]),
		"-label", label, "-upstream", upstream, "-netns", m.opts.NetNS,
		"-buffer", strconv.Itoa(m.opts.Buffer), "-socket", w.sock,
		"-build", wo.Build, "-why", why, "-listeners", strconv.Itoa(len(files)))
	cmd := exec.Command(wo.Command[0], args...)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	// Its own process group: signals for the daemon's group (a terminal's
	// ^C) do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("splice worker: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("splice worker: start %s: %w", wo.Command[0], err)
	}
	w.pid = cmd.Process.Pid
	// Reap it if it ends while this daemon runs.
	go cmd.Wait()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Process.Kill()
			return nil, fmt.Errorf("splice worker for %s did not start: %w", label, err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("splice worker for %s did not start within 10s", label)
	}
	m.log.Info("splice worker started", "label", label, "upstream", upstream, "pid", w.pid)
	return w, nil
}

// WorkerMain is the splice worker: the program named by
// WorkerOptions.Command calls it with its arguments and exits with the
// code it returns. Its listening sockets are inherited from fd 3 on; it
// prints "ready" on stdout once it serves.
func WorkerMain(args []string) int {
	fs := flag.NewFlagSet("splice-worker", flag.ContinueOnError)
	label := fs.String("label", "", "label served")
	upstream := fs.String("upstream", "", "host:port or host:same")
	netns := fs.String("netns", "", "network namespace to dial the upstream in")
	buffer := fs.Int("buffer", DefaultBuffer, "socket buffer size")
	sock := fs.String("socket", "", "control socket path")
	build := fs.String("build", "", "build identity")
	why := fs.String("why", "", "why the proxy runs in userspace")
	nlns := fs.Int("listeners", 0, "listening sockets inherited from fd 3 on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// A log write to a closed stderr must not kill the connections.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("splice_worker", os.Getpid(), "label", *label)
	fail := func(err error) int {
		log.Error("splice worker", "error", err)
		return 1
	}
	up, err := parseUpstream(*label, *upstream)
	if err != nil {
		return fail(err)
	}
	m := &Set{log: log, opts: Config{NetNS: *netns, Buffer: *buffer}}
	var lns []*net.TCPListener
	for i := range *nlns {
		f := os.NewFile(uintptr(3+i), "listener")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("listener %d: %w", i, err))
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			return fail(fmt.Errorf("listener %d is not TCP", i))
		}
		lns = append(lns, tl)
	}
	if len(lns) == 0 {
		return fail(errors.New("no listening sockets"))
	}
	ctl, err := net.ListenUnix("unix", &net.UnixAddr{Name: *sock, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	defer ctl.Close()
	p := newProxy(context.Background(), m, *label, *upstream, up)
	p.why = *why
	p.lns = lns
	p.run()
	fmt.Println("ready")
	os.Stdout.Close()
	log.Info("splice worker serving", "upstream", *upstream)

	var endOnce, hurryOnce, finishOnce sync.Once
	var draining atomic.Bool
	done := make(chan struct{})
	hurry := make(chan struct{}) // closed: stop accepting now
	end := func() { endOnce.Do(func() { close(done) }) }
	// finish ends the worker once its connections have: after
	// workerQuiet without a new one if quiet (a drain), else at once. A
	// finish cuts a drain's quiet period short.
	finish := func(quiet bool) {
		draining.Store(true)
		if !quiet {
			hurryOnce.Do(func() { close(hurry) })
			// Refuse new connections before answering.
			p.stop(true)
		}
		finishOnce.Do(func() {
			go func() {
				p.quiet(workerQuiet, hurry)
				p.stop(true)
				p.wg.Wait()
				log.Info("splice worker finished")
				end()
			}()
		})
	}
	// Requests being answered: the worker exits only once they are.
	var reqMu sync.Mutex
	var reqs sync.WaitGroup
	exiting := false
	go func() {
		for {
			c, err := ctl.Accept()
			if err != nil {
				return
			}
			reqMu.Lock()
			if exiting {
				reqMu.Unlock()
				c.Close()
				return
			}
			reqs.Add(1)
			reqMu.Unlock()
			go func() {
				defer reqs.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				op, _ := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
				switch strings.TrimSpace(op) {
				case opDrain:
					finish(true)
				case opFinish:
					finish(false)
				case opStop:
					draining.Store(true)
					hurryOnce.Do(func() { close(hurry) })
					p.stop(false)
					end()
				}
				u := p.counters()
				p.mu.Lock()
				st := workerStatus{PID: os.Getpid(), Label: *label, Upstream: *upstream, Build: *build, Why: *why,
					Bytes: u.Bytes, Connections: u.Connections, Open: len(p.conns), Draining: draining.Load()}
				p.mu.Unlock()
				json.NewEncoder(c).Encode(st)
			}()
		}
	}()
	<-done
	reqMu.Lock()
	exiting = true
	reqMu.Unlock()
	ctl.Close()
	reqs.Wait()
	return 0
}
