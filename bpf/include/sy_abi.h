// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* The part of the kernel's BPF ABI that switchyard's programs use, written
 * here so that they build with -nostdinc, whatever the host's include
 * layout. Only what the programs need: fixed-width types, the constants
 * they pass, and the context structures up to the last field they read.
 *
 * Each value is the kernel's, from the UAPI header named beside it (paths in
 * the kernel source tree). A context structure's field offsets are what the
 * verifier checks a program's loads against, so those structures keep every
 * field before the last one read, in the kernel's order and sizes. The
 * committed objects prove the layout: a rebuild must give the same
 * instructions (make check-generate). */
#pragma once

/* include/uapi/asm-generic/int-ll64.h, include/uapi/linux/types.h */
typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;

/* include/uapi/linux/in.h */
enum {
	IPPROTO_TCP = 6,
	IPPROTO_UDP = 17,
};

/* include/uapi/linux/bpf.h, enum bpf_map_type: the map types used here. */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LPM_TRIE = 11,
	BPF_MAP_TYPE_SOCKMAP = 15,
	BPF_MAP_TYPE_SOCKHASH = 18,
	BPF_MAP_TYPE_SK_STORAGE = 24,
};

/* include/uapi/linux/bpf.h: map_flags, and flags of bpf_map_update_elem. */
enum {
	BPF_F_NO_PREALLOC = 1U << 0,
	BPF_F_MMAPABLE = 1U << 10,
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

/* include/uapi/linux/bpf.h: flags of the redirect helpers, and of
 * bpf_sk_storage_get. */
enum {
	BPF_F_INGRESS = 1U << 0,
};
enum {
	BPF_SK_STORAGE_GET_F_CREATE = 1U << 0,
};

/* include/uapi/linux/bpf.h, enum sk_action: verdicts of sk_lookup, SK_MSG
 * and SK_SKB programs. */
enum {
	SK_DROP = 0,
	SK_PASS = 1,
};

/* include/uapi/linux/bpf.h: sockops callbacks (bpf_sock_ops.op), the flag
 * that asks for BPF_SOCK_OPS_STATE_CB, and the TCP states it reports in
 * args[1] (the same numbers as the kernel's TCP_* states). */
enum {
	BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB = 4,
	BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB = 5,
	BPF_SOCK_OPS_STATE_CB = 10,
};
enum {
	BPF_SOCK_OPS_STATE_CB_FLAG = 1 << 2,
};
enum {
	BPF_TCP_CLOSE = 7,
};

/* A pointer field of a context structure: 8 bytes, 8-aligned, on 32-bit
 * and 64-bit hosts alike (include/uapi/linux/bpf.h, __bpf_md_ptr). */
#define SY_MD_PTR(type, name) \
	union {                    \
		type name;             \
		__u64 : 64;            \
	} __attribute__((aligned(8)))

/* The kernel's socket views and maps; programs here only pass them to
 * helpers (a program that reads a kernel structure declares the fields it
 * reads itself, for CO-RE). */
struct bpf_sock;
struct tcp_sock;
struct bpf_map;

/* include/uapi/linux/bpf.h: the sk_lookup context (net/core/filter.c,
 * sk_lookup_is_valid_access, checks the offsets). */
struct bpf_sk_lookup {
	union {
		SY_MD_PTR(struct bpf_sock *, sk);
		__u64 cookie;
	};
	__u32 family;
	__u32 protocol;
	__u32 remote_ip4;
	__u32 remote_ip6[4];
	__be16 remote_port;
	__u16 : 16;
	__u32 local_ip4;
	__u32 local_ip6[4];
	__u32 local_port; /* host byte order */
	__u32 ingress_ifindex;
};

/* include/uapi/linux/bpf.h: the sockops context, up to sk
 * (net/core/filter.c, sock_ops_is_valid_access). */
struct bpf_sock_ops {
	__u32 op;
	union {
		__u32 args[4];
		__u32 reply;
		__u32 replylong[4];
	};
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port; /* network byte order */
	__u32 local_port;  /* host byte order */
	__u32 is_fullsock;
	__u32 snd_cwnd;
	__u32 srtt_us;
	__u32 bpf_sock_ops_cb_flags;
	__u32 state;
	__u32 rtt_min;
	__u32 snd_ssthresh;
	__u32 rcv_nxt;
	__u32 snd_nxt;
	__u32 snd_una;
	__u32 mss_cache;
	__u32 ecn_flags;
	__u32 rate_delivered;
	__u32 rate_interval_us;
	__u32 packets_out;
	__u32 retrans_out;
	__u32 total_retrans;
	__u32 segs_in;
	__u32 data_segs_in;
	__u32 segs_out;
	__u32 data_segs_out;
	__u32 lost_out;
	__u32 sacked_out;
	__u32 sk_txhash;
	__u64 bytes_received;
	__u64 bytes_acked;
	SY_MD_PTR(struct bpf_sock *, sk);
};

/* include/uapi/linux/bpf.h: the SK_MSG context, up to sk
 * (net/core/filter.c, sk_msg_is_valid_access). */
struct sk_msg_md {
	SY_MD_PTR(void *, data);
	SY_MD_PTR(void *, data_end);
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port;
	__u32 local_port;
	__u32 size;
	SY_MD_PTR(struct bpf_sock *, sk);
};

/* include/uapi/linux/bpf.h: the socket buffer context, up to len, the only
 * field read (net/core/filter.c, sk_skb_is_valid_access). */
struct __sk_buff {
	__u32 len;
};
