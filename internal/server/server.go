package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/netns"
	"github.com/switchyard-project/switchyard/internal/policy"
	"github.com/switchyard-project/switchyard/internal/safepath"
	"github.com/switchyard-project/switchyard/internal/settings"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

// Version is the daemon's version, set at build time.
var Version = "dev"

// Stats count what the server refused, for metrics.
type Stats struct {
	RefusedRegistrations atomic.Uint64
	RefusedChanges       atomic.Uint64
	BadRequests          atomic.Uint64
	// RefusedConnections: control connections turned away by the limits
	// on connections and descriptors.
	RefusedConnections atomic.Uint64
	// AcceptErrors: failed accepts of control connections (out of
	// descriptors, ...), after which the server went on.
	AcceptErrors atomic.Uint64
	// RefusedReplies: replies withheld because the peer had too many
	// bytes of replies unread.
	RefusedReplies atomic.Uint64
}

// Server serves the control protocol for one dispatcher.
type Server struct {
	log       *slog.Logger
	d         *dispatch.Dispatcher
	resolver  config.Resolver
	statePath string
	netnsPath string
	Stats     Stats
	reloads   configReloads // of --config, for metrics (watch.go)

	// txMu serializes the transactions that change label settings and
	// bindings together (settings.go), so that two never interleave and
	// the policies read as in force stay so while one is made.
	txMu sync.Mutex
	// settling is held from before the short reply of a large apply is
	// sent until the apply's memory is handed back after it (writeReply:
	// Server.apply hands it back before a reply that lists bindings), and
	// every request waits for it: what comes after such a reply is served
	// once that memory is back, as if it had gone before the reply.
	settling sync.RWMutex

	mu     sync.RWMutex
	labels map[string]settings.Label // in force; replaced, never changed
	// principals are the resolved grants of labels, by label.
	principals map[string]config.Principals
	pm         *policy.Manager // nil: policies unavailable, because of pmWhy
	pmWhy      string
	pmCtx      context.Context

	conns    connTable
	logLimit logLimiter
	snaps    snapshots

	wg sync.WaitGroup
}

// Options configure New.
type Options struct {
	Logger *slog.Logger
	// Resolver turns user and group names of grants into ids. Default:
	// the system's databases.
	Resolver *config.Resolver
	// StatePath is a file where label settings persist across restarts
	// of the daemon. Empty: not persisted.
	StatePath string
	// NetNS is the path of the dispatcher's network namespace ("": the
	// caller's), where status looks up the registered sockets' addresses.
	NetNS string
	// Labels, if not nil, are the label settings to start with (a config
	// file's), instead of those saved at StatePath.
	Labels map[string]settings.Label
}

// New makes a server for d. Label settings start from the state file, if
// there is one.
func New(d *dispatch.Dispatcher, opts Options) (*Server, error) {
	s := &Server{log: opts.Logger, d: d, statePath: opts.StatePath, netnsPath: opts.NetNS, labels: map[string]settings.Label{}, principals: map[string]config.Principals{}, pmWhy: "no policy manager", pmCtx: context.Background()}
	s.snaps.bindings.keep = func(l listing) bool { return l.size <= keptListing }
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.resolver = config.SystemResolver()
	if opts.Resolver != nil {
		s.resolver = *opts.Resolver
	}
	if opts.Labels != nil {
		// A config file's settings replace the recorded ones; the
		// daemon commits them with the config's bindings
		// (commitConfig).
		p, err := s.resolve(opts.Labels)
		if err != nil {
			return nil, err
		}
		s.labels, s.principals = opts.Labels, p
		return s, nil
	}
	blob, ok, err := d.Settings()
	if err != nil {
		return nil, fmt.Errorf("read label settings: %w", err)
	}
	from := "the dispatch state"
	if !ok && s.statePath != "" {
		// Settings of a build that kept them in the file alone.
		blob, err = safepath.ReadFile("label settings", s.statePath, MaxStateFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
			blob = nil
		case err != nil:
			return nil, fmt.Errorf("read label settings: %w", err)
		}
		from = s.statePath
	}
	if blob == nil {
		return s, nil
	}
	m, notes, err := settings.DecodeState(blob)
	if err != nil {
		return nil, fmt.Errorf("read label settings from %s: %w", from, err)
	}
	for _, n := range notes {
		s.log.Warn("recorded label setting not kept", "from", from, "note", n)
	}
	p, err := s.resolve(m)
	if err != nil {
		return nil, err
	}
	s.labels, s.principals = m, p
	if len(notes) > 0 {
		// Record what is now in force, so that status, a restart and
		// the daemonless CLI agree on it.
		if blob, err = settings.EncodeState(m); err != nil {
			return nil, err
		}
		ok = false
	}
	if !ok {
		if err := d.SetSettings(blob); err != nil {
			return nil, fmt.Errorf("record label settings: %w", err)
		}
		s.log.Info("label settings now recorded with the bindings", "from", s.statePath, "labels", len(m))
	}
	s.mirror()
	return s, nil
}

// resolve looks up the users and groups of each label's grants.
func (s *Server) resolve(m map[string]settings.Label) (map[string]config.Principals, error) {
	out := make(map[string]config.Principals, len(m))
	for name, l := range m {
		if l.Grants.IsZero() {
			continue
		}
		p, err := s.resolver.Resolve(l.Grants)
		if err != nil {
			return nil, fmt.Errorf("grants of label %s: %w", name, err)
		}
		out[name] = p
	}
	return out, nil
}

func (s *Server) persist() error {
	if s.statePath == "" {
		return nil
	}
	s.mu.RLock()
	b, err := settings.EncodeStateIndent(s.labels)
	s.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("save label settings: %w", err)
	}
	if err := safepath.WriteFile("label settings", s.statePath, b, 0o600); err != nil {
		return fmt.Errorf("save label settings: %w", err)
	}
	return nil
}

// MaxStateFile bounds the label settings file the daemon reads: 16,384
// labels with long grant lists fit well within it.
const MaxStateFile = 64 << 20

// Labels returns the label settings in force. The map is replaced, never
// changed, when they change; callers must not change it.
func (s *Server) Labels() map[string]settings.Label {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.labels
}

func (s *Server) serveConn(ctx context.Context, cc *control.Conn) {
	defer cc.Close()
	// Stopping the daemon ends idle connections too.
	stop := context.AfterFunc(ctx, func() { cc.Close() })
	defer stop()
	cred, err := cc.PeerCred()
	if err != nil {
		s.logLimited(0, "control connection without credentials", "err", err)
		return
	}
	p := peer{uid: cred.UID, gid: cred.GID, pid: cred.PID}
	c := &conn{c: cc, uid: p.uid}
	if err := s.conns.admit(c, connFD(cc)); err != nil {
		s.Stats.RefusedConnections.Add(1)
		s.logLimited(p.uid, "refused control connection", "peer_uid", p.uid, "peer_pid", p.pid, "reason", err.Error())
		// Say why, if the peer's socket takes it at once, and hang up.
		cc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		cc.WriteReply(control.NewErrorReply(control.ProtocolVersion, 0, control.Errorf(control.CodeInvalid, "%s", err.Error())))
		return
	}
	defer s.conns.remove(c)
	p.groups = peerGroups(cc)
	// Apply's bindings stay packed until the dispatcher reads them.
	cc.KeepPacked()
	if !p.root() {
		// Only root may call the operations with large requests
		// (apply); the others' limit comes from the protocol's table.
		cc.SetRequestLimit(control.MaxRequest(false))
	}
	for ctx.Err() == nil {
		c.busy.Store(false)
		cc.SetReadDeadline(time.Now().Add(idleTimeout))
		req, files, err := cc.ReadRequest()
		c.busy.Store(true)
		s.settling.RLock()
		s.settling.RUnlock()
		if err != nil {
			if isEOF(err) || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
				return
			}
			s.Stats.BadRequests.Add(1)
			s.logLimited(p.uid, "bad control request", "peer_uid", p.uid, "peer_pid", p.pid, "err", err)
			// Say what was wrong if the peer still listens, then hang up:
			// after a malformed message the stream cannot be trusted.
			cc.SetWriteDeadline(time.Now().Add(frameTimeout))
			cc.WriteReply(control.NewErrorReply(control.ProtocolVersion, 0, err))
			return
		}
		if lr, ok := req.Body.(*control.ListBindingsRequest); ok {
			if err := s.writeListing(cc, p, req, lr); err != nil {
				s.log.Debug("write control reply", "peer_uid", p.uid, "err", err)
				return
			}
			continue
		}
		// A large apply's garbage is handed back after its reply if it
		// was not before (Server.apply).
		ar, isApply := req.Body.(*control.ApplyRequest)
		free := isApply && ar.Config.NumBindings() >= largeApply
		rep := s.handle(p, req, files)
		for _, f := range files {
			f.Close() // the daemon never keeps a service's socket
		}
		if err := s.writeReply(cc, p, rep, free); err != nil {
			s.log.Debug("write control reply", "peer_uid", p.uid, "err", err)
			return
		}
	}
}

// replyDeadline is the latest a whole reply to p may take.
func replyDeadline(p peer) time.Time {
	if p.root() {
		return time.Time{}
	}
	return time.Now().Add(replyTimeout)
}

// writeReply sends rep within the deadlines, holding its encoded size
// against a non-root peer's reply budget until it is sent. With free, or
// if the reply is large, it then hands the daemon's garbage back.
func (s *Server) writeReply(cc *control.Conn, p peer, rep *control.Reply, free bool) error {
	enc, err := control.EncodeReplyFrames(rep)
	if err != nil {
		rep = control.NewErrorReply(rep.Version, rep.Op, err)
		if enc, err = control.EncodeReplyFrames(rep); err != nil {
			return err
		}
	}
	if err := s.conns.reserve(p.uid, enc.Size()); err != nil {
		s.Stats.RefusedReplies.Add(1)
		s.logLimited(p.uid, "refused reply", "peer_uid", p.uid, "peer_pid", p.pid, "reason", err.Error())
		if enc, err = control.EncodeReplyFrames(control.NewErrorReply(rep.Version, rep.Op, err)); err != nil {
			return err
		}
	} else {
		defer s.conns.release(p.uid, enc.Size())
	}
	if p.root() && free && enc.Size() <= control.MaxChunk {
		// One datagram, which the socket takes at once: a peer that
		// reads slowly cannot hold the lock.
		s.settling.Lock()
		defer s.settling.Unlock()
	}
	err = cc.WriteEncoded(enc, frameTimeout, replyDeadline(p))
	if p.root() && (free || enc.Size() >= largeReply) {
		// A reply listing many bindings (an apply's diff) left garbage
		// of its size; hand it back rather than keep it resident.
		enc = nil
		debug.FreeOSMemory()
	}
	return err
}

// largeReply is the size of a reply to root worth returning its memory at
// once.
const largeReply = 4 << 20

// largeApply is the fewest bindings of an apply worth returning its
// memory at once; a reply that lists more than shortDiff bindings waits
// for it.
const (
	largeApply = 10000
	shortDiff  = 1000
)

// writeListing answers ListBindings from the snapshot, streamed.
func (s *Server) writeListing(cc *control.Conn, p peer, req *control.Request, r *control.ListBindingsRequest) error {
	snap, err := s.listing()
	if err != nil {
		return s.writeReply(cc, p, control.NewErrorReply(req.Version, req.Op(), toControlError(err)), false)
	}
	var keep control.BindingFilter
	size := snap.v.size
	if r.Label != "" {
		keep = func(b *binding.Binding) bool { return b.Label == r.Label }
		size = 0
	}
	err = cc.WriteBindings(req.Version, snap.v.bindings, keep, size, frameTimeout, replyDeadline(p))
	// Holding snap until here kept the snapshot for readers that came
	// meanwhile.
	large := snap.v.size >= largeReply
	runtime.KeepAlive(snap)
	if p.root() && large {
		// Unless another reader holds it, the snapshot is garbage now;
		// hand its memory back rather than keep it resident. (Only for
		// root: other users could make the daemon do this all the time.)
		debug.FreeOSMemory()
	}
	return err
}

// listing is a snapshot of every binding, sorted, with the size of the
// reply that lists them all.
type listing struct {
	bindings []binding.Binding
	size     int
}

func (s *Server) listing() (*snapshot[listing], error) {
	return s.snaps.bindings.get(&s.snaps.gen, func() (listing, error) {
		bs, err := s.d.Bindings()
		if err != nil {
			return listing{}, err
		}
		return listing{bs, control.ListingSize(bs, nil)}, nil
	})
}

// bindings is the snapshot of every binding, sorted. Callers must not
// change it.
func (s *Server) bindings() ([]binding.Binding, error) {
	snap, err := s.listing()
	if err != nil {
		return nil, err
	}
	return snap.v.bindings, nil
}

// bindingCounts is the snapshot of the number of bindings per label.
// Callers must not change it.
func (s *Server) bindingCounts() (map[string]int, error) {
	snap, err := s.snaps.counts.get(&s.snaps.gen, s.d.BindingCounts)
	if err != nil {
		return nil, err
	}
	return snap.v, nil
}

// connFD is the descriptor number of a connection.
func connFD(cc *control.Conn) int {
	fd := -1
	if rc, err := cc.UnixConn().SyscallConn(); err == nil {
		rc.Control(func(s uintptr) { fd = int(s) })
	}
	return fd
}

type peer struct {
	uid, gid uint32
	pid      int32
	groups   []uint32
}

func (p peer) root() bool { return p.uid == 0 }

func (s *Server) handle(p peer, req *control.Request, files []*os.File) *control.Reply {
	body, err := s.do(p, req, files)
	if err != nil {
		return control.NewErrorReply(req.Version, req.Op(), toControlError(err))
	}
	return control.NewReply(req, body)
}

var errPermission = errors.New("permission denied")

func (s *Server) refuse(p peer, what string, counter *atomic.Uint64, format string, args ...any) error {
	counter.Add(1)
	msg := fmt.Sprintf(format, args...)
	s.logLimited(p.uid, "refused request", "op", what, "peer_uid", p.uid, "peer_gid", p.gid, "peer_pid", p.pid, "reason", msg)
	return fmt.Errorf("%w: %s", errPermission, msg)
}

func (s *Server) requireRoot(p peer, op string) error {
	if p.root() {
		return nil
	}
	return s.refuse(p, op, &s.Stats.RefusedChanges, "%s needs root (uid 0); uid %d may only register sockets for labels the daemon config grants it", op, p.uid)
}

func (s *Server) mayRegister(p peer, label string) error {
	if p.root() {
		return nil
	}
	s.mu.RLock()
	pr, ok := s.principals[label]
	s.mu.RUnlock()
	if ok && pr.Permits(p.uid, append([]uint32{p.gid}, p.groups...)...) {
		return nil
	}
	return s.refuse(p, "register", &s.Stats.RefusedRegistrations, "uid %d (gid %d) has no grant for label %s; add it under labels.%s.grants in the daemon config", p.uid, p.gid, label, label)
}

// do serves one request. Who may call it comes from the protocol's table
// (control.Spec); the handlers below check only what is theirs.
func (s *Server) do(p peer, req *control.Request, files []*os.File) (control.ResponseBody, error) {
	spec, ok := control.Spec(req.Op())
	if !ok {
		return nil, control.Errorf(control.CodeUnsupported, "operation %s is not supported by this daemon (version %s)", req.Op(), Version)
	}
	switch spec.Access {
	case control.Root:
		if err := s.requireRoot(p, spec.Name); err != nil {
			return nil, err
		}
	case control.Granted:
		gl, ok := req.Body.(control.GrantedLabel)
		if !ok {
			return nil, fmt.Errorf("%s: the request names no label to check grants for", spec.Name)
		}
		if err := s.mayRegister(p, gl.GrantedLabel()); err != nil {
			return nil, err
		}
	case control.Anyone:
	default:
		return nil, fmt.Errorf("%s: unknown access %s", spec.Name, spec.Access)
	}
	switch r := req.Body.(type) {
	case *control.VersionRequest:
		return &control.VersionResponse{Version: Version, Protocols: supportedProtocols()}, nil
	case *control.BindRequest:
		defer s.snaps.changed()
		added, err := s.d.AddBindings(r.Binding)
		if err != nil {
			return nil, err
		}
		if len(added) > 0 {
			s.log.Info("bound", "binding", r.Binding.String(), "peer_uid", p.uid)
		}
		return &control.BindResponse{}, nil
	case *control.UnbindRequest:
		defer s.snaps.changed()
		if err := s.d.RemoveBindings(r.Binding); err != nil {
			return nil, err
		}
		s.log.Info("unbound", "binding", r.Binding.String(), "peer_uid", p.uid)
		return &control.UnbindResponse{}, nil
	case *control.ListBindingsRequest:
		// Served streamed by writeListing; this is for callers of do.
		bs, err := s.bindings()
		if err != nil {
			return nil, err
		}
		var out []binding.Binding
		for _, b := range bs {
			if r.Label == "" || b.Label == r.Label {
				out = append(out, b)
			}
		}
		return &control.ListBindingsResponse{Bindings: out}, nil
	case *control.RegisterRequest:
		res := &control.RegisterResponse{}
		for _, f := range files {
			// Not f.Fd(): that would switch the service's socket, which
			// shares the file description, to blocking mode.
			rc, err := f.SyscallConn()
			if err != nil {
				return nil, err
			}
			var info sockinfo.Info
			var dest dispatch.Destination
			cerr := rc.Control(func(fd uintptr) {
				// The address is for the reply alone; RegisterFD
				// inspects the socket itself and refuses it if it must.
				info, _ = sockinfo.Inspect(int(fd))
				dest, err = s.d.RegisterFD(r.Label, int(fd))
			})
			if cerr != nil {
				return nil, cerr
			}
			if err != nil {
				s.Stats.RefusedRegistrations.Add(1)
				s.logLimited(p.uid, "refused socket", "label", r.Label, "peer_uid", p.uid, "peer_pid", p.pid, "err", err)
				return nil, err
			}
			res.Results = append(res.Results, control.RegisterResult{Protocol: dest.Protocol, Family: dest.Family, Local: info.Local, Replaced: dest.Replaced})
		}
		return res, nil
	case *control.UnregisterRequest:
		if err := s.d.Unregister(r.Label, r.Protocol, r.Family); err != nil {
			return nil, err
		}
		s.log.Info("unregistered", "label", r.Label, "protocol", r.Protocol.String(), "family", r.Family.String(), "peer_uid", p.uid)
		return &control.UnregisterResponse{}, nil
	case *control.StatusRequest:
		return s.status(req.Version, r.Label)
	case *control.SetPolicyRequest:
		return s.setPolicy(r)
	case *control.ApplyRequest:
		return s.apply(req.Version, r)
	default:
		return nil, control.Errorf(control.CodeUnsupported, "operation %s is not supported by this daemon (version %s)", req.Op(), Version)
	}
}

func supportedProtocols() []uint16 {
	var out []uint16
	for v := control.MinVersion; v <= control.MaxVersion; v++ {
		out = append(out, v)
	}
	return out
}

func (s *Server) status(version uint16, label string) (*control.StatusResponse, error) {
	counts, err := s.bindingCounts()
	if err != nil {
		return nil, err
	}
	labels, err := BuildStatus(s.d, counts, s.labelsNow(), s.endpoints, s.policyStatus, label)
	if err != nil {
		return nil, err
	}
	if label != "" && len(labels) == 0 {
		return nil, fmt.Errorf("status %s: %w: no binding, socket or setting has this label", label, dispatch.ErrNotFound)
	}
	if version < control.KernelBytesVersion {
		for i := range labels {
			labels[i].PolicyKernelBytes = 0 // unknown to the client
		}
	}
	return &control.StatusResponse{Version: Version, NetNS: s.d.NetNSCookie(), Labels: labels}, nil
}

// BuildStatus assembles the status of label ("" for every label) from what
// d reports, the binding counts per label and the label settings in force.
// The daemon and the CLI reading pinned state without it both build status
// here. endpoints gives the sockets' addresses by cookie and is called only
// if a socket is shown; policyState, if not nil, fills in each label's
// policy state. The labels come in name order; none for a label means no
// binding, socket or setting has it.
func BuildStatus(d *dispatch.Dispatcher, counts map[string]int, labels map[string]settings.Label, endpoints func() map[uint64]netip.AddrPort, policyState func(map[string]*control.LabelStatus), label string) ([]control.LabelStatus, error) {
	dests, err := d.Destinations()
	if err != nil {
		return nil, err
	}
	counters, _, err := d.Counters()
	if err != nil {
		return nil, err
	}
	byLabel := map[string]*control.LabelStatus{}
	get := func(name string) *control.LabelStatus {
		ls := byLabel[name]
		if ls == nil {
			ls = &control.LabelStatus{Label: name}
			byLabel[name] = ls
		}
		return ls
	}
	for name, n := range counts {
		get(name).Bindings = n
	}
	var eps map[uint64]netip.AddrPort
	for _, dst := range dests {
		if label != "" && dst.Label != label {
			continue
		}
		if eps == nil {
			eps = endpoints()
		}
		ls := get(dst.Label)
		ls.Sockets = append(ls.Sockets, control.SocketStatus{Protocol: dst.Protocol, Family: dst.Family, Local: eps[dst.Cookie], Cookie: dst.Cookie})
	}
	for name, c := range counters {
		ls := get(name)
		ls.Lookups, ls.Hits, ls.Missing, ls.BadSocket = c.Lookups, c.Hits, c.Missing, c.BadSocket
	}
	for name, st := range labels {
		get(name).Policy = st.Policy
	}
	if policyState != nil {
		policyState(byLabel)
	}
	var out []control.LabelStatus
	for _, name := range slices.Sorted(maps.Keys(byLabel)) {
		if label != "" && name != label {
			continue
		}
		out = append(out, *byLabel[name])
	}
	return out, nil
}

func (s *Server) setPolicy(r *control.SetPolicyRequest) (control.ResponseBody, error) {
	if err := r.Policy.Validate(); err != nil {
		return nil, err
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	next := maps.Clone(s.labelsNow())
	if next == nil {
		next = map[string]settings.Label{}
	}
	l := next[r.Label]
	l.Policy = r.Policy
	next[r.Label] = l
	if _, err := s.transact(nil, next, s.principals); err != nil {
		return nil, err
	}
	s.log.Info("policy set", "label", r.Label, "policy", r.Policy.String())
	return &control.SetPolicyResponse{}, nil
}

// apply serves an Apply request of protocol version v.
func (s *Server) apply(v uint16, r *control.ApplyRequest) (*control.ApplyResponse, error) {
	next := make(map[string]settings.Label, len(r.Config.Labels))
	for _, l := range r.Config.Labels {
		if err := l.Validate(); err != nil {
			return nil, fmt.Errorf("label %s: %w", l.Name, err)
		}
		if l.Kind != settings.None {
			s.mu.RLock()
			pm, why := s.pm, s.pmWhy
			s.mu.RUnlock()
			if pm == nil {
				return nil, control.Errorf(control.CodeUnsupported, "label %s: policy %s: connection policies are unavailable here: %s", l.Name, l.Kind, why)
			}
		}
		next[l.Name] = l.Label
	}
	principals, err := s.resolve(next)
	if err != nil {
		return nil, err
	}
	// The request's bindings stay packed as they arrived (12 MB at a
	// million; see serveConn), and the reply lists the diff from the
	// changed groups as it is encoded: neither is held as a list.
	// The apply takes them from the request, so that they go once read.
	n, all := r.Config.TakeBindings()
	// Hand back the garbage of a large apply before its reply is encoded
	// if that reply lists bindings; writeReply does so after the reply in
	// any case, before it serves another request. A full collection takes
	// most of a second at a million bindings: a short reply (the first
	// apply of a file, see control.Diff.AddRequest) is not kept waiting
	// for it.
	freeFirst := n >= largeApply
	defer func() {
		if freeFirst {
			debug.FreeOSMemory()
		}
	}()
	s.txMu.Lock()
	defer s.txMu.Unlock()
	if n >= 10000 {
		// Below, the collector stays off while the apply allocates:
		// garbage left from before (other requests since the last
		// collection) would add to its peak. So would the garbage of
		// the rest of a large change before, which the dispatcher may
		// still be doing after that change's reply: wait for it.
		s.d.Settle()
		collectGarbage(8 << 20)
	}
	if n >= 10000 && debug.SetMemoryLimit(-1) < math.MaxInt64 {
		// The heap of a large apply only grows until it is done: with
		// the pacer's usual target the collector ran again and again
		// over it (a fifth of the daemon's CPU at 1,048,576 bindings).
		// Until then it runs only at the soft memory limit, which
		// bounds the heap as before. Under txMu, so that overlapping
		// applies do not save each other's "off" and restore it for
		// good (deferred after the unlock, it runs before it).
		defer debug.SetGCPercent(debug.SetGCPercent(-1))
	}
	changes := labelChanges(s.labelsNow(), next)
	var diff *dispatch.Diff
	if r.DryRun {
		diff, err = s.d.ReplaceSeq(n, all, nil, true)
	} else {
		diff, err = s.transact(&bindingSource{n, all}, next, principals)
	}
	if err != nil {
		return nil, err
	}
	added, removed := diff.Len()
	s.log.Info("applied config", "dry_run", r.DryRun, "added_bindings", added, "removed_bindings", removed, "label_changes", len(changes))
	res := &control.ApplyResponse{Applied: !r.DryRun, Diff: control.Diff{Labels: changes}}
	res.Diff.SetBindings(added, diff.Added, removed, diff.Removed)
	// Every binding added is one of the request's, none twice: as many
	// as it had means all of them, which a client of AddRequestVersion
	// holds already.
	res.Diff.AddRequest = n > 0 && added == n
	listed := removed
	if !res.Diff.AddRequest || v < control.AddRequestVersion {
		listed += added
	}
	freeFirst = freeFirst && listed > shortDiff
	return res, nil
}

// collectGarbage runs the collector if more than min bytes were allocated
// since it last ran, some of which may be garbage.
func collectGarbage(min uint64) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	if s[1].Value.Kind() == metrics.KindUint64 && s[1].Value.Uint64() > s[0].Value.Uint64()+min {
		runtime.GC()
	}
}

// labelChanges lists the labels whose settings differ between cur and
// next.
func labelChanges(cur, next map[string]settings.Label) []control.LabelChange {
	var changes []control.LabelChange
	for _, name := range slices.Sorted(maps.Keys(unionKeys(cur, next))) {
		old, hadOld := cur[name]
		nw, hasNew := next[name]
		if hadOld && hasNew && sameSettings(old, nw) {
			continue
		}
		ch := control.LabelChange{Label: name}
		if hadOld {
			ch.Old = &settings.Named{Name: name, Label: old}
		}
		if hasNew {
			ch.New = &settings.Named{Name: name, Label: nw}
		}
		changes = append(changes, ch)
	}
	return changes
}

func unionKeys[V1, V2 any](a map[string]V1, b map[string]V2) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// sameSettings reports whether a and b are the same settings, grants
// compared as sets of ids and names.
func sameSettings(a, b settings.Label) bool {
	if a.Policy != b.Policy {
		return false
	}
	sorted := func(g settings.Grants) settings.Grants {
		g = settings.Grants{UIDs: slices.Clone(g.UIDs), GIDs: slices.Clone(g.GIDs), Users: slices.Clone(g.Users), Groups: slices.Clone(g.Groups)}
		slices.Sort(g.UIDs)
		slices.Sort(g.GIDs)
		slices.Sort(g.Users)
		slices.Sort(g.Groups)
		return g
	}
	return sorted(a.Grants).Equal(sorted(b.Grants))
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// toControlError gives err the protocol code a client can branch on.
func toControlError(err error) error {
	var ce *control.Error
	if errors.As(err, &ce) {
		return err
	}
	code := control.CodeInternal
	switch {
	case errors.Is(err, errPermission):
		code = control.CodePermission
	case errors.Is(err, dispatch.ErrConflict):
		code = control.CodeConflict
	case errors.Is(err, dispatch.ErrNotFound):
		code = control.CodeNotFound
	case errors.Is(err, binding.ErrInvalid), errors.Is(err, dispatch.ErrBadSocket),
		errors.Is(err, dispatch.ErrCapacity), sockinfo.IsRefusal(err), errors.Is(err, config.ErrInvalid):
		code = control.CodeInvalid
	}
	return control.Errorf(code, "%s", err.Error())
}

// peerGroups reads the peer's supplementary groups (SO_PEERGROUPS).
func peerGroups(c *control.Conn) []uint32 {
	rc, err := c.UnixConn().SyscallConn()
	if err != nil {
		return nil
	}
	var groups []uint32
	rc.Control(func(fd uintptr) {
		buf := make([]byte, 4*256)
		n := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno != 0 {
			return
		}
		for i := 0; i+4 <= int(n); i += 4 {
			groups = append(groups, binary.NativeEndian.Uint32(buf[i:]))
		}
	})
	return groups
}

// DefaultStatePath is where label settings persist for a control socket.
func DefaultStatePath(controlPath string) string {
	return filepath.Join(filepath.Dir(controlPath), filepath.Base(controlPath)+".labels.json")
}

// endpoints returns the addresses of the namespace's sockets by cookie, for
// status; on failure none (status then names sockets by cookie).
func (s *Server) endpoints() map[uint64]netip.AddrPort {
	eps, err := Endpoints(s.netnsPath)
	if err != nil {
		s.log.Debug("socket addresses", "err", err)
	}
	return eps
}

// Endpoints returns the addresses of the sockets of the network namespace at
// netnsPath ("" for the caller's own) by cookie, from the kernel's socket
// diagnostics. On error the map is empty, never nil.
func Endpoints(netnsPath string) (map[uint64]netip.AddrPort, error) {
	eps := map[uint64]netip.AddrPort{}
	ns, err := netns.Open(netnsPath)
	if err != nil {
		return eps, err
	}
	defer ns.Close()
	err = ns.Do(func() error {
		found, err := sockinfo.Endpoints()
		if err == nil {
			eps = found
		}
		return err
	})
	return eps, err
}
