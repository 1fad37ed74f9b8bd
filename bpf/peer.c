// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* The common peer design of an sk_lookup dispatcher, written here from its
 * description so benchmarks can measure switchyard against it in the same
 * run: one LPM trie keyed {family, protocol, port, address}; look up the
 * exact port, then port 0 (every port), keep the match with the longer
 * prefix; then the destination's socket from a sockmap and bpf_sk_assign.
 * It is a benchmark baseline only; nothing loads it in production. */

#include "sy_helpers.h"

#define AF_INET 2
#define AF_INET6 10

/* Bits of the key before the address: family, protocol, port. */
#define PEER_HDR_BITS 32

struct peer_key {
	__u32 prefixlen; /* PEER_HDR_BITS + prefix length */
	__u8 family;     /* 0 IPv4, 1 IPv6 */
	__u8 proto;      /* 0 TCP, 1 UDP */
	__u16 port;      /* network byte order; 0 means every port */
	__u32 addr[4];   /* network byte order; IPv4 in addr[0] */
};

struct peer_val {
	__u32 slot;      /* index of the destination in peer_sockets */
	__u32 prefixlen; /* the entry's prefix length, to compare matches */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, struct peer_val);
} peer_bindings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} peer_sockets SEC(".maps");

SEC("sk_lookup")
int sy_peer(struct bpf_sk_lookup *ctx)
{
	struct peer_key key = { .prefixlen = PEER_HDR_BITS + 128 };
	struct peer_val *exact, *any, *v;
	struct bpf_sock *sk;
	int err;

	if (ctx->protocol == IPPROTO_TCP)
		key.proto = 0;
	else if (ctx->protocol == IPPROTO_UDP)
		key.proto = 1;
	else
		return SK_PASS;
	if (ctx->family == AF_INET) {
		key.family = 0;
		key.addr[0] = ctx->local_ip4;
		asm volatile("" : "+r"(key.addr[0]));
	} else if (ctx->family == AF_INET6) {
		key.family = 1;
		key.addr[0] = ctx->local_ip6[0];
		key.addr[1] = ctx->local_ip6[1];
		key.addr[2] = ctx->local_ip6[2];
		key.addr[3] = ctx->local_ip6[3];
		asm volatile("" : "+r"(key.addr[0]));
	} else {
		return SK_PASS;
	}

	key.port = bpf_htons(ctx->local_port);
	exact = bpf_map_lookup_elem(&peer_bindings, &key);
	key.port = 0;
	any = bpf_map_lookup_elem(&peer_bindings, &key);
	v = exact;
	if (!v || (any && any->prefixlen > v->prefixlen))
		v = any;
	if (!v)
		return SK_PASS;

	sk = bpf_map_lookup_elem(&peer_sockets, &v->slot);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
