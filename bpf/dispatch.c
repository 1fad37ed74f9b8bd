// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* switchyard's sk_lookup program: steers new TCP connections and UDP
 * datagrams to the socket registered for the label of the most specific
 * binding. See dispatch.h for the map layouts. */

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "dispatch.h"

#define AF_INET 2
#define AF_INET6 10

/* Capacities; the loader may override max_entries. */
#define SY_MAX_LABELS 16384

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sy_cfg);
} sy_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct sy_plen_list);
} sy_plens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sy_prefix_key);
	__type(value, struct sy_prefix_val);
} sy_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
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

/* The bit of sy_filter for a prefix key; dispatch/filter.go computes the
 * same function. */
static __always_inline __u32 filter_bit(const struct sy_prefix_key *k)
{
	__u64 x = ((__u64)k->addr[0] << 32) | k->addr[1];
	__u64 y = ((__u64)k->addr[2] << 32) | k->addr[3];

	x ^= y * 0xff51afd7ed558ccdULL;
	x ^= ((__u64)k->plen << 16) | ((__u64)k->proto << 8) | k->family;
	x *= 0x9e3779b97f4a7c15ULL;
	return x >> (64 - SY_FILTER_LOG2);
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

static __always_inline struct sy_stats *counters(__u32 label)
{
	return bpf_map_lookup_elem(&sy_counters, &label);
}

SEC("sk_lookup")
int sy_dispatch(struct bpf_sk_lookup *ctx)
{
	struct sy_prefix_key key = {};
	const struct sy_cfg *cfg;
	const struct sy_plen_list *pl;
	struct sy_stats *c;
	struct bpf_sock *sk;
	__u32 zero = 0, idx, label = 0, slot, n;
	__u32 addr[4] = {};
	__u16 port = ctx->local_port;
	int err;

	if (ctx->protocol == IPPROTO_TCP)
		key.proto = SY_PROTO_TCP;
	else if (ctx->protocol == IPPROTO_UDP)
		key.proto = SY_PROTO_UDP;
	else
		return SK_PASS;

	if (ctx->family == AF_INET) {
		key.family = SY_FAM_V4;
		addr[0] = ctx->local_ip4;
		/* Keep clang from merging this load with the IPv6 one below
		 * through a computed ctx pointer, which the verifier refuses. */
		asm volatile("" : "+r"(addr[0]));
	} else if (ctx->family == AF_INET6) {
		key.family = SY_FAM_V6;
		addr[0] = ctx->local_ip6[0];
		addr[1] = ctx->local_ip6[1];
		addr[2] = ctx->local_ip6[2];
		addr[3] = ctx->local_ip6[3];
		asm volatile("" : "+r"(addr[0]));
	} else {
		return SK_PASS;
	}

	cfg = bpf_map_lookup_elem(&sy_config, &zero);
	if (!cfg)
		return SK_PASS;
	key.gen = cfg->gen & 1;

	idx = key.gen * 4 + key.proto * 2 + key.family;
	pl = bpf_map_lookup_elem(&sy_plens, &idx);
	if (!pl)
		return SK_PASS;
	n = pl->count;
	if (n > SY_MAX_PLENS)
		n = SY_MAX_PLENS;

	for (__u32 i = 0; i < SY_MAX_PLENS; i++) {
		const struct sy_prefix_val *v;
		__u32 bit, fidx;
		__u64 *word;
		int plen;

		if (i >= n)
			break;
		plen = pl->lens[i];
		key.plen = plen;
		key.addr[0] = mask_word(addr[0], plen);
		key.addr[1] = mask_word(addr[1], plen - 32);
		key.addr[2] = mask_word(addr[2], plen - 64);
		key.addr[3] = mask_word(addr[3], plen - 96);

		bit = filter_bit(&key);
		fidx = key.gen * SY_FILTER_WORDS + (bit >> 6);
		word = bpf_map_lookup_elem(&sy_filter, &fidx);
		if (!word || !(*word & (1ULL << (bit & 63))))
			continue;

		v = bpf_map_lookup_elem(&sy_prefixes, &key);
		if (!v)
			continue;
		label = sy_resolve_port(v, &key, port);
		if (label)
			break;
	}

	if (!label) {
		c = counters(0);
		if (c)
			c->lookups++;
		return SK_PASS;
	}

	c = counters(label);
	if (c)
		c->lookups++;

	slot = label * 4 + key.proto * 2 + key.family;
	sk = bpf_map_lookup_elem(&sy_sockets, &slot);
	if (!sk && key.family == SY_FAM_V4) {
		/* A dual-stack IPv6 socket may serve IPv4. */
		slot = label * 4 + key.proto * 2 + SY_FAM_V6;
		sk = bpf_map_lookup_elem(&sy_sockets, &slot);
		if (sk) {
			err = bpf_sk_assign(ctx, sk, 0);
			bpf_sk_release(sk);
			if (err)
				goto missing; /* IPV6_V6ONLY: not usable */
			goto hit;
		}
	}
	if (!sk)
		goto missing;

	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		if (c)
			c->bad_socket++;
		return SK_DROP;
	}
hit:
	if (c)
		c->hits++;
	return SK_PASS;
missing:
	if (c)
		c->missing++;
	return SK_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
