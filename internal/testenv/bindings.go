package testenv

import (
	"fmt"
	"net/netip"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// ScaleBinding returns the i-th of up to 1,048,576 distinct bindings in the
// shapes operators use at scale: host addresses with four single ports,
// /24s with a port range nested in every port, IPv6 /64s with one port and
// every port; 1,000 labels. Eight bindings share three (protocol, prefix)
// pairs. Bindings of another seed have the same keys and other labels.
func ScaleBinding(i, seed int) binding.Binding {
	b := binding.Binding{Label: fmt.Sprintf("lbl-%d", (i+seed)%1000), Protocol: binding.TCP}
	x := i / 8
	switch i % 8 {
	case 0, 1, 2, 3: // host /32, four single ports
		b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x >> 16), byte(x >> 8), byte(x)}), 32)
		p := [4]uint16{80, 443, 8080, 8443}[i%4]
		b.Ports = binding.Ports{Lo: p, Hi: p}
	case 4, 5: // /24, a port range inside every port
		b.Protocol = binding.UDP
		b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(11 + x>>16), byte(x >> 8), byte(x), 0}), 24)
		b.Ports = [2]binding.Ports{{Lo: 8000, Hi: 8999}, binding.AnyPort}[i%2]
	case 6, 7: // IPv6 /64, one port and every port
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(x >> 16), byte(x >> 8), byte(x)}
		b.Prefix = netip.PrefixFrom(netip.AddrFrom16(a), 64)
		b.Ports = [2]binding.Ports{{Lo: 53, Hi: 53}, binding.AnyPort}[i%2]
	}
	return b
}
