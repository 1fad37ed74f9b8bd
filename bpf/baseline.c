// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Baselines of the lookup benchmark, run beside sy_dispatch in the same
 * process: sy_baseline, the cheapest possible sk_lookup program, and
 * sy_floor, the least any dispatcher does to steer a connection (one
 * sockmap lookup at a slot known in advance, bpf_sk_assign, release). */

#include "sy_helpers.h"

SEC("sk_lookup")
int sy_baseline(struct bpf_sk_lookup *ctx)
{
	return SK_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} floor_sockets SEC(".maps");

SEC("sk_lookup")
int sy_floor(struct bpf_sk_lookup *ctx)
{
	struct bpf_sock *sk;
	__u32 slot = 0;
	int err;

	sk = bpf_map_lookup_elem(&floor_sockets, &slot);
	if (!sk)
		return SK_PASS;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
