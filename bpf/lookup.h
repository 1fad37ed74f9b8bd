/* The dispatch maps and the lookup of a label by binding, shared by every
 * switchyard program that needs to know which label traffic belongs to.
 * Include once per object; the maps are pinned by name, so separate objects
 * that include this share them when loaded against the same pins. */
#pragma once

#include "sy_helpers.h"

#include "dispatch.h"

/* Capacities, fixed here: the loader uses every max_entries as written. */
#define SY_MAX_LABELS 16384

/* The generation in force and the small sets, pinned as sy_config: a
 * global in a data section of its own, whose map the loader replaces with
 * the pinned one (dispatch/config.go), so programs read it at an address
 * fixed at load, without a lookup. */
struct sy_cfg sy_config SEC(".data.sy_config");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct sy_plen_list);
} sy_plens SEC(".maps");

/* sy_prefixes and sy_ports hold both generations: twice the bindings. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sy_prefix_key);
	__type(value, struct sy_prefix_val);
} sy_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sy_port_key);
	__type(value, __u32);
} sy_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SY_TABLES_PER_GEN);
	__type(key, __u32);
	__type(value, struct sy_table);
} sy_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SY_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} sy_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SY_IX_BUCKETS);
	__type(key, __u32);
	__type(value, struct sy_ix_bucket);
} sy_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * SY_NOPORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} sy_noports SEC(".maps");

/* Read by no program of this build; kept clear for older ones (dispatch.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * SY_NOADDR_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} sy_noaddr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * SY_BLOCKS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} sy_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SY_MAX_LABELS * 4);
	__type(key, __u32);
	__type(value, __u64);
} sy_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SY_MAX_LABELS);
	__type(key, __u32);
	__type(value, struct sy_stats);
} sy_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sy_binding_key);
	__type(value, __u32);
} sy_bindings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SY_MAX_LABELS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sy_label_key);
	__type(value, struct sy_label_val);
} sy_labels SEC(".maps");

static __always_inline __u32 mask_word(__u32 word, int bits)
{
	if (bits <= 0)
		return 0;
	if (bits >= 32)
		return word;
	return word & bpf_htonl(~0U << (32 - bits));
}

/* The hash of a prefix key that sy_filter and sy_index use; dispatch/filter.go
 * computes the same function. */
static __always_inline __u64 ix_hash(const struct sy_prefix_key *k)
{
	__u64 x = ((__u64)k->addr[0] << 32) | k->addr[1];
	__u64 y = ((__u64)k->addr[2] << 32) | k->addr[3];

	x ^= y * 0xff51afd7ed558ccdULL;
	x ^= ((__u64)k->plen << 16) | ((__u64)k->proto << 8) | k->family;
	x *= 0x9e3779b97f4a7c15ULL;
	/* Fold the high bits, which the multiply mixed, into the low ones,
	 * then mix again: addresses that differ only in their low bytes
	 * (which IPv6 words hold high, loaded little-endian) spread. */
	x ^= x >> 29;
	x *= 0xbf58476d1ce4e5b9ULL;
	return x;
}

/* The bit of sy_filter for a prefix key of hash h. */
static __always_inline __u32 filter_bit(__u64 h)
{
	return h >> (64 - SY_FILTER_LOG2);
}

/* The first index bucket (within a generation) of a prefix key of hash h:
 * its filter bit scaled to the buckets. */
static __always_inline __u32 ix_first(__u64 h)
{
	return ((__u64)filter_bit(h) * SY_IX_BUCKETS) >> SY_FILTER_LOG2;
}

/* The second index bucket of a prefix key of hash h: the hash mixed once
 * more, so it does not follow the first. */
static __always_inline __u32 ix_second(__u64 h)
{
	return ((((h * 0x94d049bb133111ebULL) >> (64 - SY_FILTER_LOG2))) * SY_IX_BUCKETS) >> SY_FILTER_LOG2;
}

/* The address block (of sy_blocks) holding an address of family fam whose
 * leading 32 bits are a0 (network byte order); dispatch/index.go computes
 * the same function. */
static __always_inline __u32 sy_block(__u32 a0, __u8 fam)
{
	__u32 lead = bpf_ntohl(a0);

	if (fam == SY_FAM_V4)
		return lead >> 16;
	return (lead * 0x9e3779b1U) >> 16;
}

/* The bit of a word of sy_blocks for port; dispatch/index.go computes the
 * same function. */
static __always_inline __u32 sy_port_bit(__u16 port)
{
	return ((__u32)port * 0x9e3779b1U) >> 26;
}

/* Finds the segment holding port among n sorted, disjoint segments. */
static __always_inline __u32 search_table(const struct sy_table *t, __u16 port)
{
	__u32 lo = 0, hi = t->nseg;

	if (hi > SY_TABLE_SEGS)
		hi = SY_TABLE_SEGS;
	/* Invariant: the answer, if any, is in [lo, hi). 9 halvings cover 256. */
	for (int i = 0; i < 9 && lo < hi; i++) {
		__u32 mid = (lo + hi) / 2;
		const struct sy_seg *s;

		if (mid >= SY_TABLE_SEGS)
			return 0;
		s = &t->segs[mid];
		if (port < s->lo)
			hi = mid;
		else if (port > s->hi)
			lo = mid + 1;
		else
			return s->label;
	}
	return 0;
}

/* A global function, so the verifier checks it once rather than once for
 * every prefix length the caller's loop may visit. */
__noinline __u32 sy_resolve_port(const struct sy_prefix_val *v,
				 const struct sy_prefix_key *key, __u32 port)
{
	if (!v || !key)
		return 0;
	if (v->flags & SY_PV_PORTS) {
		struct sy_port_key pk = { .prefix = *key, .port = port };
		__u32 *label = bpf_map_lookup_elem(&sy_ports, &pk);

		if (label && *label)
			return *label;
	}

	if (v->table) {
		__u32 idx = v->table;
		const struct sy_table *t = bpf_map_lookup_elem(&sy_tables, &idx);

		if (t) {
			__u32 label = search_table(t, port);

			if (label)
				return label;
		}
	} else {
		for (int i = 0; i < SY_INLINE_SEGS; i++) {
			if (i >= v->nseg)
				break;
			if (port >= v->segs[i].lo && port <= v->segs[i].hi)
				return v->segs[i].label;
		}
	}

	return v->any_label;
}

/* What sy_lookup looks up: traffic of protocol proto (SY_PROTO_*) and
 * family fam (SY_FAM_*) to addr (network byte order, IPv4 in addr[0]) and
 * port. */
struct sy_query {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 fam;
};

/* The label of port in the slot of bucket b that holds the prefix of key
 * (kind: 1 + proto*2 + fam; addr[2] and addr[3] 0), or -1 if no slot does. */
static __always_inline int ix_probe(const struct sy_ix_bucket *b, const struct sy_prefix_key *key,
				    __u8 kind, __u16 port)
{
	for (int k = 0; k < SY_IX_WAYS; k++) {
		if (b->addr0[k] != key->addr[0])
			continue;
		if (b->addr1[k] != key->addr[1] || b->plen[k] != key->plen || b->kind[k] != kind)
			continue;
		return (port >= b->lo[k] && port <= b->hi[k]) ? b->label[k] : b->any_label[k];
	}
	return -1;
}

/* ix_probe as a global function, for second buckets, so that the verifier
 * checks that scan once rather than at every prefix length. */
__noinline int sy_ix_probe(const struct sy_ix_bucket *b, const struct sy_prefix_key *key,
			   __u32 kind, __u32 port)
{
	if (!b || !key)
		return -1;
	return ix_probe(b, key, kind, port);
}

/* The label of port in a prefix entry whose ports resolve without sy_ports
 * and sy_tables, as most do (one segment at most), or else in any entry
 * through sy_resolve_port. */
static __always_inline __u32 resolve_port(const struct sy_prefix_val *v,
					  const struct sy_prefix_key *key, __u16 port)
{
	if (!(v->flags & SY_PV_PORTS) && !v->table && v->nseg <= 1) {
		if (v->nseg && port >= v->segs[0].lo && port <= v->segs[0].hi)
			return v->segs[0].label;
		return v->any_label;
	}
	return sy_resolve_port(v, key, port);
}

/* The label that the prefix of length plen around q's address, in
 * generation gen, gives q's port; 0 if no binding of that prefix does
 * (the caller then tries the next shorter length). */
static __always_inline __u32 probe_length(const struct sy_query *q, __u32 gen, __u32 plen)
{
	const struct sy_ix_bucket *b;
	const struct sy_prefix_val *v;
	struct sy_prefix_key key;
	const __u64 *w;
	__u32 bit, fidx, bidx;
	__u16 port = q->port;
	__u8 kind = 1 + q->proto * 2 + q->fam;
	__u64 h;

	__builtin_memset(&key, 0, sizeof(key));
	key.gen = gen;
	key.proto = q->proto;
	key.family = q->fam;
	key.plen = plen;
	key.addr[0] = mask_word(q->addr[0], plen);
	key.addr[1] = mask_word(q->addr[1], (int)plen - 32);
	key.addr[2] = mask_word(q->addr[2], (int)plen - 64);
	key.addr[3] = mask_word(q->addr[3], (int)plen - 96);

	h = ix_hash(&key);
	bit = filter_bit(h);
	bidx = gen * SY_IX_BUCKETS + ix_first(h);
	b = bpf_map_lookup_elem(&sy_index, &bidx);
	if (b && (b->flags & SY_IXB_THIS)) {
		__u16 flags = b->flags;
		int r = -1;

		/* A slot holds only keys of 64 bits or less. */
		if (!(key.addr[2] | key.addr[3])) {
			r = ix_probe(b, &key, kind, port);
			if (r < 0 && (flags & SY_IXB_SECOND)) {
				bidx = gen * SY_IX_BUCKETS + ix_second(h);
				b = bpf_map_lookup_elem(&sy_index, &bidx);
				/* Written with the first bucket, so it has
				 * SY_IXB_THIS too. */
				if (b)
					r = sy_ix_probe(b, &key, kind, port);
			}
		}
		if (r >= 0)
			return r;
		if (!(flags & SY_IXB_OVERFLOW))
			return 0;
		/* The filter of a generation is written with its index, so
		 * only a valid bucket vouches for it. */
		fidx = gen * SY_FILTER_WORDS + (bit >> 6);
		w = bpf_map_lookup_elem(&sy_filter, &fidx);
		if (!w || !((*w >> (bit & 63)) & 1))
			return 0;
	}

	v = bpf_map_lookup_elem(&sy_prefixes, &key);
	if (!v)
		return 0;
	return resolve_port(v, &key, port);
}

/* probe_length as global functions, for every length after the first:
 * the verifier checks each once, not once for each length the caller's
 * loop may reach, which keeps the programs that look labels up within a
 * small part of the verifier's budget (and their load within milliseconds).
 * The IPv4 one takes its query as values, so that the three address words
 * IPv4 does not have fold away as they do inline. */
__noinline __u32 sy_probe_length4(__u32 addr, __u32 gen, __u32 plen, __u32 proto_port)
{
	struct sy_query q = {
		.addr = { addr },
		.port = proto_port,
		.proto = proto_port >> 16,
		.fam = SY_FAM_V4,
	};

	if (plen > 32 || q.proto > 1)
		return 0;
	return probe_length(&q, gen & 1, plen);
}

__noinline __u32 sy_probe_length6(const struct sy_query *q, __u32 gen, __u32 plen)
{
	if (!q || plen > 128)
		return 0;
	return probe_length(q, gen & 1, plen);
}

/* How many prefix lengths, the longest first, probe_lengths probes inline;
 * the rest take a call each. Most sets have one or two lengths per protocol
 * and family (networks, and hosts within them). */
#define SY_INLINE_PLENS 2

/* The label of the most specific binding for q among the prefix lengths of
 * pl in generation gen, or 0. */
static __always_inline __u32 probe_lengths(const struct sy_query *q, __u32 gen, const struct sy_plen_list *pl)
{
	__u32 label = 0, n;

	n = pl->count;
	if (n > SY_MAX_PLENS)
		n = SY_MAX_PLENS;
#pragma unroll
	for (__u32 i = 0; i < SY_INLINE_PLENS; i++) {
		if (i >= n)
			return 0;
		label = probe_length(q, gen, pl->lens[i]);
		if (label)
			return label;
	}
	for (__u32 i = SY_INLINE_PLENS; i < SY_MAX_PLENS; i++) {
		if (i >= n)
			break;
		if (q->fam == SY_FAM_V4)
			label = sy_probe_length4(q->addr[0], gen, pl->lens[i], (__u32)q->proto << 16 | q->port);
		else
			label = sy_probe_length6(q, gen, pl->lens[i]);
		if (label)
			break;
	}
	return label;
}

/* The label of the first binding of the small set s that matches traffic
 * of family fam to addr and port, or 0: the set is in order of precedence. */
static __always_inline __u32 small_lookup(const struct sy_small *s, __u8 fam, const __u32 addr[4], __u16 port)
{
	__u32 n = s->count;

#pragma unroll
	for (int i = 0; i < SY_SMALL_MAX; i++) {
		const struct sy_small_ent *e = &s->ent[i];

		if (i >= n)
			break;
		if ((addr[0] & e->mask[0]) != e->addr[0])
			continue;
		if (fam == SY_FAM_V6 &&
		    (((addr[1] & e->mask[1]) ^ e->addr[1]) | ((addr[2] & e->mask[2]) ^ e->addr[2]) |
		     ((addr[3] & e->mask[3]) ^ e->addr[3])))
			continue;
		if (port < e->lo || port > e->hi)
			continue;
		return e->label;
	}
	return 0;
}

/* Whether no binding of list li (proto*2 + family) serves port at an
 * address whose block (sy_block) is blk, as far as the word of the
 * block and, where that has no bit set, sy_noports tell: an address miss
 * and most port misses end on one array element. */
static __always_inline int unserved(__u32 li, __u32 blk, __u16 port)
{
	const __u64 *w;
	__u64 word;
	__u32 widx;

	widx = li * SY_BLOCKS + blk;
	w = bpf_map_lookup_elem(&sy_blocks, &widx);
	if (!w)
		return 1;
	word = *w;
	if ((word >> sy_port_bit(port)) & 1)
		return 1;
	if (word)
		return 0;
	widx = li * SY_NOPORT_WORDS + port / 64;
	w = bpf_map_lookup_elem(&sy_noports, &widx);
	return w && ((*w >> (port & 63)) & 1);
}

/* The label of the most specific binding for q in generation gen, from the
 * prefix entries, once unserved has let q through. */
static __always_inline __u32 lookup_entries(const struct sy_query *q, __u32 gen)
{
	const struct sy_plen_list *pl;
	__u32 idx;

	idx = gen * 4 + q->proto * 2 + q->fam;
	pl = bpf_map_lookup_elem(&sy_plens, &idx);
	if (!pl)
		return 0;
	return probe_lengths(q, gen, pl);
}

/* The label of the most specific binding for traffic of protocol proto
 * (SY_PROTO_*) and family fam (SY_FAM_*) to address a0..a3 (network byte
 * order, IPv4 in a0) and port, or 0 if no binding matches. A list of a few
 * bindings is scanned whole from sy_config, which the lookup reads first
 * for the generation; the query is built only for the prefix entries. */
static __always_inline __u32 sy_lookup_parts(__u8 proto, __u8 fam, __u32 a0, __u32 a1, __u32 a2, __u32 a3,
					     __u16 port)
{
	const struct sy_small *s;
	const struct sy_cfg *cfg = &sy_config;
	__u32 gen, idx;

	if (proto > 1 || fam > 1)
		return 0;
	gen = cfg->gen & 1;
	idx = gen * 4 + proto * 2 + fam;
	/* Clang knows idx < 8 from the test above and would drop the mask;
	 * the verifier, in a caller where proto and fam are unknown, does
	 * not, and refuses an unbounded offset into the value. */
	asm volatile("" : "+r"(idx));
	s = &cfg->small[idx & 7];
	if (s->flags & SY_SMALL_ALL) {
		__u32 addr[4] = { a0, a1, a2, a3 };

		return small_lookup(s, fam, addr, port);
	}
	/* Before the query is built: most misses end here. */
	if (unserved(proto * 2 + fam, sy_block(a0, fam), port))
		return 0;

	struct sy_query q = { .addr = { a0, a1, a2, a3 }, .port = port, .proto = proto, .fam = fam };

	return lookup_entries(&q, gen);
}

/* sy_lookup_parts as a global function, so the verifier checks its loop
 * once per program rather than once for each caller. */
__noinline __u32 sy_lookup(const struct sy_query *q)
{
	if (!q)
		return 0;
	return sy_lookup_parts(q->proto, q->fam, q->addr[0], q->addr[1], q->addr[2], q->addr[3], q->port);
}

/* The label of the most specific binding for traffic of protocol proto
 * (SY_PROTO_*) and family fam (SY_FAM_*) to addr (network byte order, IPv4 in
 * addr[0]) and port, or 0 if no binding matches. Every program that asks
 * which label a connection belongs to uses this, so they all agree. */
static __always_inline __u32 sy_lookup_label(__u8 proto, __u8 fam, const __u32 addr[4], __u16 port)
{
	struct sy_query q = {
		.addr = { addr[0], addr[1], addr[2], addr[3] },
		.port = port,
		.proto = proto,
		.fam = fam,
	};

	return sy_lookup(&q);
}
