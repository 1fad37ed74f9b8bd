package splice

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// StoppedWorker is a splice worker StopWorkers ended.
type StoppedWorker struct {
	PID   int
	Label string
}

// StopWorkers ends every splice worker with a control socket in dir (the
// WorkerOptions.Dir of the daemon that started them), closing their
// listeners and connections, and waits for each to exit; then it removes
// dir with the workers' sockets. A worker that does not exit within a few
// seconds of being asked is killed. It is for taking switchyard out of a
// namespace; a missing dir is not an error.
func StopWorkers(dir string) ([]StoppedWorker, error) {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("splice workers: %w", err)
	}
	// The same rule findWorkers applies: act only on what this user
	// placed there.
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return nil, fmt.Errorf("splice workers: %s must be a directory of uid %d that no one else may write to; remove it by hand if it is yours", dir, os.Geteuid())
	}
	socks, err := filepath.Glob(filepath.Join(dir, "*.sock"))
	if err != nil {
		return nil, fmt.Errorf("splice workers: %w", err)
	}
	var stopped []StoppedWorker
	var errs []error
	for _, sock := range socks {
		w := &worker{sock: sock}
		ws, err := w.ask(opStatus)
		if err != nil {
			continue // nobody answers: a left-over socket
		}
		pidfd, err := unix.PidfdOpen(ws.PID, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("splice worker pid %d: %w", ws.PID, err))
			continue
		}
		w.ask(opStop)
		if !WaitExit(pidfd, 5*time.Second) {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			WaitExit(pidfd, 5*time.Second)
		}
		unix.Close(pidfd)
		stopped = append(stopped, StoppedWorker{PID: ws.PID, Label: ws.Label})
	}
	if err := errors.Join(errs...); err != nil {
		return stopped, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return stopped, fmt.Errorf("splice workers: %w", err)
	}
	return stopped, nil
}

// WaitExit waits up to timeout for the process of pidfd to exit and
// reports whether it did.
func WaitExit(pidfd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		n, err := unix.Poll(fds, int(left.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}
