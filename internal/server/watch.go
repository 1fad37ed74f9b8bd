package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/safepath"
)

// How the watcher debounces a burst of events: it waits until the file's
// directory has been quiet for watchQuiet (watchWriting while a writer
// still holds the file open after writing to it, so that a slow in-place
// write is read whole), but never longer than watchMax after the first
// event of the burst.
const (
	watchQuiet   = 100 * time.Millisecond
	watchWriting = time.Second
	watchMax     = 2 * time.Second
	// watchRetry is how often the watcher tries again to watch a
	// directory that is missing (removed or not yet created).
	watchRetry = time.Second
)

// kubeletData is the symlink that kubelet swaps to update a ConfigMap
// volume: FILE -> ..data/FILE, ..data -> ..TIMESTAMP.
const kubeletData = "..data"

// configWatch watches a config file for new versions with inotify. It
// watches the file's directory, not the file, so that it sees the file
// replaced by rename (editors, configuration management), written in
// place, and, for a ConfigMap volume, kubelet's swap of the ..data symlink.
// If the file is a symlink into another directory, that directory is
// watched too. C receives a value after a debounced burst of changes; the
// receiver decides by the file's content whether anything changed.
type configWatch struct {
	C <-chan struct{}

	path string
	log  *slog.Logger
	f    *os.File // the inotify instance
	c    chan struct{}
	poke chan struct{} // an event arrived; cap 1; never closed

	readDone chan struct{} // closed when read returns

	mu      sync.Mutex
	wds     map[int32]map[string]bool // watch -> names in its directory that matter
	dirs    map[string]int32          // watched directory -> watch
	missing bool                      // a directory to watch is missing
	writing bool                      // the last event was a write not yet closed
	done    chan struct{}
}

const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// watchConfig starts watching path until ctx is done or Close.
func watchConfig(ctx context.Context, path string, log *slog.Logger) (*configWatch, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("watch config: %w", err)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watch config: inotify: %w", err)
	}
	c := make(chan struct{}, 1)
	w := &configWatch{
		C: c, c: c, path: abs, log: log,
		f:    os.NewFile(uintptr(fd), "inotify"),
		poke: make(chan struct{}, 1), readDone: make(chan struct{}),
		wds: map[int32]map[string]bool{}, dirs: map[string]int32{},
		done: make(chan struct{}),
	}
	w.sync()
	if len(w.dirs) == 0 {
		w.f.Close()
		return nil, fmt.Errorf("watch config: cannot watch the directory of %s", abs)
	}
	go w.read()
	go w.debounce(ctx)
	// A version written between the load at start and now is seen too.
	w.again()
	return w, nil
}

// Close stops watching.
func (w *configWatch) Close() {
	w.f.Close()
	<-w.done
}

// inotify runs fn on the inotify descriptor, unless it is closed. (Fd
// would switch the file to blocking mode, and Close could then not end a
// pending Read.)
func (w *configWatch) inotify(fn func(fd int)) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { fn(int(fd)) })
}

// sync watches the directories that matter for the file now, and forgets
// those that no longer do (the old target of a swapped symlink).
func (w *configWatch) sync() {
	want := map[string]map[string]bool{
		filepath.Dir(w.path): {filepath.Base(w.path): true, kubeletData: true},
	}
	if real, err := filepath.EvalSymlinks(w.path); err == nil && real != w.path {
		d := filepath.Dir(real)
		if want[d] == nil {
			want[d] = map[string]bool{}
		}
		want[d][filepath.Base(real)] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.missing = false
	for dir, wd := range w.dirs {
		if want[dir] == nil {
			w.inotify(func(fd int) { unix.InotifyRmWatch(fd, uint32(wd)) })
			delete(w.dirs, dir)
			delete(w.wds, wd)
		}
	}
	for dir, names := range want {
		wd, err := -1, error(os.ErrClosed)
		w.inotify(func(fd int) { wd, err = unix.InotifyAddWatch(fd, dir, watchMask) })
		if err != nil {
			if !w.missing {
				w.log.Warn("cannot watch config directory; retrying", "dir", dir, "err", err)
			}
			w.missing = true
			continue
		}
		w.dirs[dir] = int32(wd)
		// Two paths may name one directory: one watch, both sets of names.
		if w.wds[int32(wd)] == nil {
			w.wds[int32(wd)] = map[string]bool{}
		}
		for n := range names {
			w.wds[int32(wd)][n] = true
		}
	}
}

// read reads inotify events until the instance is closed.
func (w *configWatch) read() {
	defer close(w.readDone)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				w.log.Warn("config watch stopped; reload it with SIGHUP", "err", err)
			}
			return
		}
		relevant, resync := w.parse(buf[:n])
		if resync {
			w.sync()
		}
		if relevant || resync {
			select {
			case w.poke <- struct{}{}:
			default:
			}
		}
	}
}

// parse goes through a batch of events and reports whether one concerns
// the file, and whether the set of watched directories must be renewed.
func (w *configWatch) parse(b []byte) (relevant, resync bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			break
		}
		name := string(b[unix.SizeofInotifyEvent:end])
		for len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1]
		}
		b = b[end:]
		switch {
		case ev.Mask&unix.IN_Q_OVERFLOW != 0:
			// Events were lost: look again at everything.
			relevant, resync = true, true
		case ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0:
			// A watched directory went away or moved.
			if ev.Mask&unix.IN_IGNORED != 0 {
				for dir, wd := range w.dirs {
					if wd == ev.Wd {
						delete(w.dirs, dir)
					}
				}
				delete(w.wds, ev.Wd)
			}
			relevant, resync = true, true
		case w.wds[ev.Wd][name]:
			relevant = true
			// A symlink hop changed: the target's directory may be another.
			resync = resync || ev.Mask&(unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_DELETE|unix.IN_MOVED_FROM) != 0
			switch {
			case ev.Mask&unix.IN_MODIFY != 0:
				w.writing = true
			case ev.Mask&(unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
				w.writing = false
			}
		}
	}
	return relevant, resync
}

// debounce turns bursts of events into one value on C.
func (w *configWatch) debounce(ctx context.Context) {
	defer close(w.done)
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	var first time.Time // of the burst under way; zero: none
	var retry <-chan time.Time
	for {
		w.mu.Lock()
		missing, writing := w.missing, w.writing
		w.mu.Unlock()
		if missing && retry == nil {
			retry = time.After(watchRetry)
		}
		select {
		case <-ctx.Done():
			w.f.Close()
			<-w.readDone
			return
		case <-w.readDone:
			return
		case <-w.poke:
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			wait := watchQuiet
			if writing {
				wait = watchWriting
			}
			wait = min(wait, first.Add(watchMax).Sub(now))
			quiet.Reset(max(wait, 0))
		case <-quiet.C:
			first = time.Time{}
			select {
			case w.c <- struct{}{}:
			default:
			}
		case <-retry:
			retry = nil
			w.sync()
			w.mu.Lock()
			found := !w.missing
			w.mu.Unlock()
			if found {
				// The directory is back; the file in it may be new.
				select {
				case w.poke <- struct{}{}:
				default:
				}
			}
		}
	}
}

// again asks for another look at the file after the usual quiet time.
func (w *configWatch) again() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// configReloads is what the daemon knows of its config file's versions,
// for metrics and to tell a changed file from an event that changed
// nothing.
type configReloads struct {
	mu        sync.Mutex
	path      string // "": no config file
	ok        bool   // the last reload succeeded
	at        time.Time
	applied   string // sha256 of the file in force
	attempted string // sha256 of the file last tried; "": unknown
	reloads   uint64
	failures  uint64
}

// fileSHA256 is the hex sha256 of the regular file at path (at most the
// size a config may have, and one byte more).
func fileSHA256(path string) (string, error) {
	// Non-blocking, so that a FIFO put in the file's place cannot stall
	// the daemon; only a regular file is read.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return "", err
	} else if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, config.MaxFileSize+1)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// loadConfig loads the config file at start and returns it with the
// sha256 of what was read ("" if the file changed while it was read).
func loadConfig(path string) (*config.Config, string, error) {
	// Only root (or the daemon's uid) may have written the file: it
	// grants labels to users. Its directory is checked too, so the file
	// checked is the file read.
	if err := safepath.CheckFile("config file", path); err != nil {
		return nil, "", err
	}
	before, _ := fileSHA256(path)
	cfg, err := config.Load(path)
	if err != nil {
		return nil, "", err
	}
	if after, _ := fileSHA256(path); after != before {
		before = ""
	}
	return cfg, before, nil
}

// configLoaded records the config file loaded at start.
func (s *Server) configLoaded(path, sum string) {
	r := &s.reloads
	r.mu.Lock()
	defer r.mu.Unlock()
	r.path, r.ok, r.at, r.applied, r.attempted = path, true, time.Now(), sum, sum
}

// reloadConfig reloads the config file, for SIGHUP (force) or because the
// watcher saw it change. Both take this path: systemd hears RELOADING=1,
// then READY=1 with the outcome; the metrics record it. A file whose
// content is the one last tried is not reloaded unless forced (SIGHUP
// retries a reload that failed for reasons outside the file). w, if not
// nil, is asked to look again when the file changed during the reload.
func (s *Server) reloadConfig(path, why string, force bool, w *configWatch) {
	r := &s.reloads
	before, herr := fileSHA256(path)
	r.mu.Lock()
	same := herr == nil && before == r.attempted
	r.mu.Unlock()
	if same && !force {
		s.log.Debug("config file event; content unchanged", "file", path)
		return
	}
	// The units are Type=notify with ExecReload sending SIGHUP: RELOADING=1
	// (stamped with the monotonic clock) marks the unit reloading until the
	// READY=1 that reports the outcome.
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	notify(s.log, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
	status := "STATUS=reloaded " + path
	err := s.reload(path)
	after, _ := fileSHA256(path)
	stable := herr == nil && after == before
	r.mu.Lock()
	r.reloads++
	r.at = time.Now()
	r.ok = err == nil
	r.attempted = ""
	if stable {
		r.attempted = before
	}
	if err != nil {
		r.failures++
	} else if stable {
		r.applied = before
	}
	r.mu.Unlock()
	if err != nil {
		s.log.Error("reload failed; keeping the running config", "trigger", why, "file", path, "err", err)
		status = "STATUS=reload failed: " + err.Error()
	} else {
		s.log.Info("config reloaded", "trigger", why, "file", path, "sha256", before)
	}
	if !stable && w != nil {
		// Which version was read is unknown; the next look settles it.
		w.again()
	}
	notify(s.log, "READY=1\n"+status)
}
