package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

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
	// CountersTouched: what the test run counted in the label's
	// counters could not be taken back (see Explainer).
	CountersTouched bool
}

// Explainer runs the attached dispatch program on a namespace's pinned
// state with BPF_PROG_TEST_RUN, which sends nothing, to tell what it does
// with traffic to a destination, and names the binding that wins with
// programs of its own (bpf/explain.c): the prefix length and label from the
// data path, the port set from the recorded bindings, probed narrowest
// first, or else walked in the kernel. Nothing reads every binding out.
//
// The dispatch program counts each test run in the label's counters, per
// CPU; the Explainer runs it on one CPU and then takes the counts back on
// that CPU with another program (sy_uncount), so lookups do not show in
// the counters. The one exception is a lookup that races, on that CPU and
// within the instructions of one increment, with traffic the program
// counts in a softirq: that count may be lost.
type Explainer struct {
	dir       string
	dirf      *os.File
	dispatch  *ebpf.Program
	explain   *ebpf.Program
	walk      *ebpf.Program
	uncount   *ebpf.Program
	result    *ebpf.Variable
	uncountID *ebpf.Variable
	uncountOf *ebpf.Variable
	counters  *ebpf.Map
	sockets   *ebpf.Map
	labels    *ebpf.Map
	names     map[uint32]string
	spec      *ebpf.CollectionSpec
	repl      map[string]*ebpf.Map
	closers   []interface{ Close() error }
}

// OpenExplainer opens the pinned state of the network namespace with inode
// nsInode under root, to read it. It returns an error wrapping ErrNotFound
// if there is none.
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

	spec, err := loadExplain()
	if err != nil {
		return nil, fmt.Errorf("load explain spec: %w", err)
	}
	var eo struct {
		Explain   *ebpf.Program  `ebpf:"sy_explain"`
		Uncount   *ebpf.Program  `ebpf:"sy_uncount"`
		Result    *ebpf.Variable `ebpf:"sy_result"`
		UncountID *ebpf.Variable `ebpf:"sy_uncount_label"`
		UncountOf *ebpf.Variable `ebpf:"sy_uncount_what"`
		BSS       *ebpf.Map      `ebpf:".bss"`
	}
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
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") || name == "sy_filter" || name == "sy_index" || name == "sy_noports" || name == "sy_noaddr" || name == "sy_blocks" {
			continue
		}
		m, err := pin(name)
		if name == "sy_bindings" {
			// The binding record in force (see record.go).
			m, err = bindingsInForce(e.dir, pin)
		}
		if err != nil {
			return nil, err
		}
		repl[name] = m
	}
	if err := ConfigReplacement(e.dir, spec, repl); err != nil {
		return nil, err
	}
	e.closers = append(e.closers, repl[cfgSection])
	if err := spec.LoadAndAssign(&eo, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("state %s: %w: it was made by another build; run the switchyard of the daemon's build: %w", e.dir, ErrIncompatible, err)
		}
		return nil, fmt.Errorf("load explain programs: %w", err)
	}
	e.closers = append(e.closers, eo.Explain, eo.Uncount, eo.BSS)
	e.explain, e.uncount = eo.Explain, eo.Uncount
	// The walk is loaded when needed, sharing the result.
	e.spec, e.repl = spec, repl
	e.repl[".bss"] = eo.BSS
	e.result, e.uncountID, e.uncountOf = eo.Result, eo.UncountID, eo.UncountOf
	e.counters, e.sockets, e.labels = repl["sy_counters"], repl["sy_sockets"], repl["sy_labels"]

	l, err := link.LoadPinnedLink(filepath.Join(e.dir, linkPin), nil)
	if err != nil {
		return nil, fmt.Errorf("state %s: no program attached: %w", e.dir, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("state %s: link info: %w", e.dir, err)
	}
	if e.dispatch, err = ebpf.NewProgramFromID(info.Program); err != nil {
		return nil, fmt.Errorf("state %s: attached program: %w", e.dir, err)
	}
	e.closers = append(e.closers, e.dispatch)
	return e, nil
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

// queryCtx is the test run context of traffic of protocol proto to dst
// (unmapped) from src.
func queryCtx(proto binding.Protocol, dst, src netip.AddrPort) (sockLookupCtx, error) {
	if src.IsValid() {
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if src.Addr().Is4() != dst.Addr().Is4() {
			return sockLookupCtx{}, fmt.Errorf("lookup: %s and %s are of different address families", dst, src)
		}
	}
	ctx := sockLookupCtx{LocalPort: uint32(dst.Port())}
	switch proto {
	case binding.TCP:
		ctx.Protocol = unix.IPPROTO_TCP
	case binding.UDP:
		ctx.Protocol = unix.IPPROTO_UDP
	default:
		return ctx, fmt.Errorf("lookup: protocol %s: %w", proto, binding.ErrInvalid)
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
	return ctx, nil
}

// Explain tells what the dispatch program does with traffic of protocol
// proto to dst from src (which may be the zero AddrPort). dst and src must
// be of one family; IPv4-mapped IPv6 addresses are taken as IPv4.
func (e *Explainer) Explain(proto binding.Protocol, dst, src netip.AddrPort) (Explanation, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	ctx, err := queryCtx(proto, dst, src)
	if err != nil {
		return Explanation{}, err
	}

	unlock, err := e.lock()
	if err != nil {
		return Explanation{}, err
	}
	defer unlock()

	var x Explanation
	in := ctx
	res, err := e.find(in)
	if err != nil {
		return x, err
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

	// Run the dispatch program and take back what it counted, both on
	// one CPU: the counters are per CPU.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu, restore, err := pinToCPU()
	if err != nil {
		return x, err
	}
	defer restore()
	before, err := e.count(label, cpu)
	if err != nil {
		return x, err
	}
	var out sockLookupCtx
	ret, err := e.dispatch.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
	reuse := errors.Is(err, unix.EOPNOTSUPP)
	if err != nil && !reuse {
		return x, fmt.Errorf("lookup: run dispatch program: %w", err)
	}
	after, err := e.count(label, cpu)
	if err != nil {
		return x, err
	}
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
	x.BadSocket = x.Verdict == VerdictRefused && after.BadSocket > before.BadSocket && after.Missing == before.Missing
	what := uint32(0)
	switch {
	case x.Verdict == VerdictDelivered:
		what = 1
	case x.BadSocket:
		what = 3
	case x.Verdict == VerdictRefused:
		what = 2
	}
	if after.Lookups > before.Lookups {
		if err := e.takeBack(label, what); err != nil {
			x.CountersTouched = true
		}
	} else {
		x.CountersTouched = true // counted elsewhere: cannot tell
	}
	if x.Matched != (x.Verdict != VerdictKernel) || after.Lookups == before.Lookups {
		return x, fmt.Errorf("lookup: the dispatch program (%s) and the recorded bindings (%v) disagree: is a change of bindings stuck? 'switchyard bindings' as root repairs it", x.Verdict, x.Binding)
	}
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

// find runs the explainer, and the walk if the probe budget ran out.
func (e *Explainer) find(in sockLookupCtx) (explainSyExplained, error) {
	var res explainSyExplained
	for i, p := range []*ebpf.Program{e.explain, e.walk} {
		if i == 1 && p == nil {
			var wo struct {
				Walk *ebpf.Program `ebpf:"sy_explain_walk"`
			}
			if err := e.spec.LoadAndAssign(&wo, &ebpf.CollectionOptions{MapReplacements: e.repl}); err != nil {
				return res, fmt.Errorf("lookup: load walk program: %w", err)
			}
			e.walk, p = wo.Walk, wo.Walk
			e.closers = append(e.closers, wo.Walk)
		}
		if _, err := p.Run(&ebpf.RunOptions{Context: in}); err != nil {
			return res, fmt.Errorf("lookup: run explain program: %w", err)
		}
		if err := e.result.Get(&res); err != nil {
			return res, fmt.Errorf("lookup: explain result: %w", err)
		}
		if res.Plen < 0 || res.Exact != 0 {
			return res, nil
		}
	}
	return res, fmt.Errorf("lookup: the data path has a binding of prefix length %d for label id %d that the recorded bindings lack: is a change of bindings stuck? 'switchyard bindings' as root repairs it", res.Plen, res.Label)
}

// takeBack undoes, on this CPU, one count of the dispatch program for
// label: its lookup and, by what, its hit (1), missing (2) or bad socket
// (3).
func (e *Explainer) takeBack(label, what uint32) error {
	if err := e.uncountID.Set(label); err != nil {
		return err
	}
	if err := e.uncountOf.Set(what); err != nil {
		return err
	}
	ret, err := e.uncount.Run(&ebpf.RunOptions{Context: sockLookupCtx{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP}})
	if err == nil && ret != 1 {
		err = fmt.Errorf("no counters for label id %d", label)
	}
	return err
}

// pinToCPU binds the calling thread, locked to it by the caller, to the
// CPU it runs on, and returns that CPU and how to undo it. The CPU it runs
// on rather than another: moving there would wait for that CPU's queue,
// which on a busy machine costs more than the whole lookup.
func pinToCPU() (int, func(), error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return 0, nil, fmt.Errorf("lookup: cpu affinity: %w", err)
	}
	var cur uint32
	if _, _, errno := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cur)), 0, 0); errno != 0 {
		return 0, nil, fmt.Errorf("lookup: getcpu: %w", errno)
	}
	cpu := int(cur)
	for i := 0; !old.IsSet(cpu) && i < 1024; i++ {
		cpu = i // moved since: any CPU it may run on
	}
	if !old.IsSet(cpu) {
		return 0, nil, errors.New("lookup: no cpu to run on")
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return 0, nil, fmt.Errorf("lookup: cpu affinity: %w", err)
	}
	return cpu, func() { unix.SchedSetaffinity(0, &old) }, nil
}

func (e *Explainer) cookie(slot uint32) (uint64, bool) {
	var c uint64
	err := e.sockets.Lookup(slot, &c)
	return c, err == nil
}

// count reads label's counters on cpu.
func (e *Explainer) count(label uint32, cpu int) (Counters, error) {
	var per []dispatchSyStats
	if err := e.counters.Lookup(label, &per); err != nil {
		return Counters{}, fmt.Errorf("lookup: read counters: %w", err)
	}
	if cpu >= len(per) {
		return Counters{}, fmt.Errorf("lookup: read counters: no cpu %d", cpu)
	}
	return countersOf(label, per[cpu]), nil
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
