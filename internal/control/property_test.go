package control

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

func randBinding(r *rand.Rand) binding.Binding {
	var a netip.Addr
	if r.IntN(2) == 0 {
		a = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	} else {
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		a = netip.AddrFrom16(b)
		if a.Is4In6() {
			a = netip.IPv6Unspecified()
		}
	}
	p := netip.PrefixFrom(a, r.IntN(a.BitLen()+1)).Masked()
	ports := binding.AnyPort
	switch r.IntN(3) {
	case 0:
		lo := uint16(1 + r.IntN(65535))
		ports = binding.Ports{Lo: lo, Hi: lo}
	case 1:
		lo := uint16(1 + r.IntN(65535))
		ports = binding.Ports{Lo: lo, Hi: lo + uint16(r.IntN(int(65535-lo)+1))}
	}
	return binding.Binding{
		Label:    randLabel(r),
		Protocol: []binding.Protocol{binding.TCP, binding.UDP}[r.IntN(2)],
		Prefix:   p,
		Ports:    ports,
	}
}

func randLabel(r *rand.Rand) string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@"
	b := make([]byte, 1+r.IntN(binding.MaxLabelLen))
	for i := range b {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}

func randSettings(r *rand.Rand, label string) settings.Named {
	s := settings.Named{Name: label}
	s.Kind = settings.Kind(r.IntN(3))
	if s.Kind == settings.Splice {
		s.Upstream = settings.Upstream{Host: fmt.Sprintf("host-%d.example", r.IntN(100)), Port: uint16(1 + r.IntN(65535))}
		if r.IntN(2) == 0 {
			s.Upstream = settings.Upstream{Host: "2001:db8::1"}
		}
		if r.IntN(2) == 0 {
			s.Engine = settings.Kernel
		}
	}
	for range r.IntN(3) {
		s.Grants.UIDs = append(s.Grants.UIDs, uint32(r.IntN(70000)))
	}
	for range r.IntN(3) {
		s.Grants.Groups = append(s.Grants.Groups, "grp"+fmt.Sprint(r.IntN(100)))
	}
	return s
}

// TestRoundTripRandom encodes random valid requests and replies, splits
// them into datagrams of random sizes, and checks that decoding gives back
// the same values.
func TestRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 100 {
		var cfg Config
		for range r.IntN(200) {
			cfg.Bindings = append(cfg.Bindings, randBinding(r))
		}
		for j := range r.IntN(5) {
			cfg.Labels = append(cfg.Labels, randSettings(r, fmt.Sprintf("l%d-%s", j, randLabel(r)[:1])))
		}
		req := NewRequest(&ApplyRequest{Config: cfg, DryRun: r.IntN(2) == 0})
		ds, err := EncodeRequest(req)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		h, _ := parseHeader(ds[0])
		payload := []byte{}
		for _, d := range ds {
			payload = append(payload, d[headerLen:]...)
		}
		fs, _ := framesOf(h.version, h.op, false, payload, 1+r.IntN(4096))
		got, err := DecodeRequest(joinFrames(fs), 0)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !reflect.DeepEqual(normalize(got.Body), normalize(req.Body)) {
			t.Fatalf("case %d: request changed:\n got %+v\nwant %+v", i, got.Body, req.Body)
		}

		rep := &Reply{Version: 1, Op: OpListBindings, Body: &ListBindingsResponse{Bindings: cfg.Bindings}}
		rds, err := EncodeReply(rep)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		grep, err := DecodeReply(rds, 0)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !reflect.DeepEqual(normalize(grep.Body), normalize(rep.Body)) {
			t.Fatalf("case %d: reply changed", i)
		}
	}
}

// normalize makes nil and empty slices compare equal, by a JSON-free walk
// limited to the types used above.
func normalize(v any) any {
	switch v := v.(type) {
	case *ApplyRequest:
		c := *v
		if len(c.Config.Bindings) == 0 {
			c.Config.Bindings = nil
		}
		if len(c.Config.Labels) == 0 {
			c.Config.Labels = nil
		}
		return &c
	case *ListBindingsResponse:
		c := *v
		if len(c.Bindings) == 0 {
			c.Bindings = nil
		}
		return &c
	}
	return v
}
