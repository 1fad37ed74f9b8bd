package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// NS is an open network namespace.
type NS struct {
	f    *os.File
	path string
}

// Open opens the network namespace at path. An empty path means the
// namespace of the calling thread.
func Open(path string) (*NS, error) {
	p := path
	if p == "" {
		p = "/proc/thread-self/ns/net"
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("netns open %s: %w", p, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("netns statfs %s: %w", p, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("netns %s: not a namespace file (expected /run/netns/NAME or /proc/PID/ns/net)", p)
	}
	return &NS{f: f, path: p}, nil
}

// Close releases the handle.
func (ns *NS) Close() error { return ns.f.Close() }

// FD is the namespace's file descriptor, valid until Close.
func (ns *NS) FD() int { return int(ns.f.Fd()) }

// Path is the path the namespace was opened from.
func (ns *NS) Path() string { return ns.path }

// Inode is the namespace's inode number, as `ls -Li /proc/PID/ns/net` shows.
func (ns *NS) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(ns.FD(), &st); err != nil {
		return 0, fmt.Errorf("netns stat: %w", err)
	}
	return st.Ino, nil
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// creates belong to the namespace and stay usable from any thread afterwards.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns save current: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(ns.FD(), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns enter %s: %w", ns.path, err)
			return
		}
		err = fn()
		// Return the thread to its namespace before Go may reuse it. If
		// that fails it stays locked, and Go ends it with the goroutine
		// (or parks it, if it is the main thread) rather than reuse it.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Cookie returns the namespace's cookie, a number unique for the life of the
// system that SO_NETNS_COOKIE reports for every socket in the namespace.
func (ns *NS) Cookie() (uint64, error) {
	var cookie uint64
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("netns cookie socket: %w", err)
		}
		defer unix.Close(fd)
		c, err := SocketCookie(fd)
		cookie = c
		return err
	})
	return cookie, err
}

// SocketCookie returns the cookie of the namespace a socket belongs to.
func SocketCookie(fd int) (uint64, error) {
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, fmt.Errorf("netns cookie: kernel lacks SO_NETNS_COOKIE (needs Linux 5.14+): %w", err)
	}
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return v, nil
}
