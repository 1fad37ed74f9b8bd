/* Shared definitions of switchyard's dispatch maps. The Go side mirrors these
 * layouts through the types bpf2go generates from BTF. */
#pragma once

#include "sy_abi.h"

/* Longest prefix length plus one, rounded for alignment. */
#define SY_MAX_PLENS 132
/* Port segments stored inside a prefix entry. */
#define SY_INLINE_SEGS 6
/* Port segments in one overflow table. */
#define SY_TABLE_SEGS 256
/* Overflow tables of each generation: generation g owns table ids
 * g*SY_TABLES_PER_GEN + 1 .. (g+1)*SY_TABLES_PER_GEN - 1; 0 means none. */
#define SY_TABLES_PER_GEN 1024

#define SY_PROTO_TCP 0
#define SY_PROTO_UDP 1
#define SY_FAM_V4 0
#define SY_FAM_V6 1

/* The prefix filter: a bitmap per generation with one bit per hash of a
 * prefix key, 16 bits per prefix at 1,048,576 prefixes. A clear bit proves
 * sy_prefixes has no entry for that key, which saves a hash probe for each
 * prefix length that cannot match and whose index bucket overflowed. The
 * program trusts it only where the index bucket is valid: a build with
 * another filter size or hash left it. */
#define SY_FILTER_LOG2 24
#define SY_FILTER_WORDS (1 << (SY_FILTER_LOG2 - 6))

/* The prefix index: per generation, SY_IX_BUCKETS buckets of SY_IX_WAYS
 * slots. A slot holds a prefix whose ports resolve with one segment and an
 * every-port label and whose address has no bits past the first 64 (every
 * IPv4 prefix, IPv6 ones up to /64 and a few longer), which is most
 * prefixes, so the lookup of such a prefix reads one array element (two
 * when it lives in its second bucket) and no hash map. A prefix's first
 * bucket comes from the top bits of its filter hash (ix_first), its second
 * from the hash mixed once more (ix_second). The writer fills a bucket
 * with the first SY_IX_WAYS indexable prefixes whose first bucket it is (in
 * key order), then with prefixes that did not fit in their first bucket
 * and whose second bucket it is, while slots are left. Every prefix also
 * lives in sy_prefixes; the index only saves reading it. 196,608 buckets of
 * 7 slots hold 1,376,256 prefixes per generation: at 1,048,576 prefixes
 * about 2% fit in neither bucket (48 MiB for both generations). */
#define SY_IX_BUCKETS (3 << 16)
#define SY_IX_WAYS 7

/* Ports no binding serves: per (protocol, family), one bit per port, set
 * when no binding of that protocol and family covers the port in the
 * generation the program reads nor in the one it may read next
 * (sy_noports[(proto*2 + family) * SY_NOPORT_WORDS + port/64]), kept like
 * sy_blocks' bits (below). A set bit ends a lookup at once; a clear one
 * (as a fresh map has them) says nothing. It replaces sy_noport, one map
 * per generation, of earlier builds, which this build neither reads nor
 * writes. */
#define SY_NOPORT_WORDS (65536 / 64)

/* Addresses no binding covers, one bit per address block (see sy_blocks),
 * which builds before sy_blocks read (1f43000 and older). This build keeps
 * the map clear (a clear bit says nothing), so that their programs, while
 * still attached during an upgrade, look every address up. */
#define SY_NOADDR_WORDS (65536 / 64)

/* Ports no binding of an address block serves: per (protocol, family), one
 * 64-bit word per address block (sy_blocks[(proto*2 + family) * SY_BLOCKS +
 * block]). An IPv4 block is a /16, numbered by the address's leading 16
 * bits; an IPv6 block is every address whose leading 32 bits hash to the
 * block's number (sy_block). Bit sy_port_bit(port) of a block's word
 * is set when no binding of that protocol and family that covers an address
 * of the block serves a port with that bit, in the generation the program
 * reads nor in the one it may read next. A change clears the bits of what
 * it adds before the generation flips, and sets those of what it removed
 * once no program reads the old generation. A binding of more than
 * SY_BLOCK_RANGE ports clears every bit of its blocks; a prefix shorter
 * than the block clears the bits of every block it covers (IPv6: of each
 * leading 32-bit value it covers, down to /16; a shorter one, and all of
 * them once they cover more than 2^21 values in all, of every block). So
 * one word ends both an address miss (every bit set) and most port misses;
 * a word with no bit set sends the lookup on to sy_noports. A set bit ends
 * a lookup at once; a clear one (as a fresh map has them) says nothing. */
#define SY_BLOCKS 65536
#define SY_BLOCK_RANGE 16

/* Flags of struct sy_ix_bucket. A prefix "of" a bucket is one whose first
 * bucket it is. */
#define SY_IXB_VALID 1    /* written by a build that knows an index */
#define SY_IXB_OVERFLOW 2 /* a prefix of this bucket is in no slot */
/* Written by a build of this index (this layout, ix_first, ix_second,
 * filter_bit): the program trusts only buckets that have it, and the filter
 * with them. A map of an older layout is replaced by an empty one when the
 * state is opened (an empty bucket says nothing), and Open rebuilds the
 * index when the active generation's first bucket lacks it. */
#define SY_IXB_THIS 4
/* A prefix of this bucket lives in its second bucket. */
#define SY_IXB_SECOND 8

/* Flags of struct sy_prefix_val. */
#define SY_PV_PORTS 1 /* single ports of this prefix live in sy_ports */
/* Every port range of this prefix wider than one port begins where a segment
 * begins and ends where one ends: no merge of adjacent segments of one label
 * hid its ends. The lookup explainer trusts it; the data path ignores it. */
#define SY_PV_BOUNDS 2

/* A binding of a small set: traffic to an address a with (a & mask) ==
 * addr (words in network byte order, IPv4 in word 0) and a port in
 * [lo, hi] goes to label. */
struct sy_small_ent {
	__u32 addr[4];
	__u32 mask[4];
	__u16 lo;
	__u16 hi;
	__u32 label;
};

/* Most bindings a small set holds. */
#define SY_SMALL_MAX 8

#define SY_SMALL_KNOWN 1 /* written by a build that writes small sets */
#define SY_SMALL_ALL 2   /* ent holds every binding of the list */

/* The bindings of one list (generation, protocol, family) when it has at
 * most SY_SMALL_MAX, the most specific first (the longest prefix, then the
 * narrowest ports): the first that matches is the one the prefix entries
 * give. */
struct sy_small {
	__u32 flags;
	__u32 count;
	struct sy_small_ent ent[SY_SMALL_MAX];
};

/* sy_config (lookup.h): the generation the programs read, and more. */
struct sy_cfg {
	__u32 gen;
	__u32 layout;    /* version of the map layout, for upgrades */
	__u64 serial;    /* bumped by every change of bindings or labels */
	__u32 dirty;     /* a change began and did not finish */
	__u32 _pad;
	__u8 prog[32];   /* SHA-256 of the object the attached program came from */
	/* Since layout 2: [gen*4 + proto*2 + family]. In the element the
	 * program reads gen from, so a small set costs no other lookup. */
	struct sy_small small[8];
};

/* sy_plens[gen*4 + proto*2 + family]: prefix lengths in use, longest first. */
struct sy_plen_list {
	__u32 count;
	__u8 lens[SY_MAX_PLENS];
};

/* Key of sy_prefixes: one (generation, protocol, prefix). addr is in network
 * byte order with host bits cleared; IPv4 uses addr[0] only. */
struct sy_prefix_key {
	__u8 gen;
	__u8 proto;
	__u8 family;
	__u8 plen;
	__u32 addr[4];
};

/* A run of ports [lo, hi] served by label. */
struct sy_seg {
	__u16 lo;
	__u16 hi;
	__u32 label;
};

/* Value of sy_prefixes: how the ports of one prefix resolve to labels. Ports
 * are tried narrowest first: sy_ports (if SY_PV_PORTS), then the segments
 * (inline, or in sy_tables[table] when table != 0), then any_label. */
struct sy_prefix_val {
	__u32 any_label;
	__u32 table;
	__u8 flags;
	__u8 nseg;
	__u16 _pad;
	struct sy_seg segs[SY_INLINE_SEGS];
};

/* Key of sy_ports: one port of a prefix. */
struct sy_port_key {
	struct sy_prefix_key prefix;
	__u16 port;
	__u16 _pad;
};

/* Value of sy_tables: sorted, disjoint segments. */
struct sy_table {
	__u32 nseg;
	__u32 _pad;
	struct sy_seg segs[SY_TABLE_SEGS];
};

/* Value of sy_index: SY_IX_WAYS slots, each a prefix, stored field by field
 * so that a slot that does not hold the prefix sought costs one aligned
 * load, and 7 slots fit 128 bytes. Slot k holds the prefix of kind kind[k]
 * (0: empty; else 1 + proto*2 + family) and length plen[k] whose
 * struct sy_prefix_key has addr[0] addr0[k], addr[1] addr1[k] and addr[2],
 * addr[3] 0. Its ports in [lo[k], hi[k]] resolve to label[k] (none when
 * lo > hi), the others to any_label[k]; 0 means no binding. Label ids are
 * below SY_MAX_LABELS (lookup.h), so 16 bits hold them.
 *
 * A bucket without SY_IXB_THIS (as a fresh map has them) says nothing: the
 * program then reads sy_prefixes. A bucket with it and without
 * SY_IXB_OVERFLOW proves that a prefix of the bucket that is in neither of
 * its buckets has no binding. */
struct sy_ix_bucket {
	__u16 flags;
	__u8 plen[SY_IX_WAYS];
	__u8 kind[SY_IX_WAYS];
	__u32 addr0[SY_IX_WAYS];
	__u32 addr1[SY_IX_WAYS];
	__u16 lo[SY_IX_WAYS];
	__u16 hi[SY_IX_WAYS];
	__u16 label[SY_IX_WAYS];
	__u16 any_label[SY_IX_WAYS];
};

/* Per-label counters, per CPU. Index 0 counts lookups that matched nothing.
 * Since layout 2 the program counts lookups at index 0 only: a label's are
 * its hits, missing and bad_socket together. */
struct sy_stats {
	__u64 lookups;
	__u64 hits;
	__u64 missing;
	__u64 bad_socket;
};

/* Key of sy_bindings, the control plane's record of each binding. Not read by
 * the program. */
struct sy_binding_key {
	__u8 proto;
	__u8 family;
	__u8 plen;
	__u8 _pad;
	__u32 addr[4];
	__u16 lo;
	__u16 hi;
};

/* Key of sy_labels: a label's name, NUL padded. */
struct sy_label_key {
	char name[256];
};

/* Value of sy_labels. */
struct sy_label_val {
	__u32 id;
	__u32 flags;
};
