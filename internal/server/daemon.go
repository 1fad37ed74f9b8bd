package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/policy"
	"github.com/switchyard-project/switchyard/internal/safepath"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Env is what the daemon takes from its surroundings, injected for tests.
type Env struct {
	Stderr io.Writer
	// Signals delivers SIGTERM/SIGINT (stop) and SIGHUP (reload config).
	Signals <-chan os.Signal
}

// OSEnv is the real environment.
func OSEnv() Env {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	return Env{Stderr: os.Stderr, Signals: ch}
}

type flags struct {
	netns, config, control, bpffs, metrics string
	bypassCgroup                           string
	trustReaders                           bool
	logFormat, logLevel                    string
	check                                  bool
	given                                  map[string]bool // flags on the command line
}

// Main runs switchyardd and returns its exit code.
func Main(env Env, args []string) int {
	var f flags
	fs := flag.NewFlagSet("switchyardd", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.StringVar(&f.netns, "netns", "", "network namespace to serve, e.g. /run/netns/NAME (default: switchyardd's own)")
	fs.StringVar(&f.config, "config", "", "YAML config file: label grants and policies, and bindings if it has any")
	fs.StringVar(&f.control, "control", "", "control socket path (default: the config's daemon.control, else "+control.RunDir+"/netns-INODE/control.sock)")
	fs.StringVar(&f.bpffs, "bpffs", dispatch.DefaultRoot, "directory on a bpf filesystem for pinned state (default: the config's daemon.bpffs, else this)")
	fs.StringVar(&f.metrics, "metrics-addr", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9434 (default: the config's daemon.metrics_addr)")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.bypassCgroup, "bypass-cgroup", "", "cgroup v2 directory whose sockets the bypass policy applies to (default: the config's daemon.bypass_cgroup, else the cgroup v2 root)")
	fs.BoolVar(&f.trustReaders, "bypass-trust-readers", false, "let bypass redirect where the kernel cannot show how receivers read: you vouch that no service of a bypass label, nor a local client of one, reads its socket with splice(2), which never sees redirected data")
	fs.BoolVar(&f.check, "check", false, "load the config and the dispatch state, report, and exit")
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(fs)
			return 0
		}
		fmt.Fprintln(env.Stderr, "switchyardd: see switchyardd -h")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "switchyardd: unexpected argument %q; see switchyardd -h\n", fs.Arg(0))
		return 2
	}
	f.given = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.given[fl.Name] = true })
	log, err := newLogger(env.Stderr, f.logFormat, f.logLevel)
	if err != nil {
		fmt.Fprintf(env.Stderr, "switchyardd: %v\n", err)
		return 2
	}
	if err := run(env, f, log); err != nil {
		log.Error("switchyardd failed", "err", err)
		daemon.SdNotify(false, "STATUS=failed: "+err.Error())
		return 1
	}
	return 0
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Debug("sd_notify", "err", err)
	}
}

func run(env Env, f flags, log *slog.Logger) error {
	notify(log, "STATUS=loading config")
	var cfg *config.Config
	var cfgSum string // sha256 of the config file read
	if f.config != "" {
		var err error
		if cfg, cfgSum, err = loadConfig(f.config); err != nil {
			return err
		}
		// The config's daemon settings, where no flag gives them.
		for _, d := range []struct {
			flag  string
			value string
			to    *string
		}{
			{"control", cfg.Daemon.Control, &f.control},
			{"bpffs", cfg.Daemon.BPFFS, &f.bpffs},
			{"metrics-addr", cfg.Daemon.MetricsAddr, &f.metrics},
			{"bypass-cgroup", cfg.Daemon.BypassCgroup, &f.bypassCgroup},
		} {
			if d.value != "" && !f.given[d.flag] {
				*d.to = d.value
			}
		}
	}

	ns, err := netns.Open(f.netns)
	if err != nil {
		return err
	}
	ino, err := ns.Inode()
	ns.Close()
	if err != nil {
		return err
	}
	if f.control == "" {
		f.control = control.DefaultPath(ino)
	}

	if f.check {
		return check(f, cfg, log)
	}
	notify(log, "STATUS=opening dispatch state")
	if err := dispatch.MountBPFFS(f.bpffs); err != nil {
		return err
	}
	d, err := dispatch.Open(f.netns, dispatch.Options{Root: f.bpffs, Logger: log})
	if err != nil {
		return err
	}
	defer d.Close()

	opts := Options{Logger: log, StatePath: DefaultStatePath(f.control), NetNS: f.netns}
	if cfg != nil {
		opts.Labels = cfg.Labels
	}
	srv, err := New(d, opts)
	if err != nil {
		return err
	}
	if cfg != nil {
		if err := srv.commitConfig(cfg); err != nil {
			return err
		}
	}
	if f.config != "" {
		srv.configLoaded(f.config, cfgSum)
	}
	nb, err := bindingCount(d)
	if err != nil {
		return err
	}
	// Reading the pinned state made garbage in proportion to the number
	// of bindings; give it back before settling in, and keep the heap
	// within the memory target (unless the operator set GOMEMLIMIT).
	debug.FreeOSMemory()
	if os.Getenv("GOMEMLIMIT") == "" {
		log.Debug("soft memory limit", "bytes", setMemoryLimit())
	}

	// The label settings file lives here too: only root may write here.
	if err := safepath.MkdirAll("control directory", filepath.Dir(f.control), 0o755); err != nil {
		return err
	}
	ln, err := control.Listen(f.control)
	if err != nil {
		return err
	}
	// Anyone may connect; what they may do is decided per request from
	// their credentials.
	if err := os.Chmod(f.control, 0o666); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var metricsSrv *http.Server
	if f.metrics != "" {
		mln, err := net.Listen("tcp", f.metrics)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics listen: %w", err)
		}
		metricsSrv = &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
		go metricsSrv.Serve(mln)
		log.Info("serving metrics", "addr", mln.Addr().String())
	}

	// Splice proxies run in workers that outlive the daemon, found again
	// through their sockets beside the control socket.
	workers := &policy.WorkerOptions{Dir: f.control + ".splice"}
	pm, err := policy.Open(d, policy.Options{Cgroup: f.bypassCgroup, Logger: log, NetNS: f.netns, TrustReaders: f.trustReaders, Workers: workers})
	why := ""
	if err != nil {
		why = err.Error()
		log.Warn("connection policies unavailable; dispatching goes on without them", "err", err)
	}
	srv.SetPolicies(ctx, pm, why)
	defer srv.closePolicies()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	// A new version of the config file is applied as SIGHUP applies it.
	var changed <-chan struct{}
	var cw *configWatch
	if f.config != "" {
		if cw, err = watchConfig(ctx, f.config, log); err != nil {
			log.Warn("config file not watched; reload it with SIGHUP", "err", err)
		} else {
			defer cw.Close()
			changed = cw.C
		}
	}
	log.Info("switchyardd ready", "version", Version, "netns_inode", ino, "state", d.Dir(), "control", f.control, "bindings", nb)
	notify(log, fmt.Sprintf("READY=1\nSTATUS=serving %d bindings on %s", nb, f.control))

	var tick <-chan time.Time
	if iv, err := daemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-tick:
			// The daemon is healthy if its state answers.
			if _, _, err := d.Counters(); err == nil {
				notify(log, "WATCHDOG=1")
			} else {
				log.Warn("watchdog check failed", "err", err)
			}
		case <-changed:
			srv.reloadConfig(f.config, "file changed", false, cw)
		case sig := <-env.Signals:
			if sig == syscall.SIGHUP {
				srv.reloadConfig(f.config, "SIGHUP", true, cw)
				continue
			}
			log.Info("stopping; dispatching stays in place", "signal", sig.String())
			notify(log, "STOPPING=1\nSTATUS=stopping")
			cancel()
			err := <-served
			if metricsSrv != nil {
				metricsSrv.Close()
			}
			return err
		case err := <-served:
			return fmt.Errorf("control server: %w", err)
		}
	}
}

// check loads everything without changing anything: the config, the
// programs (unpinned), and existing state read-only with a dry run of the
// config's bindings against it.
func check(f flags, cfg *config.Config, log *slog.Logger) error {
	if err := dispatch.Verify(); err != nil {
		return err
	}
	if err := dispatch.CheckBPFFS(f.bpffs); err != nil {
		return err
	}
	d, err := dispatch.Open(f.netns, dispatch.Options{Root: f.bpffs, Logger: log, ReadOnly: true})
	if errors.Is(err, dispatch.ErrNotFound) {
		log.Info("check passed; no dispatch state yet in this namespace", "root", f.bpffs)
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	nb, err := bindingCount(d)
	if err != nil {
		return err
	}
	if cfg != nil && cfg.Bindings != nil {
		added, removed, err := d.ReplaceBindings(cfg.Bindings, true)
		if err != nil {
			return err
		}
		log.Info("config bindings would change", "added", len(added), "removed", len(removed))
	}
	log.Info("check passed", "state", d.Dir(), "bindings", nb)
	return nil
}

// commitConfig records the config's label settings, which New took, with
// its bindings if it has a bindings key, in one commit.
func (s *Server) commitConfig(cfg *config.Config) error {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	blob, err := settings.EncodeState(s.labelsNow())
	if err != nil {
		return err
	}
	defer s.snaps.changed()
	if cfg.Bindings == nil {
		if err := s.d.SetSettings(blob); err != nil {
			return fmt.Errorf("record config label settings: %w", err)
		}
	} else {
		added, removed, err := s.d.Replace(cfg.Bindings, blob, false)
		if err != nil {
			return fmt.Errorf("apply config bindings: %w", err)
		}
		s.log.Info("applied config bindings", "added", len(added), "removed", len(removed))
	}
	s.mirror()
	return nil
}

// reload applies the config file as apply does: bindings (if it has a
// bindings key) and label settings in one transaction.
func (s *Server) reload(path string) error {
	if path == "" {
		return errors.New("no --config to reload")
	}
	cfg, _, err := loadConfig(path)
	if err != nil {
		return err
	}
	next := cfg.Labels
	if next == nil {
		next = map[string]settings.Label{}
	}
	principals, err := s.resolve(next)
	if err != nil {
		return err
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	var bs *bindingSource
	if cfg.Bindings != nil {
		bs = listSource(cfg.Bindings)
	}
	diff, err := s.transact(bs, next, principals)
	if err != nil {
		return err
	}
	var added, removed int
	if diff != nil {
		added, removed = diff.Len()
	}
	s.log.Info("reloaded config", "file", path, "added_bindings", added, "removed_bindings", removed)
	return nil
}

// bindingCount is the number of bindings in force, without listing them.
func bindingCount(d *dispatch.Dispatcher) (int, error) {
	counts, err := d.BindingCounts()
	n := 0
	for _, c := range counts {
		n += c
	}
	return n, err
}

// softMemoryLimit is the floor of the Go runtime's soft memory limit. An
// apply of 1,048,576 bindings takes a heap of about 200 MiB at its peak
// (the models before and after, the changed groups and what the change
// left as garbage; the collector is off meanwhile, see Server.apply), and
// the daemon settles at about 145 MiB resident after it. A limit below
// what an apply needs makes the collector run without pause: that doubled
// the apply's CPU time and saved almost nothing at the peak. Below the
// limit the collector runs at its usual pace (GOGC).
const softMemoryLimit = 384 << 20

// setMemoryLimit sets the soft memory limit from the live heap and returns
// it.
func setMemoryLimit() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	limit := max(int64(ms.HeapAlloc)*3/2+16<<20, softMemoryLimit)
	debug.SetMemoryLimit(limit)
	return limit
}
