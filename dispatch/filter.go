package dispatch

import "encoding/binary"

const (
	filterLog2  = 24 // SY_FILTER_LOG2
	filterWords = 1 << (filterLog2 - 6)
)

// ixHash is the Go twin of ix_hash in bpf/lookup.h.
func ixHash(k *dispatchSyPrefixKey) uint64 {
	x := uint64(k.Addr[0])<<32 | uint64(k.Addr[1])
	y := uint64(k.Addr[2])<<32 | uint64(k.Addr[3])
	x ^= y * 0xff51afd7ed558ccd
	x ^= uint64(k.Plen)<<16 | uint64(k.Proto)<<8 | uint64(k.Family)
	x *= 0x9e3779b97f4a7c15
	x ^= x >> 29
	x *= 0xbf58476d1ce4e5b9
	return x
}

// filterBit is the Go twin of filter_bit in bpf/lookup.h.
func filterBit(k *dispatchSyPrefixKey) uint32 { return hashBit(ixHash(k)) }

func hashBit(h uint64) uint32 { return uint32(h >> (64 - filterLog2)) }

// addrWords returns an address as the program sees it: 32-bit words holding
// network byte order, loaded in the host's byte order.
func addrWords(a [16]byte, is4 bool) (w [4]uint32) {
	if is4 {
		w[0] = binary.NativeEndian.Uint32(a[12:16])
		return w
	}
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(a[4*i : 4*i+4])
	}
	return w
}

func putWord(b []byte, w uint32) { binary.NativeEndian.PutUint32(b, w) }
