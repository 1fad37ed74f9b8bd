// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* switchyard's sk_lookup program: steers new TCP connections and UDP
 * datagrams to the socket registered for the label of the most specific
 * binding. See dispatch.h for the map layouts. */

#include "sy_helpers.h"

#include "lookup.h"

#define AF_INET 2
#define AF_INET6 10

static __always_inline struct sy_stats *counters(__u32 label)
{
	return bpf_map_lookup_elem(&sy_counters, &label);
}

SEC("sk_lookup")
int sy_dispatch(struct bpf_sk_lookup *ctx)
{
	struct sy_stats *c;
	struct bpf_sock *sk;
	__u32 label, slot;
	__u8 proto, fam;
	int err;

	if (ctx->protocol == IPPROTO_TCP)
		proto = SY_PROTO_TCP;
	else if (ctx->protocol == IPPROTO_UDP)
		proto = SY_PROTO_UDP;
	else
		return SK_PASS;

	/* Each family inlines its own copy of the lookup, so the IPv4 one
	 * folds away the three address words IPv4 does not have. */
	if (ctx->family == AF_INET) {
		__u32 a0 = ctx->local_ip4;

		fam = SY_FAM_V4;
		/* Keep clang from merging this load with the IPv6 one below
		 * through a computed ctx pointer, which the verifier refuses. */
		asm volatile("" : "+r"(a0));
		label = sy_lookup_parts(proto, SY_FAM_V4, a0, 0, 0, 0, ctx->local_port);
	} else if (ctx->family == AF_INET6) {
		__u32 a0 = ctx->local_ip6[0];

		fam = SY_FAM_V6;
		asm volatile("" : "+r"(a0));
		label = sy_lookup_parts(proto, SY_FAM_V6, a0, ctx->local_ip6[1], ctx->local_ip6[2], ctx->local_ip6[3],
					ctx->local_port);
	} else {
		return SK_PASS;
	}
	if (!label) {
		c = counters(0);
		if (c)
			c->lookups++;
		return SK_PASS;
	}

	/* Every lookup of a label ends in one of hits, missing and
	 * bad_socket, so its lookups are their sum (dispatch/counters.go),
	 * one increment fewer per connection. */
	c = counters(label);

	slot = label * 4 + proto * 2 + fam;
	sk = bpf_map_lookup_elem(&sy_sockets, &slot);
	if (!sk && fam == SY_FAM_V4) {
		/* A dual-stack IPv6 socket may serve IPv4. */
		slot = label * 4 + proto * 2 + SY_FAM_V6;
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
