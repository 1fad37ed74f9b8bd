package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Verdict is what the dispatch program does with a connection or datagram.
type Verdict int

const (
	// VerdictKernel: no binding matches; the kernel's own lookup goes on.
	VerdictKernel Verdict = iota
	// VerdictDelivered: the label's socket gets it.
	VerdictDelivered
	// VerdictRefused: a binding matches but its label has no usable
	// socket: TCP is refused, a datagram dropped.
	VerdictRefused
)

func (v Verdict) String() string {
	switch v {
	case VerdictDelivered:
		return "delivered"
	case VerdictRefused:
		return "refused"
	}
	return "kernel"
}

// Explanation says what the dispatch program does with traffic to one
// destination, and why.
type Explanation struct {
	// Binding is the binding that wins; Matched is false if none does.
	Binding binding.Binding
	Matched bool
	Verdict Verdict
	// Socket is the destination the program chose (Delivered), or the
	// one it found unusable (Refused with BadSocket). ReusePort: the
	// socket is in a SO_REUSEPORT group, whose members the kernel picks
	// from.
	Socket    Destination
	ReusePort bool
	// BadSocket: refused because the kernel would not assign the
	// registered socket (rather than for want of one).
	BadSocket bool
	// CountersTouched: the test run counted in the label's counters,
	// because the attached program is not this build's and had to run
	// as it is (see Explainer).
	CountersTouched bool
}

// Explainer runs the attached dispatch program on a namespace's pinned
// state with BPF_PROG_TEST_RUN, which changes nothing, to tell what it does
// with traffic to a destination, and finds the binding that wins in the
// recorded bindings with a second program (bpf/explain.c) that walks them
// in the kernel, so that neither depends on reading every binding out.
//
// When the attached program is this build's (sy_config records its hash),
// the Explainer runs its own copy of it against the pinned maps with a
// private counters map, so the label's counters do not count the test
// runs. Otherwise it runs the attached program itself, which counts them
// (Explanation.CountersTouched).
type Explainer struct {
	dir      string
	dirf     *os.File
	dispatch *ebpf.Program
	explain  *ebpf.Program
	result   *ebpf.Variable
	counters *ebpf.Map // private, or the pinned one
	private  bool
	sockets  *ebpf.Map
	labels   *ebpf.Map
	names    map[uint32]string
	closers  []interface{ Close() error }
}

// OpenExplainer opens the pinned state of the network namespace with inode
// nsInode under root read-only. It returns an error wrapping ErrNotFound if
// there is none.
func OpenExplainer(root string, nsInode uint64) (_ *Explainer, err error) {
	if root == "" {
		root = DefaultRoot
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	e := &Explainer{dir: StateDir(root, nsInode)}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.dirf, err = os.Open(e.dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("state %s: %w: no dispatcher has run in this namespace", e.dir, ErrNotFound)
		}
		return nil, fmt.Errorf("state open: %w", err)
	}
	unlock, err := e.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	pinned := map[string]*ebpf.Map{}
	pin := func(name string) (*ebpf.Map, error) {
		if m := pinned[name]; m != nil {
			return m, nil
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(e.dir, name), nil)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", e.dir, err)
		}
		e.closers = append(e.closers, m)
		pinned[name] = m
		return m, nil
	}
	for _, name := range []string{"sy_config", "sy_sockets", "sy_labels", "sy_bindings"} {
		if _, err := pin(name); err != nil {
			return nil, err
		}
	}
	e.sockets, e.labels = pinned["sy_sockets"], pinned["sy_labels"]

	// The explainer: only the binding record in force is shared.
	espec, err := loadExplain()
	if err != nil {
		return nil, fmt.Errorf("load explain spec: %w", err)
	}
	var eo struct {
		Prog   *ebpf.Program  `ebpf:"sy_explain"`
		Result *ebpf.Variable `ebpf:"sy_result"`
	}
	record, err := bindingsInForce(e.dir, pin)
	if err != nil {
		return nil, err
	}
	if err := espec.LoadAndAssign(&eo, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"sy_bindings": record}}); err != nil {
		return nil, fmt.Errorf("load explain program: %w", err)
	}
	e.explain, e.result = eo.Prog, eo.Result
	e.closers = append(e.closers, eo.Prog)

	var cfg dispatchSyCfg
	if err := pinned["sy_config"].Lookup(uint32(0), &cfg); err != nil {
		return nil, fmt.Errorf("state %s: read config: %w", e.dir, err)
	}
	if cfg.Prog == progHash() {
		if err := e.loadCopy(pin); err == nil {
			return e, nil
		}
	}
	return e, e.adoptAttached(pinned)
}

// loadCopy loads this build's dispatch program against the pinned maps,
// with a counters map of its own.
func (e *Explainer) loadCopy(pin func(string) (*ebpf.Map, error)) error {
	spec, err := loadSpec()
	if err != nil {
		return err
	}
	repl := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if name == ".rodata" || name == ".bss" || name == ".data" {
			continue
		}
		ms.Pinning = ebpf.PinNone
		if name == "sy_counters" {
			continue
		}
		m, err := pin(name)
		if err != nil {
			return err
		}
		repl[name] = m
	}
	var do struct {
		Prog     *ebpf.Program `ebpf:"sy_dispatch"`
		Counters *ebpf.Map     `ebpf:"sy_counters"`
	}
	if err := spec.LoadAndAssign(&do, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return err
	}
	e.dispatch, e.counters, e.private = do.Prog, do.Counters, true
	e.closers = append(e.closers, do.Prog, do.Counters)
	return nil
}

// adoptAttached takes the program the pinned link runs.
func (e *Explainer) adoptAttached(pinned map[string]*ebpf.Map) error {
	l, err := link.LoadPinnedLink(filepath.Join(e.dir, linkPin), nil)
	if err != nil {
		return fmt.Errorf("state %s: no program attached: %w", e.dir, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("state %s: link info: %w", e.dir, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return fmt.Errorf("state %s: attached program: %w", e.dir, err)
	}
	e.closers = append(e.closers, prog)
	counters, err := ebpf.LoadPinnedMap(filepath.Join(e.dir, "sy_counters"), nil)
	if err != nil {
		return fmt.Errorf("state %s: %w", e.dir, err)
	}
	e.closers = append(e.closers, counters)
	e.dispatch, e.counters = prog, counters
	return nil
}

// Close releases the Explainer's handles.
func (e *Explainer) Close() error {
	for _, c := range e.closers {
		c.Close()
	}
	if e.dirf != nil {
		e.dirf.Close()
	}
	return nil
}

// CountersPrivate reports whether test runs leave the label counters alone.
func (e *Explainer) CountersPrivate() bool { return e.private }

func (e *Explainer) lock() (func(), error) {
	fd := int(e.dirf.Fd())
	for {
		err := unix.Flock(fd, unix.LOCK_SH)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock state %s: %w", e.dir, err)
		}
		return func() { unix.Flock(fd, unix.LOCK_UN) }, nil
	}
}

// sockLookupCtx is struct bpf_sk_lookup as BPF_PROG_TEST_RUN takes it.
type sockLookupCtx struct {
	Cookie     uint64
	Family     uint32
	Protocol   uint32
	RemoteIP4  uint32
	RemoteIP6  [4]uint32
	RemotePort uint16 // network byte order
	_          uint16
	LocalIP4   uint32
	LocalIP6   [4]uint32
	LocalPort  uint32 // host byte order
	Ifindex    uint32
	_          uint32
}

func words(a netip.Addr) (v4 uint32, v6 [4]uint32) {
	ne := binary.NativeEndian
	if a.Is4() {
		b := a.As4()
		return ne.Uint32(b[:]), v6
	}
	b := a.As16()
	for i := range v6 {
		v6[i] = ne.Uint32(b[4*i:])
	}
	return 0, v6
}

// Explain tells what the dispatch program does with traffic of protocol
// proto to dst from src (which may be the zero AddrPort). dst and src must
// be of one family; IPv4-mapped IPv6 addresses are taken as IPv4.
func (e *Explainer) Explain(proto binding.Protocol, dst, src netip.AddrPort) (Explanation, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if src.IsValid() {
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if src.Addr().Is4() != dst.Addr().Is4() {
			return Explanation{}, fmt.Errorf("lookup: %s and %s are of different address families", dst, src)
		}
	}
	ctx := sockLookupCtx{LocalPort: uint32(dst.Port())}
	switch proto {
	case binding.TCP:
		ctx.Protocol = unix.IPPROTO_TCP
	case binding.UDP:
		ctx.Protocol = unix.IPPROTO_UDP
	default:
		return Explanation{}, fmt.Errorf("lookup: protocol %s: %w", proto, binding.ErrInvalid)
	}
	ctx.Family = unix.AF_INET6
	if dst.Addr().Is4() {
		ctx.Family = unix.AF_INET
	}
	ctx.LocalIP4, ctx.LocalIP6 = words(dst.Addr())
	if src.IsValid() {
		ctx.RemoteIP4, ctx.RemoteIP6 = words(src.Addr())
		var p [2]byte
		binary.BigEndian.PutUint16(p[:], src.Port())
		ctx.RemotePort = binary.NativeEndian.Uint16(p[:])
	}

	unlock, err := e.lock()
	if err != nil {
		return Explanation{}, err
	}
	defer unlock()

	var x Explanation
	in := ctx
	if _, err := e.explain.Run(&ebpf.RunOptions{Context: in}); err != nil {
		return x, fmt.Errorf("lookup: run explain program: %w", err)
	}
	var res explainSyExplained
	if err := e.result.Get(&res); err != nil {
		return x, fmt.Errorf("lookup: explain result: %w", err)
	}
	label := uint32(0)
	if res.Plen >= 0 {
		key, err := bindingFromMapKey(&dispatchSyBindingKey{Proto: res.Key.Proto, Family: res.Key.Family, Plen: res.Key.Plen, Addr: res.Key.Addr, Lo: res.Key.Lo, Hi: res.Key.Hi})
		if err != nil {
			return x, fmt.Errorf("lookup: %w", err)
		}
		name, err := e.labelName(res.Label)
		if err != nil {
			return x, err
		}
		label = res.Label
		x.Binding = binding.Binding{Label: name, Protocol: key.Protocol, Prefix: key.Prefix, Ports: key.Ports}
		x.Matched = true
	}

	before, err := e.count(label)
	if err != nil {
		return x, err
	}
	var out sockLookupCtx
	ret, err := e.dispatch.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
	reuse := errors.Is(err, unix.EOPNOTSUPP)
	if err != nil && !reuse {
		return x, fmt.Errorf("lookup: run dispatch program: %w", err)
	}
	after, err := e.count(label)
	if err != nil {
		return x, err
	}
	x.CountersTouched = !e.private
	// The kernel refuses to finish a test run that selected a member of
	// a SO_REUSEPORT group (net/bpf/test_run.c,
	// bpf_prog_test_run_sk_lookup): the program delivered, to the group.
	switch {
	case reuse || (ret == 1 && out.Cookie != 0):
		x.Verdict = VerdictDelivered
	case ret == 1:
		x.Verdict = VerdictKernel
	default:
		x.Verdict = VerdictRefused
	}
	if x.Matched != (x.Verdict != VerdictKernel) || after.Lookups == before.Lookups {
		return x, fmt.Errorf("lookup: the dispatch program (%s, %d lookups counted) and the recorded bindings (%v) disagree: is a change of bindings stuck? 'switchyard bindings' repairs it", x.Verdict, after.Lookups-before.Lookups, x.Matched)
	}
	x.BadSocket = after.BadSocket != before.BadSocket
	if x.Verdict == VerdictDelivered || x.BadSocket {
		fam := binding.FamilyOf(dst.Addr())
		x.Socket = Destination{Label: x.Binding.Label, Protocol: proto, Family: fam}
		c, ok := e.cookie(slotOf(label, proto, fam))
		if !ok && fam == binding.IPv4 {
			// A dual-stack IPv6 socket serves IPv4.
			x.Socket.Family = binding.IPv6
			c, _ = e.cookie(slotOf(label, proto, binding.IPv6))
		}
		x.Socket.Cookie = c
		if x.Verdict == VerdictDelivered && !reuse {
			x.Socket.Cookie = out.Cookie
		}
		x.ReusePort = reuse
	}
	return x, nil
}

func (e *Explainer) cookie(slot uint32) (uint64, bool) {
	var c uint64
	err := e.sockets.Lookup(slot, &c)
	return c, err == nil
}

func (e *Explainer) count(label uint32) (Counters, error) {
	var per []dispatchSyStats
	if err := e.counters.Lookup(label, &per); err != nil {
		return Counters{}, fmt.Errorf("lookup: read counters: %w", err)
	}
	var c Counters
	for _, s := range per {
		c.Lookups += s.Lookups
		c.Hits += s.Hits
		c.Missing += s.Missing
		c.BadSocket += s.BadSocket
	}
	return c, nil
}

// labelName finds the name of label id in sy_labels, reading them all on
// first use.
func (e *Explainer) labelName(id uint32) (string, error) {
	if name, ok := e.names[id]; ok {
		return name, nil
	}
	e.names = map[uint32]string{}
	var k dispatchSyLabelKey
	var v dispatchSyLabelVal
	it := e.labels.Iterate()
	for it.Next(&k, &v) {
		e.names[v.Id] = labelName(&k)
	}
	if err := it.Err(); err != nil {
		return "", fmt.Errorf("lookup: read labels: %w", err)
	}
	name, ok := e.names[id]
	if !ok {
		return "", fmt.Errorf("lookup: binding refers to unknown label id %d", id)
	}
	return name, nil
}
