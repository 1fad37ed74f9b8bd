package control

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.CheckFDLeaks(m)) }

// pair returns two connected Conns over a SOCK_SEQPACKET socketpair.
func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewConn(nc.(*net.UnixConn))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

// rawFD returns the descriptor of c's socket, for sending hand-made
// datagrams. Valid while c is open.
func rawFD(t *testing.T, c *Conn) int {
	t.Helper()
	var fd int
	if err := c.rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// checkNoLeak fails the test if it ends with more descriptors than now.
func checkNoLeak(t *testing.T) {
	t.Helper()
	before := testenv.CountFDs(t)
	t.Cleanup(func() {
		if after := testenv.CountFDs(t); after > before {
			t.Errorf("%d descriptors leaked", after-before)
		}
	})
}

// pipeFDs returns n descriptors (pipe ends) that the test closes.
func pipeFDs(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for len(fds) < n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	t.Cleanup(func() { closeFDs(fds) })
	return fds[:n]
}

func sameFile(t *testing.T, a *os.File, b int) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestConnPassesFDs(t *testing.T) {
	a, b := pair(t)
	checkNoLeak(t)
	fds := pipeFDs(t, 3)
	if err := a.WriteRequest(NewRequest(&RegisterRequest{Label: "web"}), fds); err != nil {
		t.Fatal(err)
	}
	req, files, err := b.ReadRequest()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if req.Body.(*RegisterRequest).Label != "web" || len(files) != 3 {
		t.Fatalf("got %+v with %d files", req.Body, len(files))
	}
	for i, f := range files {
		if !sameFile(t, f, fds[i]) {
			t.Errorf("file %d is not the descriptor sent", i)
		}
		flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("file %d: not close-on-exec (flags %#x, %v)", i, flags, err)
		}
	}
}

// TestConnClosesUnwantedFDs sends descriptors on messages that may not
// carry them, with hand-made datagrams, and checks that the receiver
// refuses the message and closes every descriptor.
func TestConnClosesUnwantedFDs(t *testing.T) {
	bind := `{"binding":{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"}}`
	reg := `{"label":"a"}`
	for _, tc := range []struct {
		name string
		ds   [][]byte
		nfds int
		want string
	}{
		{"bind with fds", single(OpBind, bind), 2, "takes none"},
		{"reply with fds", [][]byte{datagram(1, OpBind, flagReply, 13, `{"result":{}}`)}, 1, "carry none"},
		{"too many", single(OpRegister, reg), MaxRegisterFiles + 1, "takes 1 to"},
		{"garbage", [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n")}, 2, "magic"},
		{"bad json", single(OpRegister, `{"label":`), 1, "unexpected EOF"},
		{"bad version", [][]byte{datagram(5, OpRegister, 0, len(reg), reg)}, 1, "versions 1 to 4"},
		{"on continuation", [][]byte{datagram(1, OpRegister, flagMore, len(reg), reg[:4]), datagram(1, OpRegister, 0, len(reg), reg[4:])}, 1, "continuation"},
		{"cut short", [][]byte{datagram(1, OpRegister, flagMore, len(reg), reg[:4])}, 1, "closed in the middle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			checkNoLeak(t)
			fds := pipeFDs(t, tc.nfds)
			for i, d := range tc.ds {
				var oob []byte
				fdAt := 0
				if tc.name == "on continuation" {
					fdAt = 1
				}
				if i == fdAt && len(fds) > 0 {
					oob = unix.UnixRights(fds...)
				}
				if err := unix.Sendmsg(rawFD(t, a), d, oob, nil, 0); err != nil {
					t.Fatal(err)
				}
			}
			if tc.name == "cut short" {
				a.Close()
			}
			_, files, err := b.Recv()
			if err == nil {
				t.Fatalf("accepted, with %d files", len(files))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestConnControlTruncated(t *testing.T) {
	a, b := pair(t)
	checkNoLeak(t)
	b.oob = make([]byte, unix.CmsgSpace(2*4)) // room for two descriptors only
	fds := pipeFDs(t, 5)
	if err := a.WriteRequest(NewRequest(&RegisterRequest{Label: "web"}), fds); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.Recv()
	if err == nil || !strings.Contains(err.Error(), "control data truncated") {
		t.Fatalf("got %v", err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error %q is not ErrInvalid", err)
	}
	if _, _, err := b.Recv(); !errors.Is(err, ErrBroken) {
		t.Fatalf("after truncation: %v, want ErrBroken", err)
	}
}

func TestConnDatagramTruncated(t *testing.T) {
	a, b := pair(t)
	checkNoLeak(t)
	d := datagram(1, OpBind, 0, MaxDatagram, strings.Repeat(" ", MaxDatagram))
	if err := unix.Sendmsg(rawFD(t, a), d, unix.UnixRights(pipeFDs(t, 1)...), nil, 0); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.Recv()
	if err == nil || !strings.Contains(err.Error(), "longer than the limit") {
		t.Fatalf("got %v", err)
	}
}

func TestConnLargeMessages(t *testing.T) {
	a, b := pair(t)
	bs := manyBindings(100_000)
	errc := make(chan error, 1)
	go func() {
		errc <- a.WriteRequest(NewRequest(&ApplyRequest{Config: Config{Bindings: bs}, DryRun: true}), nil)
	}()
	req, _, err := b.ReadRequest()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ar := req.Body.(*ApplyRequest)
	if !ar.DryRun || !reflect.DeepEqual([]binding.Binding(ar.Config.Bindings), bs) {
		t.Fatalf("apply request changed in transit (%d bindings)", len(ar.Config.Bindings))
	}

	go func() {
		errc <- b.WriteReply(NewReply(req, &ApplyResponse{Diff: Diff{AddBindings: bs}}))
	}()
	rep, err := a.ReadReply()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := rep.Body.(*ApplyResponse).Diff.AddBindings; !reflect.DeepEqual([]binding.Binding(got), bs) {
		t.Fatalf("apply reply changed in transit (%d bindings)", len(got))
	}
}

func TestConnDeadline(t *testing.T) {
	a, b := pair(t)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := b.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want a timeout", err)
	}
	// A timeout before a message starts leaves the connection usable.
	b.SetReadDeadline(time.Time{})
	if err := a.WriteRequest(NewRequest(&VersionRequest{}), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Recv(); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if _, _, err := b.Recv(); err != io.EOF {
		t.Fatalf("after close: %v, want io.EOF", err)
	}
}

func TestConnRefusesStream(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		f := os.NewFile(uintptr(fd), "stream")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, err := NewConn(nc.(*net.UnixConn)); !errors.Is(err, ErrInvalid) {
			t.Fatalf("stream socket accepted: %v", err)
		}
	}
}

func TestClientOldServer(t *testing.T) {
	// A server that only speaks versions 1 to 4 answers a version 5
	// request with an error naming the versions it speaks.
	a, b := pair(t)
	d := datagram(5, OpVersion, 0, 2, "{}")
	if err := unix.Sendmsg(rawFD(t, a), d, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.ReadRequest()
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("got %v", err)
	}
	if err := b.WriteReply(NewErrorReply(5, 0, err)); err != nil {
		t.Fatal(err)
	}
	rep, err := a.ReadReply()
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(rep.Err, ErrUnsupported) || !strings.Contains(rep.Err.Error(), "versions 1 to 4") {
		t.Fatalf("reply error %v", rep.Err)
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Dial(t.Context(), filepath.Join(dir, "nope.sock"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "start switchyardd") {
		t.Fatalf("missing socket: %v", err)
	}
	// A stale socket file: nobody listens.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	_, err = Dial(t.Context(), stale)
	if !errors.Is(err, unix.ECONNREFUSED) || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("stale socket: %v", err)
	}
	// Listen replaces a stale socket, but not a live one.
	l2, err := Listen(stale)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer l2.Close()
	if _, err := Listen(stale); err == nil || !strings.Contains(err.Error(), "another switchyardd") {
		t.Fatalf("listen over a live socket: %v", err)
	}
}

func TestNetNSInode(t *testing.T) {
	ino, err := NetNSInode("")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	if ino != st.Ino {
		t.Fatalf("inode %d, want %d", ino, st.Ino)
	}
	if _, err := NetNSInode("/proc/self/ns/mnt"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("mount namespace accepted: %v", err)
	}
	plain := filepath.Join(t.TempDir(), "ns")
	os.WriteFile(plain, nil, 0o644)
	if _, err := NetNSInode(plain); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "mounted") {
		t.Fatalf("plain file accepted: %v", err)
	}
	if _, err := NetNSInode("/nonexistent"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if got := DefaultPath(4026531840); got != "/run/switchyard/netns-4026531840/control.sock" {
		t.Fatalf("DefaultPath = %s", got)
	}
}

func TestConnRequestLimit(t *testing.T) {
	a, b := pair(t)
	b.SetRequestLimit(MaxSmallMessage)
	bs := manyBindings(20000) // over 64 KiB packed, as Apply sends them
	go a.WriteRequest(NewRequest(&ApplyRequest{Config: Config{Bindings: bs}}), nil)
	_, _, err := b.ReadRequest()
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "over the limit of 65536") {
		t.Fatalf("got %v", err)
	}
	// Small requests still pass, on a new connection.
	a, b = pair(t)
	b.SetRequestLimit(MaxSmallMessage)
	go a.WriteRequest(NewRequest(&ApplyRequest{Config: Config{Bindings: bs[:10]}}), nil)
	if _, _, err := b.ReadRequest(); err != nil {
		t.Fatal(err)
	}
}

// A peer held to a request limit gets no more room by flagging its message
// a reply (which a server never reads anyway): a list-bindings "reply" of
// 1 GiB announced, or an Apply "reply" of 128 MiB, is refused at its first
// datagram, not buffered up to that size (per connection) before it is
// found to be no request.
func TestConnRequestLimitReplyFlag(t *testing.T) {
	for _, op := range []Op{OpListBindings, OpApply, OpStatus} {
		a, b := pair(t)
		b.SetRequestLimit(MaxSmallMessage)
		total := maxPayload(op, true)
		chunk := strings.Repeat("x", 60000)
		if err := unix.Sendmsg(rawFD(t, a), datagram(AddRequestVersion, op, flagReply|flagMore, total, chunk), nil, nil, 0); err != nil {
			t.Fatal(err)
		}
		// The rest would follow; a server must not wait for it.
		b.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _, err := b.ReadRequest()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "over the limit of 65536") {
			t.Errorf("%s reply of %d bytes announced to a limited connection: got %v, want it refused as over the limit", op, total, err)
		}
	}
}
