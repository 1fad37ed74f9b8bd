// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* switchyard's lookup explainer, run with BPF_PROG_TEST_RUN on a
 * bpf_sk_lookup context by `switchyard lookup`; none of it steers traffic.
 *
 * sy_explain finds the binding that wins for the context's destination: the
 * prefix length and label from the data path, resolved as sy_lookup_label
 * does it, then the narrowest port set of that prefix holding the port among
 * the recorded bindings (sy_bindings), by probing: the port alone; the every
 * port set when the port resolved to it; where the prefix keeps the ends of
 * its ranges as segment ends (SY_PV_BOUNDS), the port sets from a segment's
 * start to a segment's end around the port's segment; else, narrowest first
 * and within a budget, the port sets inside the run of ports the data path
 * resolved the port in. sy_explain_walk finds it by walking every recorded
 * binding, for when that finds nothing.
 * Both leave what they found in sy_result.
 *
 * sy_uncount takes back, on the CPU it runs on, what one test run of the
 * dispatch program counted in sy_counters, so that lookups do not show in
 * the label's counters. */

#include "sy_helpers.h"

#include "lookup.h"

struct bpf_map;

#define AF_INET 2
#define AF_INET6 10

/* Port sets sy_explain probes before giving up: narrowest first, a width
 * w costs w probes. */
#define SY_PROBE_BUDGET (1 << 18)

/* What sy_explain or sy_explain_walk found. */
struct sy_explained {
	struct sy_binding_key key; /* the winning binding */
	__u32 label;               /* its label id; 0 if nothing matched */
	__u32 width;               /* ports in the winner's range */
	__s32 plen;                /* the winner's prefix length; -1: none */
	__u32 exact;               /* key is known (else: walk) */
	__u64 visited;             /* probes or bindings looked at */
};

struct sy_explained sy_result;

/* What sy_uncount takes back: one of label 0's lookups (0), or one of a
 * label's hits (1), missing (2) or bad_socket (3), which are its lookups
 * (sy_stats). */
__u32 sy_uncount_label;
__u32 sy_uncount_what;

struct query {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

static __always_inline int read_query(struct bpf_sk_lookup *ctx, struct query *q)
{
	if (ctx->protocol == IPPROTO_TCP)
		q->proto = SY_PROTO_TCP;
	else if (ctx->protocol == IPPROTO_UDP)
		q->proto = SY_PROTO_UDP;
	else
		return -1;

	if (ctx->family == AF_INET) {
		q->family = SY_FAM_V4;
		q->addr[0] = ctx->local_ip4;
		asm volatile("" : "+r"(q->addr[0]));
	} else if (ctx->family == AF_INET6) {
		q->family = SY_FAM_V6;
		q->addr[0] = ctx->local_ip6[0];
		q->addr[1] = ctx->local_ip6[1];
		q->addr[2] = ctx->local_ip6[2];
		q->addr[3] = ctx->local_ip6[3];
		asm volatile("" : "+r"(q->addr[0]));
	} else {
		return -1;
	}
	q->port = ctx->local_port;
	return 0;
}

static long consider(struct bpf_map *map, const struct sy_binding_key *k, __u32 *label, struct query *q)
{
	struct sy_explained *out = &sy_result;
	__u32 width;
	int plen;

	out->visited++;
	if (k->proto != q->proto || k->family != q->family)
		return 0;
	if (q->port < k->lo || q->port > k->hi)
		return 0;
	plen = k->plen;
	if (mask_word(q->addr[0], plen) != k->addr[0] ||
	    mask_word(q->addr[1], plen - 32) != k->addr[1] ||
	    mask_word(q->addr[2], plen - 64) != k->addr[2] ||
	    mask_word(q->addr[3], plen - 96) != k->addr[3])
		return 0;
	width = (__u32)k->hi - k->lo + 1;
	if (plen < out->plen || (plen == out->plen && width >= out->width))
		return 0;
	out->key = *k;
	out->label = *label;
	out->width = width;
	out->plen = plen;
	out->exact = 1;
	return 0;
}

SEC("sk_lookup")
int sy_explain_walk(struct bpf_sk_lookup *ctx)
{
	struct query q = {};

	__builtin_memset(&sy_result, 0, sizeof(sy_result));
	sy_result.plen = -1;
	if (read_query(ctx, &q))
		return SK_PASS;
	bpf_for_each_map_elem(&sy_bindings, consider, &q, 0);
	return SK_PASS;
}

/* The state of the narrowest-first probe of the port sets of one prefix
 * that hold port and lie within [first, last]. */
struct probe {
	struct sy_binding_key key;
	__u32 port;
	__u32 first, last;
	__u32 width; /* of the port sets being probed */
	__u32 lo;    /* of the next one */
};

/* One probe; 1 when done. A global function, so that the verifier checks
 * it once, whatever the caller's state. */
__noinline int sy_probe_step(struct probe *p)
{
	__u32 end, *label;

	if (!p)
		return 1;
	if (p->width > p->last - p->first + 1)
		return 1;
	p->key.lo = p->lo;
	p->key.hi = p->lo + p->width - 1;
	label = bpf_map_lookup_elem(&sy_bindings, &p->key);
	sy_result.visited++;
	if (label) {
		sy_result.key = p->key;
		sy_result.label = *label;
		sy_result.width = p->width;
		sy_result.exact = 1;
		return 1;
	}
	/* Next: the set of this width one port to the right, or the
	 * leftmost of the next width. */
	end = p->last + 1 - p->width;
	if (p->port < end)
		end = p->port;
	if (p->lo < end) {
		p->lo++;
		return 0;
	}
	p->width++;
	p->lo = p->port + 1 >= p->first + p->width ? p->port + 1 - p->width : p->first;
	return 0;
}

static long probe_one(__u64 i, void *p)
{
	return sy_probe_step(p) ? 1 : 0;
}

/* How a port resolved: by an exact port, a segment, or every port. */
#define RUN_PORT 1
#define RUN_SEG 2
#define RUN_ANY 3

/* A run of ports and the label that serves them. */
struct port_run {
	__u32 first, last;
	__u32 label;
	__u32 how; /* RUN_* */
	__u32 seg; /* index of the segment, for RUN_SEG */
};

/* The scan of an overflow table for the segment holding port. */
struct seg_scan {
	__u32 table;
	__u32 port;
	__u32 first, last; /* the segment found; first > last: none */
	__u32 label;
	__u32 idx;
};

/* Segment i of the table; 1 when done. A global function, so that the
 * verifier checks it once. */
__noinline int sy_scan_step(struct seg_scan *sc, __u32 i)
{
	const struct sy_table *t;
	__u32 idx;

	if (!sc)
		return 1;
	idx = sc->table;
	t = bpf_map_lookup_elem(&sy_tables, &idx);
	if (!t || i >= t->nseg || i >= SY_TABLE_SEGS)
		return 1;
	/* For the verifier, which must see the bound on the register used;
	 * the barrier keeps clang from dropping the mask as redundant. */
	asm volatile("" : "+r"(i));
	i &= SY_TABLE_SEGS - 1;
	if (sc->port < t->segs[i].lo || sc->port > t->segs[i].hi)
		return 0;
	sc->first = t->segs[i].lo;
	sc->last = t->segs[i].hi;
	sc->label = t->segs[i].label;
	sc->idx = i;
	return 1;
}

static long scan_one(__u64 i, void *sc)
{
	return sy_scan_step(sc, i) ? 1 : 0;
}

/* The label of port in v and the run of ports it was found in, as
 * sy_resolve_port resolves it: an exact port, a segment, or every port
 * (any_label); run->label is 0 if none serves port. A global function, so
 * that the verifier checks it once. */
__noinline int sy_resolve_run(const struct sy_prefix_val *v, const struct sy_prefix_key *key,
			      __u32 port, struct port_run *run)
{
	if (!v || !key || !run)
		return 0;
	run->first = 0;
	run->last = 65535;
	run->label = 0;
	run->how = RUN_ANY;
	run->seg = 0;
	if (v->flags & SY_PV_PORTS) {
		struct sy_port_key pk = { .prefix = *key, .port = port };
		__u32 *label = bpf_map_lookup_elem(&sy_ports, &pk);

		if (label && *label) {
			run->first = run->last = port;
			run->label = *label;
			run->how = RUN_PORT;
			return 0;
		}
	}
	if (v->table) {
		struct seg_scan sc = { .table = v->table, .port = port, .first = 1, .last = 0 };

		bpf_loop(SY_TABLE_SEGS, scan_one, &sc, 0);
		if (sc.label && sc.first <= sc.last) {
			run->first = sc.first;
			run->last = sc.last;
			run->label = sc.label;
			run->how = RUN_SEG;
			run->seg = sc.idx;
			return 0;
		}
	} else {
		for (int i = 0; i < SY_INLINE_SEGS; i++) {
			if (i >= v->nseg)
				break;
			if (port >= v->segs[i].lo && port <= v->segs[i].hi && v->segs[i].label) {
				run->first = v->segs[i].lo;
				run->last = v->segs[i].hi;
				run->label = v->segs[i].label;
				run->how = RUN_SEG;
				run->seg = i;
				return 0;
			}
		}
	}
	run->label = v->any_label;
	return 0;
}

/* The state of the probe of the port sets from the start of segment i to
 * the end of segment j, i <= seg <= j, over segments that adjoin: i from seg
 * down, and for each i, j from seg up. The ranges holding the port nest, so
 * the first one found, with the greatest start and then the least end, is
 * the narrowest. */
struct seg_probe {
	struct sy_binding_key key;
	struct sy_seg segs[8]; /* inline segments, when table is 0 */
	__u32 table;
	__u32 nseg;
	__u32 seg; /* the port's segment */
	__u32 i, j;
};

static __always_inline int seg_at(const struct seg_probe *sp, __u32 k, struct sy_seg *out)
{
	if (k >= sp->nseg)
		return 0;
	if (sp->table) {
		__u32 idx = sp->table;
		const struct sy_table *t = bpf_map_lookup_elem(&sy_tables, &idx);

		if (!t || k >= SY_TABLE_SEGS)
			return 0;
		asm volatile("" : "+r"(k));
		k &= SY_TABLE_SEGS - 1;
		*out = t->segs[k];
		return 1;
	}
	if (k >= SY_INLINE_SEGS)
		return 0;
	asm volatile("" : "+r"(k));
	k &= 7;
	*out = sp->segs[k];
	return 1;
}

/* Whether segments k-1 and k adjoin. */
static __always_inline int adjoin(const struct seg_probe *sp, __u32 k)
{
	struct sy_seg a, b;

	if (k == 0 || !seg_at(sp, k - 1, &a) || !seg_at(sp, k, &b))
		return 0;
	return (__u32)a.hi + 1 == b.lo;
}

/* One probe; 1 when done. A global function, so that the verifier checks
 * it once. */
__noinline int sy_seg_probe_step(struct seg_probe *sp)
{
	struct sy_seg a, b;
	__u32 *label;

	if (!sp)
		return 1;
	if (sp->i > sp->seg)
		return 1;
	if (sp->j > sp->seg && !adjoin(sp, sp->j)) {
		/* No port set starting at segment i is left: the next i. */
		if (!adjoin(sp, sp->i))
			return 1;
		sp->i--;
		sp->j = sp->seg;
		return 0;
	}
	if (!seg_at(sp, sp->i, &a) || !seg_at(sp, sp->j, &b))
		return 1;
	sp->key.lo = a.lo;
	sp->key.hi = b.hi;
	label = bpf_map_lookup_elem(&sy_bindings, &sp->key);
	sy_result.visited++;
	if (label) {
		sy_result.key = sp->key;
		sy_result.label = *label;
		sy_result.width = (__u32)b.hi - a.lo + 1;
		sy_result.exact = 1;
		return 1;
	}
	sp->j++;
	return 0;
}

static long seg_probe_one(__u64 i, void *sp)
{
	return sy_seg_probe_step(sp) ? 1 : 0;
}

/* The state of the walk down the prefix lengths in use. */
struct descent {
	struct sy_prefix_key key;
	struct port_run run;
	__u32 addr[4];
	__u32 idx;  /* of the prefix lengths in sy_plens */
	__u32 port;
	__u32 step;
	__u32 label;
	__s32 plen;
};

/* One prefix length, the step-th longest in use; 1 when done. */
__noinline int sy_descend_step(struct descent *d)
{
	const struct sy_plen_list *pl;
	const struct sy_prefix_val *v;
	__u32 idx, i;
	int plen;

	if (!d)
		return 1;
	idx = d->idx;
	i = d->step++;
	pl = bpf_map_lookup_elem(&sy_plens, &idx);
	if (!pl || i >= pl->count || i >= SY_MAX_PLENS)
		return 1;
	plen = pl->lens[i];
	d->key.plen = plen;
	d->key.addr[0] = mask_word(d->addr[0], plen);
	d->key.addr[1] = mask_word(d->addr[1], plen - 32);
	d->key.addr[2] = mask_word(d->addr[2], plen - 64);
	d->key.addr[3] = mask_word(d->addr[3], plen - 96);
	v = bpf_map_lookup_elem(&sy_prefixes, &d->key);
	if (!v)
		return 0;
	sy_resolve_run(v, &d->key, d->port, &d->run);
	d->label = d->run.label;
	if (!d->label)
		return 0;
	d->plen = plen;
	return 1;
}

static long descend_one(__u64 i, void *d)
{
	return sy_descend_step(d) ? 1 : 0;
}

/* Probes the port sets between the segment ends of d's prefix around the
 * port's segment, if the prefix keeps the ends of its ranges (SY_PV_BOUNDS);
 * 1 if it did, whether or not it found one. */
static __always_inline int explain_by_segments(const struct descent *d, const struct sy_binding_key *key)
{
	const struct sy_prefix_val *v;
	struct seg_probe sp = {};

	v = bpf_map_lookup_elem(&sy_prefixes, &d->key);
	if (!v || !(v->flags & SY_PV_BOUNDS))
		return 0;
	sp.key = *key;
	sp.table = v->table;
	if (v->table) {
		__u32 idx = v->table;
		const struct sy_table *t = bpf_map_lookup_elem(&sy_tables, &idx);

		if (!t)
			return 0;
		sp.nseg = t->nseg;
	} else {
		sp.nseg = v->nseg;
		for (int k = 0; k < SY_INLINE_SEGS; k++)
			sp.segs[k] = v->segs[k];
	}
	sp.seg = sp.i = sp.j = d->run.seg;
	/* Each pair of segments once, and a step to each next i. */
	bpf_loop(SY_TABLE_SEGS * (SY_TABLE_SEGS + 1), seg_probe_one, &sp, 0);
	return 1;
}

SEC("sk_lookup")
int sy_explain(struct bpf_sk_lookup *ctx)
{
	struct descent d = {};
	const struct sy_cfg *cfg;
	struct probe p = {};
	struct query q = {};

	__builtin_memset(&sy_result, 0, sizeof(sy_result));
	sy_result.plen = -1;
	if (read_query(ctx, &q))
		return SK_PASS;

	/* The prefix length and label, as sy_lookup_label finds them. */
	cfg = &sy_config;
	d.key.gen = cfg->gen & 1;
	d.key.proto = q.proto;
	d.key.family = q.family;
	d.idx = d.key.gen * 4 + q.proto * 2 + q.family;
	d.addr[0] = q.addr[0];
	d.addr[1] = q.addr[1];
	d.addr[2] = q.addr[2];
	d.addr[3] = q.addr[3];
	d.port = q.port;
	d.plen = -1;
	bpf_loop(SY_MAX_PLENS, descend_one, &d, 0);
	if (!d.label || d.plen < 0)
		return SK_PASS;
	sy_result.plen = d.plen;
	sy_result.label = d.label;

	/* The binding: the narrowest recorded port set of that prefix that
	 * holds the port. If one lies within the run of ports the data path
	 * found the label in, probing that run narrowest first finds it;
	 * else the caller walks. */
	p.key.proto = q.proto;
	p.key.family = q.family;
	p.key.plen = d.key.plen;
	p.key.addr[0] = d.key.addr[0];
	p.key.addr[1] = d.key.addr[1];
	p.key.addr[2] = d.key.addr[2];
	p.key.addr[3] = d.key.addr[3];
	p.port = q.port;
	if (d.run.first > q.port || d.run.last < q.port)
		return SK_PASS;
	p.first = d.run.first;
	p.last = d.run.last;
	p.width = 1;
	p.lo = q.port;
	/* The port alone: the narrowest set there is. */
	if (sy_probe_step(&p))
		return SK_PASS;
	if (d.run.how == RUN_ANY) {
		/* No range holds the port, or its segment would. */
		p.width = 65536;
		p.first = 0;
		p.last = 65535;
		p.lo = 0;
		sy_probe_step(&p);
		return SK_PASS;
	}
	if (d.run.how == RUN_SEG && explain_by_segments(&d, &p.key))
		return SK_PASS;
	bpf_loop(SY_PROBE_BUDGET, probe_one, &p, 0);
	return SK_PASS;
}

SEC("sk_lookup")
int sy_uncount(struct bpf_sk_lookup *ctx)
{
	__u32 label = sy_uncount_label;
	struct sy_stats *c = bpf_map_lookup_elem(&sy_counters, &label);

	if (!c)
		return SK_DROP;
	switch (sy_uncount_what) {
	case 0:
		c->lookups--;
		break;
	case 1:
		c->hits--;
		break;
	case 2:
		c->missing--;
		break;
	case 3:
		c->bad_socket--;
		break;
	}
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
