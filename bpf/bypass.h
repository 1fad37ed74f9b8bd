/* Definitions of the bypass policy's maps (bpf/bypass.c). The Go side
 * (internal/bypass) mirrors these layouts through the types bpf2go generates
 * from BTF. The names and layouts are those pinned by earlier builds, which
 * a new build adopts in place. */
#pragma once

#include "sy_abi.h"

/* Bits of struct sy_p_label.mode. */
#define SY_P_BYPASS 1

/* sy_p_policy[label id]: the policy of a label. */
struct sy_p_label {
	__u32 mode;
	__u32 _pad;
};

/* sy_p_config[0]: settings of the policy programs. */
struct sy_p_cfg {
	/* The netns cookie of the dispatcher's namespace: only server sockets
	 * of that namespace serve its labels. */
	__u64 netns_cookie;
	/* Unused: kept so that the layout pinned by earlier builds (which
	 * kept the in-kernel splice engine's bound here) stays the same. The
	 * engine has a config of its own (bpf/kernelsplice.h). */
	__u32 splice_limit;
	/* How bypass decides it may redirect (SY_P_GUARD_*). */
	__u32 guard;
	/* Non-zero while net.core.busy_poll is on: epoll then busy-polls
	 * for every socket it waits on, whatever the socket's own setting, and
	 * redirected data passes no NAPI instance, so busy polling cannot see
	 * it and the receiver sleeps, which made cross-CPU latency worse than
	 * without bypass. Bypass pauses meanwhile. Busy polling in read
	 * (SO_BUSY_POLL, or net.core.busy_read, which a socket takes as its
	 * own setting when it is made) is per socket: sockops leaves such
	 * sockets alone instead. */
	__u32 busy_poll;
	__u32 _pad2;
};

/* Values of sy_p_cfg.guard. A receiver that reads with splice(2) never
 * sees redirected data (the kernel has no splice_read for sockmap), so
 * redirecting to it loses data. */
#define SY_P_GUARD_OFF 0     /* never redirect: bypass is not accelerated */
#define SY_P_GUARD_TRACE 1   /* fentry programs prove the peer reads with recvmsg */
#define SY_P_GUARD_TRUST 2   /* the operator vouches that no receiver uses splice(2) */

/* Key of sy_p_bypass: a TCP connection seen from one end. Addresses in
 * network byte order (IPv4, also v4-mapped IPv6, in laddr[0]/raddr[0] with
 * family 4), ports in host byte order. */
struct sy_p_tuple {
	__u32 family; /* 4 or 6 */
	__u32 lport;
	__u32 rport;
	__u32 laddr[4];
	__u32 raddr[4];
};


/* sy_p_sock: per-socket storage. */
struct sy_p_sock {
	__u32 label;
	__u32 passed; /* SY_P_GUARD_TRUST: sent the normal way once, so for good */
	struct sy_p_tuple key; /* the socket's key in sy_p_bypass */
};

/* sy_p_rx[key of a bypass socket]: how its owner reads it. The sender
 * redirects to it only while this proves nothing can be lost or overtaken. */
struct sy_p_rxstate {
	__u32 copied_seq; /* its TCP copied_seq when last seen in recvmsg */
	__u8 recvmsg;     /* read with recvmsg, which sees redirected data */
	__u8 spliced;     /* read with splice(2), which does not */
	__u16 _pad;
};

/* sy_p_stats[label id], per CPU. */
struct sy_p_counts {
	__u64 bytes;
	__u64 messages;
	__u64 connections;
	__u64 passed; /* messages of bypass sockets that took the normal path */
	__u64 busy_poll; /* connections left alone because an end busy-polls */
};
