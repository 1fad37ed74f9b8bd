package dispatch

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// The data path (sy_dispatch, not the explainer, which descends the lengths
// its own way) picks the socket of the binding binding.Lookup picks for
// TCP and UDP, IPv4 and IPv6, with sets of up to six prefix lengths per
// protocol and family: the first two lengths are probed inline, the rest
// through sy_probe_length4 and sy_probe_length6. Twice, so that each data
// generation is read. Probes run with BPF_PROG_TEST_RUN; the socket the
// program assigns names the label.
func TestDataPathLengthsMatchReference(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cookies := registerAll(t, e, []string{"a", "b", "c", "d", "e"})
	for round, seed := range []uint64{3, 4} {
		r := rand.New(rand.NewPCG(seed, 7))
		bs := randomBindings(r, 300)
		if _, _, err := e.d.ReplaceBindings(bs, false); err != nil {
			t.Fatal(err)
		}
		// How many lengths each protocol and family has: the test is
		// about sets of three or more.
		lengths := map[string]map[int]bool{}
		for _, b := range bs {
			k := fmt.Sprintf("%s/%v", b.Protocol, b.Prefix.Addr().Is4())
			if lengths[k] == nil {
				lengths[k] = map[int]bool{}
			}
			lengths[k][b.Prefix.Bits()] = true
		}
		for k, ls := range lengths {
			if len(ls) < 4 {
				t.Fatalf("round %d: %s has %d prefix lengths, want 4 or more", round, k, len(ls))
			}
		}
		matched := map[string]int{}
		for i := range 3000 {
			proto, dst := randomProbe(r)
			want := ""
			if ref, ok := binding.Lookup(bs, proto, dst); ok {
				want = ref.Label
				matched[fmt.Sprintf("%s/%v/%d", proto, dst.Addr().Is4(), ref.Prefix.Bits())]++
			}
			ret, cookie := runLookup(t, e.d.objs.SyDispatch, lookupCtx(proto, dst))
			got := ""
			if cookie != 0 {
				got = cookies[cookie]
			}
			// No binding: the kernel goes on (SK_PASS, no socket).
			// A binding: its label's socket.
			if got != want || ret != 1 {
				t.Errorf("round %d probe %d: %s %s: verdict %d, socket of %q (cookie %d); binding.Lookup says %q", round, i, proto, dst, ret, got, cookie, want)
			}
		}
		// The probes reached the third and later lengths of each
		// protocol and family (the shorter prefixes win only when the
		// longer ones miss).
		for _, k := range []string{"tcp/true", "udp/true", "tcp/false", "udp/false"} {
			var ls []int
			for l := range lengths[k] {
				ls = append(ls, l)
			}
			deep := 0
			for l := range lengths[k] {
				longer := 0
				for _, o := range ls {
					if o > l {
						longer++
					}
				}
				if longer >= 2 {
					deep += matched[fmt.Sprintf("%s/%d", k, l)]
				}
			}
			t.Logf("round %d: %s: %d lengths, %d probes won at a third or later", round, k, len(ls), deep)
			if deep < 20 {
				t.Errorf("round %d: %s: only %d probes won at a third or later length", round, k, deep)
			}
		}
	}
}
