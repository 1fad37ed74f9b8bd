package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Client sends requests to switchyardd, one at a time, over one Conn. Its
// methods are safe for concurrent use; they take turns. A reply with an
// error comes back as an *Error (match it with errors.Is and the ErrX
// sentinels); transport failures come back wrapped, and make every later
// call fail with ErrBroken: dial again.
type Client struct {
	mu     sync.Mutex
	conn   *Conn
	broken error
}

// Dial connects to the control socket at path; "" means DefaultPath of the
// caller's network namespace.
func Dial(ctx context.Context, path string) (*Client, error) {
	if path == "" {
		ino, err := NetNSInode("")
		if err != nil {
			return nil, fmt.Errorf("control dial: %w", err)
		}
		path = DefaultPath(ino)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, dialError(path, err)
	}
	conn, err := NewConn(c.(*net.UnixConn))
	if err != nil {
		c.Close()
		return nil, err
	}
	return NewClient(conn), nil
}

func dialError(path string, err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.ENOENT):
		hint = "no control socket there: start switchyardd for this network namespace, or give the right --control path"
	case errors.Is(err, unix.ECONNREFUSED):
		hint = "nobody listens there: switchyardd is not running; start it"
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		hint = "no permission to connect: run as root, or ask for access to the control socket's directory"
	case errors.Is(err, unix.EPROTOTYPE):
		hint = "that socket is not a switchyard control socket (wrong socket type); check the --control path"
	}
	if hint == "" {
		return fmt.Errorf("control dial %s: %w", path, err)
	}
	return fmt.Errorf("control dial %s: %w: %s", path, err, hint)
}

// NewClient makes a client of an established connection. Closing the client
// closes conn.
func NewClient(conn *Conn) *Client { return &Client{conn: conn} }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Do sends one request with files attached (only Register takes any) and
// returns the result. An error reply is returned as an *Error. The files
// stay the caller's.
func (c *Client) Do(ctx context.Context, body RequestBody, files []*os.File) (ResponseBody, error) {
	return c.do(ctx, NewRequest(body), files, nil)
}

// do is Do of a request whose version is set; sent, if not nil, is called
// once the request is sent, while the reply is awaited.
func (c *Client) do(ctx context.Context, req *Request, files []*os.File, sent func()) (ResponseBody, error) {
	op := req.Op()
	fds := make([]int, 0, len(files))
	defer func() { closeFDs(fds) }()
	for _, f := range files {
		fd, err := dupFile(f)
		if err != nil {
			return nil, fmt.Errorf("control %s: %w", op, err)
		}
		fds = append(fds, fd)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, fmt.Errorf("control %s: %w", op, c.broken)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("control %s: %w", op, err)
	}
	deadline, _ := ctx.Deadline()
	if err := c.conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("control %s: %w", op, err)
	}
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		// Wake up a blocked Send or Recv. The connection is then out of
		// step and marked broken below.
		c.conn.SetDeadline(time.Unix(1, 0))
		close(woken)
	})
	defer func() {
		if !stop() {
			<-woken // never let it touch the deadline of a later call
		}
	}()

	rep, err := c.roundTrip(req, fds, sent)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			// The only deadlines on the connection are the context's; the
			// poller's timer may fire a moment before the context's.
			if cerr == nil {
				cerr = context.DeadlineExceeded
			}
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
		var le localError
		if !errors.As(err, &le) {
			// Something may have been sent or received: the connection
			// is no longer in step.
			c.broken = fmt.Errorf("%w (%v)", ErrBroken, err)
			c.conn.Close()
		}
		return nil, fmt.Errorf("control %s: %w", op, err)
	}
	if rep.Err != nil {
		return nil, rep.Err
	}
	return rep.Body, nil
}

// roundTrip sends req, calls sent (if not nil), and reads its reply.
func (c *Client) roundTrip(req *Request, fds []int, sent func()) (*Reply, error) {
	fs, err := encodeRequest(req)
	if err != nil {
		return nil, localError{err}
	}
	if err := c.conn.sendFrames(fs, fds); err != nil {
		// A peer that refuses a request while it arrives (one over the
		// limit it sets) says why before it hangs up: that reply is the
		// answer, not the broken connection.
		// Its reply is queued before it hangs up, so before the send
		// fails: a peer that only stops reading, and sent nothing, is
		// not waited for.
		var le localError
		if errors.As(err, &le) || !(errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)) || !c.conn.queued() {
			return nil, err
		}
		rep, rerr := c.conn.ReadReply()
		if rerr != nil || rep.Err == nil {
			return nil, err
		}
		return rep, nil
	}
	if sent != nil {
		sent()
	}
	rep, err := c.conn.ReadReply()
	if err != nil {
		return nil, err
	}
	if rep.Op != req.Op() && rep.Op != 0 {
		return nil, invalidf("control message: got a %s reply to a %s request", rep.Op, req.Op())
	}
	// A reply of op 0 answers a request the peer could not read, perhaps
	// for its version: it speaks a version the peer knows.
	if rep.Version != req.Version && rep.Op != 0 {
		return nil, invalidf("control message: reply speaks version %d to a version %d request", rep.Version, req.Version)
	}
	return rep, nil
}

// queued reports whether a datagram, or the end of the connection, waits
// to be read, without waiting for either. A peer that hung up with data
// unread leaves ECONNRESET to be reported once, before what is queued
// (net/unix/af_unix.c, unix_release_sock; net/core/datagram.c,
// __skb_try_recv_datagram): then it looks again.
func (c *Conn) queued() bool {
	var perr error = unix.ECONNRESET
	for try := 0; try < 2 && perr == unix.ECONNRESET; try++ {
		if err := c.rc.Control(func(fd uintptr) {
			var peek [1]byte
			_, _, perr = unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		}); err != nil {
			return false
		}
	}
	return perr == nil
}

// localError marks a request refused before anything was sent.
type localError struct{ error }

func (e localError) Unwrap() error { return e.error }

// dupFile returns a close-on-exec duplicate of f's descriptor. It does not
// use f.Fd, which would switch a socket shared with a net.Conn to blocking
// mode.
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("file %s: %w", f.Name(), err)
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, fmt.Errorf("file %s: %w", f.Name(), err)
	}
	if derr != nil {
		return -1, fmt.Errorf("file %s: dup: %w", f.Name(), derr)
	}
	return nfd, nil
}

// Call sends req with files attached (only Register takes any; they stay
// the caller's) and returns the typed result, Resp being the reply type the
// protocol's table gives req's operation. An error reply is an *Error.
func Call[Resp any](ctx context.Context, c *Client, req RequestBody, files ...*os.File) (*Resp, error) {
	return callIn[Resp](ctx, c, NewRequest(req), files, nil)
}

// callIn is Call of a request whose version is set, with do's sent.
func callIn[Resp any](ctx context.Context, c *Client, req *Request, files []*os.File, sent func()) (*Resp, error) {
	body, err := c.do(ctx, req, files, sent)
	if err != nil {
		return nil, err
	}
	r, ok := body.(*Resp)
	if !ok {
		return nil, fmt.Errorf("control %s: %w", req.Op(), invalidf("the reply holds a %T, not the %T asked for", body, (*Resp)(nil)))
	}
	return r, nil
}

// The methods below are Call for each operation, for call sites that read
// better with a name.

// Version asks for the daemon's version and protocol versions.
func (c *Client) Version(ctx context.Context) (*VersionResponse, error) {
	return Call[VersionResponse](ctx, c, &VersionRequest{})
}

// Ping checks that the daemon answers.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.Version(ctx)
	return err
}

// Bind adds a binding.
func (c *Client) Bind(ctx context.Context, b binding.Binding) error {
	_, err := Call[BindResponse](ctx, c, &BindRequest{Binding: b})
	return err
}

// Unbind removes a binding.
func (c *Client) Unbind(ctx context.Context, b binding.Binding) error {
	_, err := Call[UnbindResponse](ctx, c, &UnbindRequest{Binding: b})
	return err
}

// ListBindings returns every binding, or those of label if it is not empty.
func (c *Client) ListBindings(ctx context.Context, label string) ([]binding.Binding, error) {
	r, err := Call[ListBindingsResponse](ctx, c, &ListBindingsRequest{Label: label})
	if err != nil {
		return nil, err
	}
	return r.Bindings, nil
}

// Register registers the sockets in files as destinations of label. The
// daemon does not keep the caller's descriptors: the files stay open and
// the caller's to close.
func (c *Client) Register(ctx context.Context, label string, files ...*os.File) ([]RegisterResult, error) {
	if len(files) == 0 || len(files) > MaxRegisterFiles {
		return nil, fmt.Errorf("control register: %w", invalidf("%d sockets given; give 1 to %d", len(files), MaxRegisterFiles))
	}
	r, err := Call[RegisterResponse](ctx, c, &RegisterRequest{Label: label}, files...)
	if err != nil {
		return nil, err
	}
	if len(r.Results) != len(files) {
		return nil, fmt.Errorf("control register: %w", invalidf("daemon answered with %d results for %d sockets", len(r.Results), len(files)))
	}
	return r.Results, nil
}

// Unregister removes the socket of a destination.
func (c *Client) Unregister(ctx context.Context, label string, proto binding.Protocol, fam binding.Family) error {
	_, err := Call[UnregisterResponse](ctx, c, &UnregisterRequest{Label: label, Protocol: proto, Family: fam})
	return err
}

// Status returns the state of every label, or only of label if it is not
// empty.
func (c *Client) Status(ctx context.Context, label string) (*StatusResponse, error) {
	return c.StatusIn(ctx, ProtocolVersion, label)
}

// StatusIn is Status in protocol version v: StatusVersion for the policies'
// kernel bytes, which a daemon of a release before it refuses (version
// unsupported).
func (c *Client) StatusIn(ctx context.Context, v uint16, label string) (*StatusResponse, error) {
	return callIn[StatusResponse](ctx, c, &Request{Version: v, Body: &StatusRequest{Label: label}}, nil, nil)
}

// SetPolicy sets a label's connection policy.
func (c *Client) SetPolicy(ctx context.Context, label string, p settings.Policy) error {
	_, err := Call[SetPolicyResponse](ctx, c, &SetPolicyRequest{Label: label, Policy: p})
	return err
}

// Apply makes the daemon's bindings and label settings equal to cfg, or with
// dryRun only reports what that would change. The bindings the reply adds
// are in Diff.AddBindings whichever version the daemon answered in (see
// Diff.AddRequest).
func (c *Client) Apply(ctx context.Context, cfg Config, dryRun bool) (*ApplyResponse, error) {
	return c.ApplyIn(ctx, ApplyVersion, cfg, dryRun)
}

// ApplyIn is Apply in protocol version v; ProtocolVersion is the form a
// daemon of a release before PackedVersion reads, PackedVersion one
// before AddRequestVersion.
func (c *Client) ApplyIn(ctx context.Context, v uint16, cfg Config, dryRun bool) (*ApplyResponse, error) {
	sort := func() binding.List {
		l := slices.Clone(cfg.Bindings)
		binding.Sort(l)
		return l
	}
	var sorted chan binding.List
	var sent func()
	if v >= AddRequestVersion && len(cfg.Bindings) >= sortAhead {
		// The daemon takes seconds over a million bindings, while this
		// side waits: sort them meanwhile, for a reply that adds them
		// all (the first apply of a file). It was a quarter second
		// after the reply, on CPUs the daemon's work after its reply
		// keeps busy. Not before the request is sent: the daemon
		// starts on it only once it has all of it. The goroutine may
		// outlive ApplyIn by as long as the sort takes.
		sent = func() {
			sorted = make(chan binding.List, 1)
			go func() { sorted <- sort() }()
		}
	}
	res, err := callIn[ApplyResponse](ctx, c, &Request{Version: v, Body: &ApplyRequest{Config: cfg, DryRun: dryRun}}, nil, sent)
	if err != nil {
		return nil, err
	}
	if res.Diff.AddRequest {
		switch {
		case sorted != nil:
			res.Diff.AddBindings = <-sorted
		case len(cfg.Bindings) > 0:
			res.Diff.AddBindings = sort()
		}
		res.Diff.AddRequest = false
	}
	return res, nil
}

// sortAhead is the fewest bindings ApplyIn sorts while it waits for the
// reply.
const sortAhead = 10000
