//go:build switchyard_upgradetest

package dispatch

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// A build with the tag switchyard_upgradetest carries a program whose code
// differs from the normal build's (one harmless instruction more), so that
// tests can upgrade a running namespace to a really different program.
func init() {
	progVariant = "upgradetest"
	patchProgram = func(spec *ebpf.CollectionSpec) {
		p := spec.Programs["sy_dispatch"]
		first := p.Instructions[0]
		nop := asm.Mov.Reg(asm.R1, asm.R1).WithMetadata(first.Metadata)
		p.Instructions = append(asm.Instructions{nop, first.WithMetadata(asm.Metadata{})}, p.Instructions[1:]...)
	}
}
