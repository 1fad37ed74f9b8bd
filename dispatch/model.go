package dispatch

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// groupKey names the bindings of one protocol and prefix: they share one
// entry in sy_prefixes. It holds the prefix as bytes rather than a
// netip.Prefix, whose address holds a pointer: the model keeps a key per
// group (a million at the limit) in maps and slices, and pointer-free ones
// are smaller, hash faster and are never scanned by the collector.
type groupKey struct {
	proto binding.Protocol
	bits  uint8
	is6   bool
	addr  [16]byte // netip.Addr.As16
}

func keyOf(proto binding.Protocol, p netip.Prefix) groupKey {
	a := p.Addr()
	return groupKey{proto: proto, bits: uint8(p.Bits()), is6: a.Is6(), addr: a.As16()}
}

// prefix is the key's prefix, as binding.Validate accepts it.
func (k groupKey) prefix() netip.Prefix {
	a := netip.AddrFrom16(k.addr)
	if !k.is6 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(k.bits))
}

// compareAddr orders keys by address as netip.Addr.Compare does: IPv4
// before IPv6, then by value.
func compareAddr(a, b groupKey) int {
	if a.is6 != b.is6 {
		if a.is6 {
			return 1
		}
		return -1
	}
	return bytes.Compare(a.addr[:], b.addr[:])
}

type group struct {
	ports []portLabel // sorted by port set
	c     compiled
	slot  uint32 // table slot, 0 when segments are inline
}

// portLabel is one binding of a group.
type portLabel struct {
	ports binding.Ports
	label string
}

func comparePorts(a, b binding.Ports) int {
	if c := cmp.Compare(a.Lo, b.Lo); c != 0 {
		return c
	}
	return cmp.Compare(a.Hi, b.Hi)
}

func sortPorts(ps []portLabel) {
	slices.SortFunc(ps, func(a, b portLabel) int { return comparePorts(a.ports, b.ports) })
}

// findPorts returns the index of the binding of port set p, or -1.
func findPorts(ps []portLabel, p binding.Ports) int {
	for i := range ps {
		if ps[i].ports == p {
			return i
		}
	}
	return -1
}

// portFinder finds port sets in the lists of groups that only grow, by
// appends of port sets they do not hold yet, between its calls (as an edit
// builds them). It reads a short list through; a long one (a prefix bound
// port by port) through an index that each call brings up to date, so that
// building a list of n bindings costs O(n), not O(n²).
type portFinder[K comparable] map[K]map[binding.Ports]int

// longPorts is the length from which a list is indexed.
const longPorts = 32

func (f portFinder[K]) find(k K, ps []portLabel, p binding.Ports) int {
	if len(ps) < longPorts {
		return findPorts(ps, p)
	}
	ix := f[k]
	if ix == nil {
		ix = make(map[binding.Ports]int, 2*len(ps))
		f[k] = ix
	}
	for i := len(ix); i < len(ps); i++ {
		ix[ps[i].ports] = i
	}
	if i, ok := ix[p]; ok {
		return i
	}
	return -1
}

// model is a process's picture of the pinned state. It is rebuilt from the
// maps whenever another process changed them (sy_config.serial moved).
type model struct {
	serial  uint64
	gen     uint32
	rec     commitVal // the commit record it was read with
	dataOK  bool      // readModel found the data path to match the record
	indexOK bool      // the active generation's index and filter are this build's
	smallOK bool      // sy_config holds this build's small sets (small.go)
	count   int       // bindings in all groups
	labels  map[string]uint32
	names   map[uint32]string
	kept    map[string]bool // labels kept without bindings or sockets
	groups  map[groupKey]*group
	protos  map[string]*[2]int // per label: bindings of tcp and udp
	plens   [4]map[uint8]int   // per proto*2+family: groups per prefix length
	words   []uint64           // the filter (filterWords words), kept with more
	more    map[uint32]int     // filter bit -> prefix keys beyond the first that set it
	ix      [][]ixEntry        // index bucket -> the groups it is first for, in key order
	ix2     [][]ix2Entry       // index bucket -> the indexable groups it is second for, in key order
	use     [4]portUse         // per proto*2+family: bindings by port set
	// Per proto*2+family: bindings, and the keys of the groups while
	// there are at most smallTrack (small.go).
	listBindings [4]int
	smallKeys    [4]map[groupKey]bool
	slots        []bool // table slots in use
}

func newModel() *model {
	m := &model{
		protos: map[string]*[2]int{},
		labels: map[string]uint32{},
		names:  map[uint32]string{},
		kept:   map[string]bool{},
		groups: map[groupKey]*group{},
		words:  make([]uint64, filterWords),
		more:   map[uint32]int{},
		slots:  make([]bool, tablesPerGen),
	}
	for i := range m.plens {
		m.plens[i] = map[uint8]int{}
		m.smallKeys[i] = map[groupKey]bool{}
	}
	m.slots[0] = true // slot 0 means "no table"
	return m
}

func protoIndex(p binding.Protocol) uint8 {
	if p == binding.UDP {
		return 1
	}
	return 0
}

func famIndex(a netip.Addr) uint8 {
	if a.Is4() {
		return 0
	}
	return 1
}

func (k groupKey) famIndex() uint8 {
	if k.is6 {
		return 1
	}
	return 0
}

func (k groupKey) listIndex() int { return int(protoIndex(k.proto))*2 + int(k.famIndex()) }

func (k groupKey) mapKey(gen uint32) dispatchSyPrefixKey {
	return dispatchSyPrefixKey{
		Gen:    uint8(gen),
		Proto:  protoIndex(k.proto),
		Family: k.famIndex(),
		Plen:   k.bits,
		Addr:   addrWords(k.addr, !k.is6),
	}
}

func (k groupKey) bit() uint32 {
	mk := k.mapKey(0)
	return filterBit(&mk)
}

// bindingKey is bindingMapKey of the binding of ports p in group k.
func (k groupKey) bindingKey(p binding.Ports) dispatchSyBindingKey {
	return dispatchSyBindingKey{
		Proto:  protoIndex(k.proto),
		Family: k.famIndex(),
		Plen:   k.bits,
		Addr:   addrWords(k.addr, !k.is6),
		Lo:     p.Lo,
		Hi:     p.Hi,
	}
}

func bindingMapKey(k binding.Key) dispatchSyBindingKey {
	return keyOf(k.Protocol, k.Prefix).bindingKey(k.Ports)
}

// bindingFromMapKey reads a key of a binding record. It refuses, with
// errBadRecord, any key that bindingMapKey would not have written for a
// valid binding.
func bindingFromMapKey(k *dispatchSyBindingKey) (binding.Key, error) {
	var a netip.Addr
	switch k.Family {
	case 0:
		var w [4]byte
		putWord(w[:], k.Addr[0])
		a = netip.AddrFrom4(w)
	case 1:
		var b [16]byte
		for i := range 4 {
			putWord(b[4*i:], k.Addr[i])
		}
		a = netip.AddrFrom16(b)
	default:
		return binding.Key{}, fmt.Errorf("%w: binding key with family %d", errBadRecord, k.Family)
	}
	if k.Proto > 1 {
		return binding.Key{}, fmt.Errorf("%w: binding key with protocol %d", errBadRecord, k.Proto)
	}
	proto := binding.TCP
	if k.Proto == 1 {
		proto = binding.UDP
	}
	key := binding.Key{Protocol: proto, Prefix: netip.PrefixFrom(a, int(k.Plen)), Ports: binding.Ports{Lo: k.Lo, Hi: k.Hi}}
	b := binding.Binding{Label: "x", Protocol: key.Protocol, Prefix: key.Prefix, Ports: key.Ports}
	if err := b.Validate(); err != nil {
		return binding.Key{}, fmt.Errorf("%w: %w", errBadRecord, err)
	}
	if mk := bindingMapKey(key); mk != *k {
		return binding.Key{}, fmt.Errorf("%w: binding key %+v is not what %s is written as", errBadRecord, *k, key)
	}
	return key, nil
}

func labelKey(name string) dispatchSyLabelKey {
	var k dispatchSyLabelKey
	for i := 0; i < len(name) && i < len(k.Name)-1; i++ {
		k.Name[i] = int8(name[i])
	}
	return k
}

func labelName(k *dispatchSyLabelKey) string {
	b := make([]byte, 0, 32)
	for _, c := range k.Name {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// readModel rebuilds the model from the pinned maps. It reports whether the
// data path needs a full rewrite: a change was interrupted, or entries do not
// match the recorded bindings.
func (d *Dispatcher) readModel() (*model, bool, error) {
	var cfg configVal
	if err := d.cfg.Lookup(uint32(0), &cfg); err != nil {
		return nil, false, fmt.Errorf("read config: %w", err)
	}
	m := newModel()
	m.serial, m.gen = cfg.Serial, cfg.Gen&1

	var lk dispatchSyLabelKey
	var lv dispatchSyLabelVal
	it := d.objs.SyLabels.Iterate()
	for it.Next(&lk, &lv) {
		name := labelName(&lk)
		m.labels[name] = lv.Id
		m.names[lv.Id] = name
		if lv.Flags&labelKept != 0 {
			m.kept[name] = true
		}
	}
	if err := it.Err(); err != nil {
		return nil, false, fmt.Errorf("read labels: %w", err)
	}

	var err error
	if m.rec, err = d.readCommit(); err != nil {
		return nil, false, err
	}
	err = eachBinding(d.bindingsOf(m.rec.Gen), func(bk *dispatchSyBindingKey, id uint32) error {
		key, err := bindingFromMapKey(bk)
		if err != nil {
			return err
		}
		name, ok := m.names[id]
		if !ok {
			return fmt.Errorf("binding %s refers to unknown label id %d", key, id)
		}
		gk := keyOf(key.Protocol, key.Prefix)
		g := m.groups[gk]
		if g == nil {
			g = &group{}
			m.groups[gk] = g
		}
		g.ports = append(g.ports, portLabel{key.Ports, name})
		return nil
	})
	if err != nil {
		return nil, false, err
	}

	// A change interrupted once it marked the data path dirty may have
	// left it anywhere: before its commit point (commitBegun) the
	// generation the program does not read holds some of the change, which
	// the next change would build on. Otherwise the data path is checked
	// below as after a clean stop.
	resync := m.rec.State == commitFlipped || cfg.Dirty != 0
	for gk, g := range m.groups {
		sortPorts(g.ports)
		g.ports = slices.Clip(g.ports)
		if err := m.compileGroup(g); err != nil {
			return nil, false, fmt.Errorf("recorded bindings of %s %s: %w", gk.proto, gk.prefix(), err)
		}
		m.addGroupStats(gk, g)
		if resync {
			continue
		}
		// Learn the table slot the active generation uses, and check the
		// entry is what the bindings say.
		var v dispatchSyPrefixVal
		mk := gk.mapKey(m.gen)
		if err := d.objs.SyPrefixes.Lookup(&mk, &v); err != nil {
			resync = true
			continue
		}
		if g.c.useTable() {
			slot := v.Table - m.gen*tablesPerGen
			if v.Table == 0 || slot == 0 || slot >= tablesPerGen || m.slots[slot] {
				resync = true
				continue
			}
			g.slot = slot
			m.slots[slot] = true
		}
		if v.AnyLabel != g.c.anyLabel {
			resync = true
		}
	}
	m.dataOK = !resync
	// A build with another index or filter left the state (create writes
	// an empty index valid): build them.
	var b dispatchSyIxBucket
	if err := d.objs.SyIndex.Lookup(m.gen*ixBuckets, &b); err == nil && b.Flags&ixbThisBuild == ixbThisBuild {
		m.indexOK = true
	}
	m.smallOK = smallOK(&cfg, m.gen)
	return m, resync || m.rec.State == commitBegun || !m.indexOK || !m.smallOK, nil
}

func (m *model) compileGroup(g *group) error {
	ids := make([]portBinding, len(g.ports))
	for i, pl := range g.ports {
		ids[i] = portBinding{pl.ports, m.labels[pl.label]}
	}
	c, err := compile(ids)
	if err != nil {
		return err
	}
	g.c = c
	return nil
}

func (m *model) addGroupStats(gk groupKey, g *group) {
	m.addStats(gk, g)
	m.indexAdd(gk, g)
}

// addStats is addGroupStats but for the index.
func (m *model) addStats(gk groupKey, g *group) {
	m.count += len(g.ports)
	for _, pl := range g.ports {
		pr := m.protos[pl.label]
		if pr == nil {
			pr = new([2]int)
			m.protos[pl.label] = pr
		}
		pr[protoIndex(gk.proto)]++
	}
	m.plens[gk.listIndex()][gk.bits]++
	m.trackSmall(gk, len(g.ports), true)
	for _, pl := range g.ports {
		m.use[gk.listIndex()].add(pl.ports, 1)
		m.use[gk.listIndex()].addServed(gk.prefix(), pl.ports, 1)
	}
	b := gk.bit()
	if w := &m.words[b/64]; *w&(1<<(b%64)) == 0 {
		*w |= 1 << (b % 64)
	} else {
		m.more[b]++
	}
}

// dropStats undoes addStats.
func (m *model) dropStats(gk groupKey, g *group) {
	m.count -= len(g.ports)
	for _, pl := range g.ports {
		if pr := m.protos[pl.label]; pr != nil {
			if pr[protoIndex(gk.proto)]--; pr[0] == 0 && pr[1] == 0 {
				delete(m.protos, pl.label)
			}
		}
	}
	li, pl := gk.listIndex(), gk.bits
	if m.plens[li][pl]--; m.plens[li][pl] <= 0 {
		delete(m.plens[li], pl)
	}
	m.trackSmall(gk, len(g.ports), false)
	for _, pl := range g.ports {
		m.use[gk.listIndex()].add(pl.ports, -1)
		m.use[gk.listIndex()].addServed(gk.prefix(), pl.ports, -1)
	}
	b := gk.bit()
	if n := m.more[b]; n > 0 {
		if n == 1 {
			delete(m.more, b)
		} else {
			m.more[b] = n - 1
		}
	} else {
		m.words[b/64] &^= 1 << (b % 64)
	}
}

func (m *model) allocSlot() (uint32, error) {
	for i, used := range m.slots {
		if !used {
			m.slots[i] = true
			return uint32(i), nil
		}
	}
	return 0, fmt.Errorf("%w: more than %d prefixes need a port table (each has more than %d port segments)", ErrCapacity, tablesPerGen-1, inlineSegs)
}

func (m *model) plenList(li int) dispatchSyPlenList {
	var l dispatchSyPlenList
	lens := make([]int, 0, len(m.plens[li]))
	for pl := range m.plens[li] {
		lens = append(lens, int(pl))
	}
	slices.Sort(lens)
	slices.Reverse(lens)
	for i, pl := range lens {
		l.Lens[i] = uint8(pl)
	}
	l.Count = uint32(len(lens))
	return l
}

func (m *model) filterWord(w uint32) uint64 { return m.words[w] }

// repairMode says what refresh does when it finds the data path
// inconsistent with the recorded bindings.
type repairMode int

const (
	// repairRefuse: return errNeedExclusive. The caller holds the shared
	// lock.
	repairRefuse repairMode = iota
	// repairWrite: rewrite the data path. The caller holds the exclusive
	// lock.
	repairWrite
	// repairSkip: write nothing (a dry run). The caller holds either lock.
	repairSkip
)

// refresh returns a current model, rebuilding d.cache if another process
// changed the state, and deals with a data path found inconsistent as how
// says. A read-only dispatcher always skips the repair.
//
// A model whose repair was skipped holds the recorded bindings and labels,
// which is what the data path holds once repaired, so it answers reads and
// dry runs. It lacks the table slots, though, so it is returned without
// becoming d.cache: the next refresh rebuilds it, and a writer repairs first.
func (d *Dispatcher) refresh(how repairMode) (*model, error) {
	var cfg configVal
	if err := d.cfg.Lookup(uint32(0), &cfg); err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if d.cache != nil && d.cache.serial == cfg.Serial && cfg.Dirty == 0 {
		return d.cache, nil
	}
	m, resync, err := d.readModel()
	if err != nil {
		return nil, err
	}
	if resync {
		if d.readOnly {
			how = repairSkip
		}
		switch how {
		case repairRefuse:
			return nil, errNeedExclusive
		case repairSkip:
			d.cache = nil
			return m, nil
		}
		if !m.dataOK || m.rec.State == commitBegun {
			if err := d.recoverSet(m); err != nil {
				return nil, err
			}
		}
		if !m.indexOK {
			if err := d.buildIndex(m); err != nil {
				return nil, err
			}
		}
		if !m.smallOK {
			if err := d.buildSmall(m); err != nil {
				return nil, err
			}
			m.smallOK = true
		}
	}
	d.cache = m
	return m, nil
}

var errNeedExclusive = errors.New("state needs repair under an exclusive lock")

// recoverSet brings the state back to the set in force after an interrupted
// change: the data path is made equal to the record's generation in force,
// the other generation is marked for a sync before the next change, and
// labels the interrupted change gave ids to are forgotten again. It says in
// the log which set is in force. The caller holds the exclusive lock.
func (d *Dispatcher) recoverSet(m *model) error {
	switch m.rec.State {
	case commitBegun:
		d.log.Warn("a change of bindings was interrupted before it took effect; recovered the set before it", "dir", d.dir, "set", "old", "bindings", m.count)
	case commitFlipped:
		d.log.Warn("a change of bindings was interrupted after it took effect; recovered the set after it", "dir", d.dir, "set", "new", "bindings", m.count)
	default:
		// Only the end of a change leaves the data path dirty with the
		// record idle (and builds before the record's generations).
		d.log.Warn("a change of bindings was interrupted as it finished; recovered the set after it", "dir", d.dir, "set", "new", "bindings", m.count)
	}
	if m.dataOK {
		if err := d.writeConfig(func(c *configVal) { c.Dirty = 0; c.Serial++; m.serial = c.Serial }); err != nil {
			return err
		}
	} else if err := d.rewrite(m); err != nil {
		return err
	}
	if m.rec.State != commitIdle && m.rec.State != commitSync {
		// The other generation holds some of the interrupted change:
		// the next change makes it equal to this one first.
		m.rec.State = commitSync
		if err := d.writeCommit(m.rec); err != nil {
			return err
		}
	}
	return d.gcLabels(m)
}

// prefixKeysOfGen lists the keys of generation gen in m (sy_prefixes);
// portKeysOfGen does the same for sy_ports.
func prefixKeysOfGen(m *ebpf.Map, gen uint32) ([]dispatchSyPrefixKey, error) {
	var out []dispatchSyPrefixKey
	var k dispatchSyPrefixKey
	var v dispatchSyPrefixVal
	it := m.Iterate()
	for it.Next(&k, &v) {
		if uint32(k.Gen) == gen {
			out = append(out, k)
		}
	}
	return out, it.Err()
}

func portKeysOfGen(m *ebpf.Map, gen uint32) ([]dispatchSyPortKey, error) {
	var out []dispatchSyPortKey
	var k dispatchSyPortKey
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		if uint32(k.Prefix.Gen) == gen {
			out = append(out, k)
		}
	}
	return out, it.Err()
}

// applyChanges puts changes into m's groups and their statistics. The
// index (ix, ix2) is kept apart from the rest: a large change updates it
// beside them, a third of the update's time at a million bindings.
func (m *model) applyChanges(changes []groupChange) {
	index := func() {
		if len(changes) >= largeChange {
			m.indexGrow(changes)
		}
		for _, c := range changes {
			if c.old != nil {
				m.indexDrop(c.key)
			}
			if c.new != nil {
				m.indexAdd(c.key, c.new)
			}
		}
	}
	var wg sync.WaitGroup
	if len(changes) >= 2*minPart {
		wg.Go(index)
	} else {
		index()
	}
	for _, c := range changes {
		if c.old != nil {
			m.dropStats(c.key, c.old)
			delete(m.groups, c.key)
		}
		if c.new != nil {
			m.addStats(c.key, c.new)
			m.groups[c.key] = c.new
		}
	}
	wg.Wait()
}
