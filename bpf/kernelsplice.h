/* Definitions of the in-kernel splice engine's maps (bpf/kernelsplice.c).
 * The Go side (internal/kernelsplice) mirrors these layouts through the
 * types bpf2go generates from BTF. */
#pragma once

#include "sy_abi.h"

/* Label ids are below this (SY_MAX_LABELS of lookup.h). */
#define SY_K_MAX_LABELS 16384

/* Pairs of sockets the engine splices at once. */
#define SY_K_MAX_PAIRS (1 << 16)

/* sy_k_config[0]: settings of the engine. */
struct sy_k_cfg {
	/* Most bytes a pair's direction may have redirected but not yet
	 * written to the destination socket. */
	__u32 limit;
	__u32 _pad;
};

/* Modes of struct sy_k_dir. */
#define SY_K_KERNEL 0 /* the verdict program redirects to the peer */
#define SY_K_USER 1   /* fell back: data stays on the source for userspace */

/* sy_k_dirs[slot]: the direction from the socket in sy_k_pairs[slot] to its
 * peer in slot ^ 1. */
struct sy_k_dir {
	__u32 mode;
	__u32 label;
	/* Bytes redirected to the peer. */
	__u64 redirected;
	/* The peer's write_seq when the first byte was redirected. */
	__u32 base_seq;
	__u32 based;
	/* Most bytes ever queued between redirect and the peer's send
	 * queue, for tests and status. */
	__u64 max_backlog;
};

/* sy_k_stats[label id], per CPU. */
struct sy_k_counts {
	__u64 bytes;    /* redirected in the kernel */
	__u64 messages; /* socket buffers redirected */
};
