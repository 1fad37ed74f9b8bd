package dispatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// The data path picks the socket of the binding binding.Lookup picks while
// lists hold few bindings (small sets, scanned from sy_config) and as they
// grow past smallMax and shrink back, through whole replacements and
// changes of one binding, in both data generations. The test fails unless
// probes were answered from small sets and from the prefix entries.
func TestSmallSetsMatchReference(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cookies := registerAll(t, e, []string{"a", "b", "c", "d", "e"})
	r := rand.New(rand.NewPCG(11, 12))
	var bs []binding.Binding
	fromSmall, fromEntries := 0, 0
	check := func(step string) {
		t.Helper()
		var cfg configVal
		if err := e.d.cfg.Lookup(uint32(0), &cfg); err != nil {
			t.Fatal(err)
		}
		per := map[int]int{}
		for _, b := range bs {
			per[listOf(b)]++
		}
		for li := range 4 {
			for gen := range uint32(2) {
				s := cfg.Small[gen*4+uint32(li)]
				if small := per[li] <= smallMax; (s.Flags&smallAll != 0) != small || (small && int(s.Count) != per[li]) {
					t.Fatalf("%s: list %d of generation %d: flags %d, %d bindings; the list has %d", step, li, gen, s.Flags, s.Count, per[li])
				}
			}
		}
		for i := range 200 {
			proto, dst := randomProbe(r)
			want := ""
			if ref, ok := binding.Lookup(bs, proto, dst); ok {
				want = ref.Label
				b := binding.Binding{Protocol: proto, Prefix: ref.Prefix}
				if per[listOf(b)] <= smallMax {
					fromSmall++
				} else {
					fromEntries++
				}
			}
			ret, cookie := runLookup(t, e.d.objs.SyDispatch, lookupCtx(proto, dst))
			if got := cookies[cookie]; got != want || ret != 1 {
				t.Fatalf("%s, probe %d: %s %s: verdict %d, socket of %q; binding.Lookup says %q (set: %v)", step, i, proto, dst, ret, got, want, bs)
			}
		}
	}
	for round := range 40 {
		n := 1 + r.IntN(40)
		bs = randomBindings(r, n)
		if _, _, err := e.d.ReplaceBindings(bs, false); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("round %d, %d bindings", round, len(bs)))
		// One binding more, one less: lists cross smallMax both ways
		// in changes that touch one group.
		for step := range 6 {
			if step%2 == 0 || len(bs) == 0 {
				more := randomBindings(r, len(bs)+1)
				added := false
				for _, b := range more {
					if !conflicts(bs, b) {
						if _, err := e.d.AddBindings(b); err != nil {
							t.Fatal(err)
						}
						bs = append(bs, b)
						added = true
						break
					}
				}
				if !added {
					continue
				}
			} else {
				i := r.IntN(len(bs))
				if err := e.d.RemoveBindings(bs[i]); err != nil {
					t.Fatal(err)
				}
				bs = append(bs[:i:i], bs[i+1:]...)
			}
			check(fmt.Sprintf("round %d step %d, %d bindings", round, step, len(bs)))
		}
	}
	t.Logf("probes matched from small sets: %d, from prefix entries: %d", fromSmall, fromEntries)
	if fromSmall < 1000 || fromEntries < 1000 {
		t.Errorf("probes matched from small sets: %d, from prefix entries: %d; want 1000 or more of each", fromSmall, fromEntries)
	}
}

// listOf is the list (proto*2 + family) of b.
func listOf(b binding.Binding) int {
	return keyOf(b.Protocol, b.Prefix).listIndex()
}

func conflicts(bs []binding.Binding, b binding.Binding) bool {
	for _, o := range bs {
		if o.Key() == b.Key() || binding.Conflict(o, b) {
			return true
		}
	}
	return false
}

// registerAll registers a TCP and a UDP socket on IPv4 and IPv6 loopback
// for each label and returns the labels by socket cookie.
func registerAll(t *testing.T, e *env, labels []string) map[uint64]string {
	t.Helper()
	cookies := map[uint64]string{}
	for _, l := range labels {
		for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
			for _, c := range []syscall.Conn{e.ns.ListenTCP(t, addr), e.ns.ListenUDP(t, addr)} {
				dest, err := e.d.Register(l, c)
				if err != nil {
					t.Fatal(err)
				}
				cookies[dest.Cookie] = l
			}
		}
	}
	return cookies
}

// State a build without small sets left (sy_config migrated to this
// layout, its small sets zero): lookups go through the prefix entries
// until Open writes the small sets, after which they answer the same.
func TestOpenBuildsSmallSets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cookies := registerAll(t, e, []string{"a", "b"})
	bs := []binding.Binding{
		{Label: "a", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.1.0.0/16"), Ports: binding.AnyPort},
		{Label: "b", Protocol: binding.TCP, Prefix: netip.MustParsePrefix("10.1.2.0/24"), Ports: binding.Ports{Lo: 80, Hi: 80}},
		{Label: "b", Protocol: binding.UDP, Prefix: netip.MustParsePrefix("2001:db8::/64"), Ports: binding.Ports{Lo: 53, Hi: 53}},
	}
	if _, err := e.d.AddBindings(bs...); err != nil {
		t.Fatal(err)
	}
	probes := []struct {
		proto binding.Protocol
		dst   string
		want  string
	}{
		{binding.TCP, "10.1.2.3:80", "b"}, {binding.TCP, "10.1.2.3:81", "a"}, {binding.TCP, "10.1.9.9:80", "a"},
		{binding.TCP, "10.2.0.1:80", ""}, {binding.UDP, "[2001:db8::7]:53", "b"}, {binding.UDP, "[2001:db8::7]:54", ""},
		{binding.UDP, "10.1.2.3:53", ""},
	}
	check := func(when string) {
		t.Helper()
		for _, p := range probes {
			if _, cookie := runLookup(t, e.d.objs.SyDispatch, lookupCtx(p.proto, netip.MustParseAddrPort(p.dst))); cookies[cookie] != p.want {
				t.Errorf("%s: %s %s went to %q, want %q", when, p.proto, p.dst, cookies[cookie], p.want)
			}
		}
	}
	flags := func() (all int) {
		var cfg configVal
		if err := e.d.cfg.Lookup(uint32(0), &cfg); err != nil {
			t.Fatal(err)
		}
		for _, s := range cfg.Small {
			if s.Flags&smallAll != 0 {
				all++
			}
		}
		return all
	}
	check("small sets")
	if n := flags(); n != 8 {
		t.Fatalf("%d of 8 small sets in use, want all", n)
	}
	var cfg configVal
	if err := e.d.cfg.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Small = [8]dispatchSySmall{}
	if err := e.d.cfg.Put(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	check("no small sets")
	e.d.Close()
	e.d = e.open()
	check("reopened")
	if n := flags(); n != 8 {
		t.Fatalf("after Open, %d of 8 small sets in use, want all", n)
	}
}

// State of a newer layout, whose sy_config may have grown, is refused with
// a message naming both layouts, and Open leaves it as it was.
func TestNewerLayoutRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := e.d.dir
	raw := make([]byte, e.d.cfg.ValueSize())
	if err := e.d.cfg.Lookup(uint32(0), raw); err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	// What a later build might pin: a longer value, layout 3.
	grown := append(raw, make([]byte, 64)...)
	binary.NativeEndian.PutUint32(grown[4:8], layoutVersion+1)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(len(grown)), MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), grown); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(dir, "sy_config")
	if err := m.Pin(pin + "_new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(pin+"_new", pin); err != nil {
		t.Fatal(err)
	}
	_, err = Open(e.ns.Path(), Options{Root: e.root, Logger: slog.New(slog.DiscardHandler)})
	want := fmt.Sprintf("has layout %d, this build knows up to %d", layoutVersion+1, layoutVersion)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(fmt.Sprint(err), want) {
		t.Fatalf("Open of layout %d state: %v; want ErrIncompatible saying %q", layoutVersion+1, err, want)
	}
	after := make([]byte, len(grown))
	if err := m.Lookup(uint32(0), after); err != nil || !bytes.Equal(after, grown) {
		t.Errorf("Open changed the newer build's config (%v)", err)
	}
}
