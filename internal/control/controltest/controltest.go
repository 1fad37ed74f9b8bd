package controltest

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/switchyard-project/switchyard/internal/control"
)

// Handler answers one request. c is the connection (for PeerCred); files
// are the descriptors the request carried, closed once the handler
// returns. A nil reply hangs up without answering.
type Handler func(c *control.Conn, req *control.Request, files []*os.File) *control.Reply

// Func makes a Handler of a function that returns a result or an error;
// an error becomes an error reply (control.NewErrorReply picks its code).
func Func(f func(req *control.Request, files []*os.File) (control.ResponseBody, error)) Handler {
	return func(_ *control.Conn, req *control.Request, files []*os.File) *control.Reply {
		body, err := f(req, files)
		if err != nil {
			return control.NewErrorReply(req.Version, req.Op(), err)
		}
		return control.NewReply(req, body)
	}
}

// Server is a fake daemon listening on Path.
type Server struct {
	Path string

	h  Handler
	l  *control.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  []*control.Conn
	closed bool
}

// New starts a Server on a socket in a temporary directory of tb's, and
// stops it when tb ends.
func New(tb testing.TB, h Handler) *Server {
	tb.Helper()
	s, err := Start(filepath.Join(tb.TempDir(), "control.sock"), h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Start starts a Server on a socket at path, for callers without a
// testing.TB (TestMain). Stop it with Close.
func Start(path string, h Handler) (*Server, error) {
	l, err := control.Listen(path)
	if err != nil {
		return nil, err
	}
	s := &Server{Path: path, h: h, l: l}
	s.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Go(func() { s.serve(c) })
		}
	})
	return s, nil
}

func (s *Server) serve(c *control.Conn) {
	defer c.Close()
	for {
		req, files, err := c.ReadRequest()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			// Say what was wrong, as the daemon does, and hang up.
			c.WriteReply(control.NewErrorReply(0, 0, err))
			return
		}
		rep := s.h(c, req, files)
		for _, f := range files {
			f.Close()
		}
		if rep == nil || c.WriteReply(rep) != nil {
			return
		}
	}
}

// Close stops listening, hangs up every connection and waits for the
// handlers to return.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.l.Close()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
