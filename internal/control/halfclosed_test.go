package control

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A peer that stops reading (shutdown SHUT_RD) without a reply or hanging
// up fails the send with EPIPE: the client says so at once, as before it
// learnt to read the reason of a daemon that refuses a request while it
// arrives (that reason is queued before the daemon hangs up), rather than
// wait for a reply that never comes.
func TestSendToPeerThatStoppedReading(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	rc, err := b.uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.Shutdown(int(fd), unix.SHUT_RD) })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := NewClient(a).Do(context.Background(), &VersionRequest{}, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, unix.EPIPE) {
			t.Errorf("got %v, want a broken pipe", err)
		}
	case <-time.After(10 * time.Second):
		b.Close() // lets the client go
		t.Fatalf("the client still waits for a reply after 10 s; then: %v", <-done)
	}
}

// A peer that replied and hung up with data of ours unread leaves
// ECONNRESET before its reply: queued still finds the reply.
func TestQueuedAfterResetByPeer(t *testing.T) {
	t.Parallel()
	a, b := pair(t)
	if _, err := unix.Write(rawFD(t, a), []byte("unread")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(rawFD(t, b), []byte("reply")); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if !a.queued() {
		t.Fatal("queued: no datagram waiting, want the peer's reply")
	}
	var buf [16]byte
	if n, err := unix.Read(rawFD(t, a), buf[:]); err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("read %q, %v; want the reply", buf[:n], err)
	}
}
