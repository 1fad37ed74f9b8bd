package control

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
)

func streamBindings(n int) []binding.Binding {
	out := make([]binding.Binding, 0, n)
	for i := range n {
		b := binding.Binding{Label: fmt.Sprintf("svc-%d", i%37), Protocol: binding.TCP,
			Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32), Ports: binding.Ports{Lo: 80, Hi: 80}}
		switch i % 4 {
		case 1:
			b.Protocol, b.Ports = binding.UDP, binding.AnyPort
		case 2:
			b.Prefix = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}), 112)
			b.Ports = binding.Ports{Lo: 8000, Hi: 8999}
		}
		out = append(out, b)
	}
	return out
}

// TestWriteBindingsSameBytes: the streamed listing is, datagram for
// datagram, what WriteReply sends for the same list, and a client decodes
// it to the same bindings.
func TestWriteBindingsSameBytes(t *testing.T) {
	for _, n := range []int{0, 1, 2, 400, 5000} {
		for _, label := range []string{"", "svc-3", "absent"} {
			t.Run(fmt.Sprintf("%d/%q", n, label), func(t *testing.T) {
				bs := streamBindings(n)
				var keep BindingFilter
				want := bs
				if label != "" {
					keep = func(b *binding.Binding) bool { return b.Label == label }
					want = nil
					for _, b := range bs {
						if b.Label == label {
							want = append(want, b)
						}
					}
				}
				if want == nil {
					want = []binding.Binding{}
				}
				wantDG, err := EncodeReply(&Reply{Version: ProtocolVersion, Op: OpListBindings, Body: &ListBindingsResponse{Bindings: want}})
				if err != nil {
					t.Fatal(err)
				}
				// Once with the size computed here, once given.
				size := 0
				if n%2 == 0 {
					size = ListingSize(bs, keep)
				}
				a, b := pair(t)
				errc := make(chan error, 1)
				go func() { errc <- a.WriteBindings(ProtocolVersion, bs, keep, size, time.Second, time.Time{}) }()
				fd := rawFD(t, b)
				buf := make([]byte, MaxDatagram)
				for i, w := range wantDG {
					n, err := readDatagram(fd, buf)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(buf[:n], w) {
						t.Fatalf("datagram %d of %d differs:\n got %q\nwant %q", i, len(wantDG), buf[:min(n, 200)], w[:min(len(w), 200)])
					}
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				rep, err := DecodeReply(wantDG, 0)
				if err != nil {
					t.Fatal(err)
				}
				if got := rep.Body.(*ListBindingsResponse).Bindings; len(got) != len(want) {
					t.Fatalf("decoded %d bindings, want %d", len(got), len(want))
				}
			})
		}
	}
}

// TestWriteBindingsDeadline: a peer that never reads is dropped at the
// deadline, and the connection is then out of step.
func TestWriteBindingsDeadline(t *testing.T) {
	a, _ := pair(t)
	start := time.Now()
	err := a.WriteBindings(ProtocolVersion, streamBindings(200000), nil, 0, 200*time.Millisecond, time.Now().Add(time.Minute))
	if err == nil {
		t.Fatal("a listing of 200,000 bindings to a peer that never reads succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to give up", d)
	}
	if err := a.WriteReply(&Reply{Version: ProtocolVersion, Op: OpVersion, Body: &VersionResponse{Version: "x", Protocols: []uint16{1}}}); err == nil {
		t.Error("the connection took a reply after a broken listing")
	}
}

// readDatagram reads one datagram from a non-blocking socket, waiting up
// to 10 s for it.
func readDatagram(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if err != unix.EAGAIN {
			return n, err
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if k, err := unix.Poll(pfd, 10000); err != nil && err != unix.EINTR {
			return 0, err
		} else if k == 0 && err == nil {
			return 0, fmt.Errorf("no datagram within 10 s")
		}
	}
}
