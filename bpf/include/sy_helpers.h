// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* What switchyard's programs need to talk to the kernel and the loader,
 * written here so that they build with -nostdinc: section and map
 * definition macros in the form the Go loader reads (BTF-described
 * maps in ".maps"), the helper calls the programs make, byte order,
 * arguments of tracing programs, and the CO-RE field check. */
#pragma once

#include "sy_abi.h"

/* Places a program, map or the license in the ELF section the loader
 * reads it from. */
#define SEC(name) __attribute__((section(name), used))

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
/* A BPF-to-BPF call: the function stays a subprogram of its own. */
#ifndef __noinline
#define __noinline __attribute__((noinline))
#endif

/* Map definitions: the loader reads a map's type, sizes and flags from the
 * BTF of its variable in ".maps". An integer setting is the length of an
 * array pointed to; key and value are the types pointed to. */
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

/* Helper calls. A helper is called through a constant "address" that is
 * its number in the kernel's list (include/uapi/linux/bpf.h,
 * __BPF_FUNC_MAPPER); clang turns the call into a BPF call instruction with
 * that immediate. Signatures as the kernel documents them there. */
#define SY_HELPER(ret, name, id, ...) static ret(*const name)(__VA_ARGS__) = (void *)(id)

SY_HELPER(void *, bpf_map_lookup_elem, 1, void *map, const void *key);
SY_HELPER(long, bpf_map_update_elem, 2, void *map, const void *key, const void *value, __u64 flags);
SY_HELPER(long, bpf_map_delete_elem, 3, void *map, const void *key);
SY_HELPER(__u64, bpf_get_socket_cookie, 46, void *ctx);
SY_HELPER(long, bpf_sk_redirect_map, 52, struct __sk_buff *skb, void *map, __u32 key, __u64 flags);
SY_HELPER(long, bpf_sock_ops_cb_flags_set, 59, struct bpf_sock_ops *skops, int argval);
SY_HELPER(long, bpf_sock_hash_update, 70, struct bpf_sock_ops *skops, void *map, void *key, __u64 flags);
SY_HELPER(long, bpf_msg_redirect_hash, 71, struct sk_msg_md *msg, void *map, void *key, __u64 flags);
SY_HELPER(long, bpf_sk_release, 86, void *sock);
SY_HELPER(void *, bpf_sk_storage_get, 107, void *map, void *sk, void *value, __u64 flags);
SY_HELPER(__u64, bpf_get_netns_cookie, 122, void *ctx);
SY_HELPER(long, bpf_sk_assign, 124, void *ctx, void *sk, __u64 flags);
SY_HELPER(struct tcp_sock *, bpf_skc_to_tcp_sock, 137, void *sk);
SY_HELPER(long, bpf_for_each_map_elem, 164, void *map, void *callback_fn, void *callback_ctx, __u64 flags);
SY_HELPER(long, bpf_loop, 181, __u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags);

/* Byte order: network order is big-endian; the bpfeb build needs no swap. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bpf_htons(x) ((__be16)__builtin_bswap16(x))
#define bpf_ntohs(x) ((__u16)__builtin_bswap16(x))
#define bpf_htonl(x) ((__be32)__builtin_bswap32(x))
#define bpf_ntohl(x) ((__u32)__builtin_bswap32(x))
#elif __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define bpf_htons(x) ((__be16)(x))
#define bpf_ntohs(x) ((__u16)(x))
#define bpf_htonl(x) ((__be32)(x))
#define bpf_ntohl(x) ((__u32)(x))
#else
#error "unknown byte order"
#endif

/* CO-RE: whether the running kernel's type has the field, which the loader
 * settles from the kernel's BTF (enum bpf_field_info_kind in
 * include/uapi/linux/bpf.h, BPF_FIELD_EXISTS). The field is written as an
 * access, for example bpf_core_field_exists(((struct sock *)p)->f). */
#define SY_FIELD_EXISTS 2
#define bpf_core_field_exists(field) __builtin_preserve_field_info(field, SY_FIELD_EXISTS)

/* Tracing (fentry/fexit) programs get their function's arguments as an
 * array of u64 (kernel/bpf/btf.c, btf_ctx_access). BPF_PROG(name, args)
 * defines the program name taking that array and a body that takes the
 * arguments by name. Pointer arguments only, one to four of them. */
#define SY_NARGS(...) SY_NARGS_(__VA_ARGS__, 4, 3, 2, 1, 0)
#define SY_NARGS_(_1, _2, _3, _4, n, ...) n
#define SY_CAT(a, b) SY_CAT_(a, b)
#define SY_CAT_(a, b) a##b
#define SY_ARGS1(ctx) (void *)ctx[0]
#define SY_ARGS2(ctx) SY_ARGS1(ctx), (void *)ctx[1]
#define SY_ARGS3(ctx) SY_ARGS2(ctx), (void *)ctx[2]
#define SY_ARGS4(ctx) SY_ARGS3(ctx), (void *)ctx[3]

#define BPF_PROG(name, ...)                                                        \
	name(unsigned long long *ctx);                                                 \
	static __always_inline typeof(name(0)) sy_body_##name(unsigned long long *ctx, \
							      __VA_ARGS__);            \
	typeof(name(0)) name(unsigned long long *ctx)                                  \
	{                                                                              \
		return sy_body_##name(ctx, SY_CAT(SY_ARGS, SY_NARGS(__VA_ARGS__))(ctx)); \
	}                                                                              \
	static __always_inline typeof(name(0)) sy_body_##name(unsigned long long *ctx, \
							      __VA_ARGS__)
