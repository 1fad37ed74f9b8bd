package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// scmMaxFD is the kernel's limit on descriptors in one SCM_RIGHTS message
// (SCM_MAX_FD). The receive buffer for control data fits that many, so no
// legitimate message is ever cut short.
const scmMaxFD = 253

// ErrBroken is returned by a Conn after a failure that may have left part of
// a message unread or unsent: the datagram stream is out of step and the
// connection must be closed.
var ErrBroken = errors.New("control connection out of step after an earlier error; close it and dial again")

// Conn is one control connection: a connected SOCK_SEQPACKET unix socket
// carrying messages in the format of this package. Send and Recv may be
// called from different goroutines, but not each of them concurrently with
// itself.
type Conn struct {
	uc *net.UnixConn
	rc syscall.RawConn

	rmu    sync.Mutex
	rbuf   *[]byte // from datagramPool while a datagram is read
	oob    []byte
	rerr   error // sticky: the read side is out of step
	rlimit int   // SetRequestLimit
	packed bool  // KeepPacked
	wmu    sync.Mutex
	werr   error // sticky: the write side is out of step
}

// NewConn wraps a connected unix socket. It must be of type SOCK_SEQPACKET
// ("unixpacket"): a stream socket would not keep message boundaries.
func NewConn(uc *net.UnixConn) (*Conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("control conn: %w", err)
	}
	var typ int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil {
		return nil, fmt.Errorf("control conn: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("control conn: socket type: %w", serr)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("control conn: %w: socket type is %d, not SOCK_SEQPACKET; use the \"unixpacket\" network", ErrInvalid, typ)
	}
	return &Conn{
		uc:  uc,
		rc:  rc,
		oob: make([]byte, unix.CmsgSpace(scmMaxFD*4)),
	}, nil
}

// UnixConn returns the underlying socket.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// Close closes the connection.
func (c *Conn) Close() error { return c.uc.Close() }

// SetDeadline sets the read and write deadlines, like net.Conn.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// SetReadDeadline sets the deadline for Recv.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for Send.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// Cred is a peer's credentials from SO_PEERCRED: who connected, as of
// connect(2).
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

// PeerCred returns the credentials of the process that connected.
func (c *Conn) PeerCred() (Cred, error) { return PeerCred(c.uc) }

// PeerCred returns the credentials of the peer of a connected unix socket,
// from SO_PEERCRED.
func PeerCred(uc *net.UnixConn) (Cred, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var u *unix.Ucred
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		u, gerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if gerr != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", gerr)
	}
	return Cred{PID: u.Pid, UID: u.Uid, GID: u.Gid}, nil
}

// SetRequestLimit lowers the largest request payload Recv accepts to n
// bytes (n <= 0 restores the protocol's limits), and that of a message
// flagged a reply too, which a server does not read. A server can call it
// after PeerCred, so that a peer that may not apply configurations cannot
// make it buffer and decode a MaxMessage Apply request (nor a
// MaxListMessage "reply"):
//
//	if cred.UID != 0 {
//		conn.SetRequestLimit(control.MaxSmallMessage)
//	}
func (c *Conn) SetRequestLimit(n int) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rlimit = n
}

// KeepPacked makes Recv keep the binding list of an Apply request of
// protocol version 2 or later in its packed form (Config.AllBindings reads
// it; Config.Bindings stays nil), checked and validated as ever: a server
// so never holds a million bindings as a list (64 MB) besides the 12 MB
// that carry them.
func (c *Conn) KeepPacked() {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.packed = true
}

// Send writes one message, attaching fds (only requests of OpRegister take
// any) to its first datagram. The fds stay the caller's. A failure after
// the first datagram leaves the connection unusable (ErrBroken).
func (c *Conn) Send(m Message, fds []int) error {
	fs, err := encodeMessage(m)
	if err != nil {
		return err
	}
	return c.sendFrames(fs, fds)
}

// sendFrames sends an encoded message.
func (c *Conn) sendFrames(fs []frame, fds []int) error {
	if len(fds) > scmMaxFD {
		return localError{invalidf("control send: %d file descriptors is more than the kernel's limit of %d", len(fds), scmMaxFD)}
	}
	var h header
	h.op = Op(binary.BigEndian.Uint16(fs[0].hdr[6:]))
	h.flags = binary.BigEndian.Uint16(fs[0].hdr[8:])
	if h.flags&flagReply != 0 && len(fds) > 0 {
		return localError{invalidf("control send: replies carry no file descriptors")}
	}
	if lo, hi := h.op.fdRange(); h.flags&flagReply == 0 && (len(fds) < lo || len(fds) > hi) {
		return localError{invalidf("control send: %s request with %d file descriptors; it takes %d to %d", h.op, len(fds), lo, hi)}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	for i := range fs {
		var oob []byte
		if i == 0 && len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := c.sendFrame(&fs[i], oob); err != nil {
			if i > 0 {
				c.werr = fmt.Errorf("%w (%v)", ErrBroken, err)
			}
			return err
		}
	}
	return nil
}

func (c *Conn) sendFrame(f *frame, oob []byte) error {
	bufs := [][]byte{f.hdr[:], f.payload}
	want := headerLen + len(f.payload)
	var n int
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		n, serr = unix.SendmsgBuffers(int(fd), bufs, oob, nil, unix.MSG_NOSIGNAL)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("control send: %w", err)
	}
	if n != want {
		return fmt.Errorf("control send: short write of %d of %d bytes", n, want)
	}
	return nil
}

// Recv reads one message: a *Request or a *Reply. Descriptors attached to a
// request come back as files, which the caller must close. Every other
// descriptor that arrives (too many, on a reply, on a message that fails to
// decode) is closed before Recv returns. A clean end of the connection
// before a message starts gives io.EOF. Decoding errors are *Error values,
// fit to send back; after one, the connection may be out of step (the rest
// of the refused message is still queued): reply, then close it.
func (c *Conn) Recv() (Message, []*os.File, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rerr != nil {
		return nil, nil, c.rerr
	}
	m, fds, inStep, err := c.recv()
	if err != nil {
		closeFDs(fds)
		if !inStep {
			c.rerr = fmt.Errorf("%w (%v)", ErrBroken, err)
		}
		return nil, nil, err
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), fmt.Sprintf("control-fd-%d", i))
	}
	return m, files, nil
}

// recv reads the datagrams of one message. inStep reports whether, after an
// error, the next datagram will start a new message: no datagram of this one
// had been consumed, or all of them had.
func (c *Conn) recv() (m Message, fds []int, inStep bool, err error) {
	defer c.putBuf()
	a := assembler{limit: c.rlimit, keepPacked: c.packed}
	for {
		n, flags, got, err := c.recvDatagram()
		fds = append(fds, got...)
		if err != nil {
			return nil, fds, !a.started, err
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return nil, fds, false, invalidf("control receive: control data truncated: the peer sent more file descriptors than one message may carry (%d)", scmMaxFD)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, fds, false, invalidf("control receive: datagram longer than the limit of %d bytes", MaxDatagram)
		}
		if n == 0 {
			// Our datagrams are never empty: a zero-length read is the
			// end of the connection.
			if a.started {
				return nil, fds, false, fmt.Errorf("control receive: %w: connection closed in the middle of a message", io.ErrUnexpectedEOF)
			}
			if len(fds) > 0 {
				return nil, fds, false, invalidf("control receive: empty datagram with file descriptors")
			}
			return nil, nil, true, io.EOF
		}
		if a.started && len(got) > 0 {
			return nil, fds, false, invalidf("control receive: file descriptors on a continuation datagram")
		}
		done, err := a.add((*c.rbuf)[:n])
		c.putBuf()
		if err != nil {
			return nil, fds, false, err
		}
		if done {
			break
		}
	}
	m, err = a.decode(len(fds))
	if err != nil {
		return nil, fds, true, err
	}
	return m, fds, true, nil
}

// datagramPool holds receive buffers. A connection takes one only once a
// datagram (or the end) is ready to read, and gives it back as soon as the
// datagram is copied out, so that idle connections, which a server may
// have a thousand of, hold no buffer.
var datagramPool = sync.Pool{New: func() any { b := make([]byte, MaxDatagram); return &b }}

func (c *Conn) putBuf() {
	if c.rbuf != nil {
		datagramPool.Put(c.rbuf)
		c.rbuf = nil
	}
}

// recvDatagram reads one datagram into c.rbuf, taken from datagramPool,
// and returns the descriptors that came with it. It waits for a datagram
// (or the end) with a one-byte MSG_PEEK first, so that an idle connection
// holds no buffer, then reads it with net.UnixConn.ReadMsgUnix, which on
// Linux passes MSG_CMSG_CLOEXEC: no descriptor a peer sends can leak into
// a child process. The caller gives c.rbuf back with putBuf.
func (c *Conn) recvDatagram() (n int, flags int, fds []int, err error) {
	err = c.rc.Read(func(fd uintptr) bool {
		var peek [1]byte
		_, _, perr := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		// Any other error is the read's to report.
		return perr != unix.EAGAIN
	})
	if err != nil {
		return 0, 0, nil, fmt.Errorf("control receive: %w", err)
	}
	if c.rbuf == nil {
		c.rbuf = datagramPool.Get().(*[]byte)
	}
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(*c.rbuf, c.oob)
	fds = parseRights(c.oob[:oobn])
	if n == 0 && errors.Is(err, io.EOF) {
		// The net package calls every empty read of a SOCK_SEQPACKET
		// socket the end; recv tells the end from an empty datagram.
		err = nil
	}
	if err != nil {
		return 0, 0, fds, fmt.Errorf("control receive: %w", err)
	}
	return n, flags, fds, nil
}

// parseRights returns every descriptor in the SCM_RIGHTS messages of oob,
// skipping other control messages, with unix.ParseSocketControlMessage
// and unix.ParseUnixRights. The kernel writes well-formed control messages,
// also when it truncates them (MSG_CTRUNC: it trims the last one to the
// descriptors that fit, net/core/scm.c scm_detach_fds), so a parse error
// can only mean a kernel this code does not know; then no descriptor is
// returned.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// ReadRequest reads one request for a server. Files attached to a Register
// request are returned; the caller owns them and should close them as soon
// as it is done. Get at their descriptors with SyscallConn().Control, not
// Fd: Fd switches the file to blocking mode, and the file description is
// shared with the service's own socket. See Recv for errors; a reply where
// a request belongs is refused with CodeInvalid.
func (c *Conn) ReadRequest() (*Request, []*os.File, error) {
	m, files, err := c.Recv()
	if err != nil {
		return nil, nil, err
	}
	req, ok := m.(*Request)
	if !ok {
		return nil, nil, invalidf("control message: got a reply where a request was expected")
	}
	return req, files, nil
}

// WriteReply sends a reply. Replies carry no file descriptors.
func (c *Conn) WriteReply(rep *Reply) error { return c.Send(rep, nil) }

// WriteRequest sends a request with its file descriptors.
func (c *Conn) WriteRequest(req *Request, fds []int) error { return c.Send(req, fds) }

// ReadReply reads one reply. A request where a reply belongs is refused.
func (c *Conn) ReadReply() (*Reply, error) {
	m, files, err := c.Recv()
	if err != nil {
		return nil, err
	}
	rep, ok := m.(*Reply)
	if !ok {
		for _, f := range files {
			f.Close()
		}
		return nil, invalidf("control message: got a request where a reply was expected")
	}
	return rep, nil
}

// Listener accepts control connections.
type Listener struct {
	ul *net.UnixListener
}

// Listen listens on a SOCK_SEQPACKET unix socket at path. A stale socket
// file that nobody listens on any more is replaced; a live one is an error.
// The socket file is removed by Close. Creating the directory and setting
// permissions is the caller's job.
func Listen(path string) (*Listener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unixpacket"}
	ul, err := net.ListenUnix("unixpacket", addr)
	if errors.Is(err, unix.EADDRINUSE) {
		if c, derr := net.DialUnix("unixpacket", nil, addr); derr == nil {
			c.Close()
			return nil, fmt.Errorf("control listen %s: %w: another switchyardd is serving this socket; stop it or pick another --control path", path, err)
		} else if errors.Is(derr, unix.ECONNREFUSED) {
			if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				return nil, fmt.Errorf("control listen %s: remove stale socket: %w", path, rerr)
			}
			ul, err = net.ListenUnix("unixpacket", addr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("control listen %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(true)
	return &Listener{ul: ul}, nil
}

// Accept waits for the next connection.
func (l *Listener) Accept() (*Conn, error) {
	uc, err := l.ul.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("control accept: %w", err)
	}
	c, err := NewConn(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	return c, nil
}

// Close stops listening and removes the socket file.
func (l *Listener) Close() error { return l.ul.Close() }

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ul.Addr() }

// UnixListener returns the underlying listener, for example to hand it to
// systemd or set a deadline.
func (l *Listener) UnixListener() *net.UnixListener { return l.ul }
