// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* switchyard's lookup explainer: for the destination of a bpf_sk_lookup
 * context (run with BPF_PROG_TEST_RUN), finds the binding that wins by
 * switchyard's precedence rules in sy_bindings, the control plane's record,
 * and leaves it in sy_result. It steers nothing. `switchyard lookup` runs
 * it beside the dispatch program, to name the binding whose label the
 * dispatch program chose. */

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "lookup.h"

struct bpf_map;

#define AF_INET 2
#define AF_INET6 10

/* What sy_explain found. */
struct sy_explained {
	struct sy_binding_key key; /* the winning binding */
	__u32 label;               /* its label id; 0 if nothing matched */
	__u32 width;               /* ports in the winner's range */
	__s32 plen;                /* the winner's prefix length; -1: none */
	__u32 _pad;
	__u64 visited;             /* bindings looked at */
};

struct explain_query {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct sy_explained sy_result;

static long consider(struct bpf_map *map, const struct sy_binding_key *k, __u32 *label, struct explain_query *q)
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
	return 0;
}

SEC("sk_lookup")
int sy_explain(struct bpf_sk_lookup *ctx)
{
	struct explain_query q = {};

	if (ctx->protocol == IPPROTO_TCP)
		q.proto = SY_PROTO_TCP;
	else if (ctx->protocol == IPPROTO_UDP)
		q.proto = SY_PROTO_UDP;
	else
		return SK_PASS;

	if (ctx->family == AF_INET) {
		q.family = SY_FAM_V4;
		q.addr[0] = ctx->local_ip4;
		asm volatile("" : "+r"(q.addr[0]));
	} else if (ctx->family == AF_INET6) {
		q.family = SY_FAM_V6;
		q.addr[0] = ctx->local_ip6[0];
		q.addr[1] = ctx->local_ip6[1];
		q.addr[2] = ctx->local_ip6[2];
		q.addr[3] = ctx->local_ip6[3];
		asm volatile("" : "+r"(q.addr[0]));
	} else {
		return SK_PASS;
	}
	q.port = ctx->local_port;

	__builtin_memset(&sy_result, 0, sizeof(sy_result));
	sy_result.plen = -1;
	bpf_for_each_map_elem(&sy_bindings, consider, &q, 0);
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
