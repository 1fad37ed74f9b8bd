// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* switchyard's bypass policy, on the connections that dispatched sockets
 * accept: sy_p_sockops puts both ends of a local TCP connection to a bypass
 * label into sy_p_bypass, keyed by the connection's tuple, and sy_p_msg
 * moves each message a socket sends straight into its peer's receive queue
 * (SK_MSG redirect with BPF_F_INGRESS). The fentry programs tell how
 * receivers read.
 *
 * Which label a connection belongs to comes from sy_lookup_label, the same
 * lookup the sk_lookup program makes. See bypass.h for the map layouts. The
 * in-kernel splice engine is another object (kernelsplice.c). */

#include "sy_helpers.h"

#include "lookup.h"
#include "bypass.h"

#define AF_INET 2
#define AF_INET6 10

/* Only the fields the programs read: write_seq (the check that the peer
 * read all sent the normal way) and copied_seq (how far a bypass socket's owner has read). CO-RE finds them
 * in the kernel's struct tcp_sock. */
struct tcp_sock {
	__u32 write_seq;
	__u32 copied_seq;
} __attribute__((preserve_access_index));

/* Only what the programs read of the kernel's struct sock: sk_ll_usec is
 * the socket's busy polling time (SO_BUSY_POLL, or net.core.busy_read when
 * the socket was made). */
struct sock {
	unsigned int sk_ll_usec;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sy_p_cfg);
} sy_p_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SY_MAX_LABELS);
	__type(key, __u32);
	__type(value, struct sy_p_label);
} sy_p_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SY_MAX_LABELS);
	__type(key, __u32);
	__type(value, struct sy_p_counts);
} sy_p_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct sy_p_tuple);
	__type(value, __u64);
} sy_p_bypass SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sy_p_sock);
} sy_p_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct sy_p_tuple);
	__type(value, struct sy_p_rxstate);
} sy_p_rx SEC(".maps");

static __always_inline struct sy_p_counts *stats(__u32 label)
{
	return bpf_map_lookup_elem(&sy_p_stats, &label);
}

static __always_inline int bypass_on(__u32 label)
{
	struct sy_p_label *p = bpf_map_lookup_elem(&sy_p_policy, &label);

	return p && (p->mode & SY_P_BYPASS);
}

/* A v4-mapped IPv6 address (::ffff:a.b.c.d) is IPv4 here, so both ends of
 * a connection to a dual-stack socket agree on the key, and the lookup is
 * the IPv4 one, as for sk_lookup. */
static __always_inline int v4mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

/* reverse sets out to k seen from the other end: the key of the peer of
 * the socket whose key is k. */
static __always_inline void reverse(struct sy_p_tuple *out, const struct sy_p_tuple *k)
{
	out->family = k->family;
	out->lport = k->rport;
	out->rport = k->lport;
	__builtin_memcpy(out->laddr, k->raddr, sizeof(out->laddr));
	__builtin_memcpy(out->raddr, k->laddr, sizeof(out->raddr));
}

/* busy_polls reports whether the owner of sk busy-polls when it reads
 * (SO_BUSY_POLL). A bypass socket reads through tcp_bpf, which never busy
 * polls: such an owner would sleep and be woken for every message instead
 * of spinning, and across CPUs that costs far more than bypass saves. */
static __always_inline int busy_polls(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (!tp || !bpf_core_field_exists(((struct sock *)tp)->sk_ll_usec))
		return 0;
	return ((struct sock *)tp)->sk_ll_usec != 0;
}

SEC("sockops")
int sy_p_sockops(struct bpf_sock_ops *ctx)
{
	struct sy_p_tuple key = {}, peer = {};
	struct bpf_sock *sk;
	struct sy_p_counts *s;
	struct sy_p_sock *st;
	struct sy_p_cfg *cfg;
	__u32 addr[4] = {};
	__u32 zero = 0, label;
	__u8 fam;
	int passive;

	switch (ctx->op) {
	case BPF_SOCK_OPS_STATE_CB:
		if (ctx->args[1] == BPF_TCP_CLOSE && ctx->sk) {
			st = bpf_sk_storage_get(&sy_p_sk, ctx->sk, 0, 0);
			if (st)
				bpf_map_delete_elem(&sy_p_rx, &st->key);
		}
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		passive = 0;
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive = 1;
		break;
	default:
		return 1;
	}

	key.lport = ctx->local_port;
	key.rport = bpf_ntohl(ctx->remote_port);
	if (ctx->family == AF_INET) {
		key.family = 4;
		key.laddr[0] = ctx->local_ip4;
		key.raddr[0] = ctx->remote_ip4;
	} else if (ctx->family == AF_INET6) {
		__u32 l[4], r[4];

		l[0] = ctx->local_ip6[0];
		l[1] = ctx->local_ip6[1];
		l[2] = ctx->local_ip6[2];
		l[3] = ctx->local_ip6[3];
		r[0] = ctx->remote_ip6[0];
		r[1] = ctx->remote_ip6[1];
		r[2] = ctx->remote_ip6[2];
		r[3] = ctx->remote_ip6[3];
		if (v4mapped(l) && v4mapped(r)) {
			key.family = 4;
			key.laddr[0] = l[3];
			key.raddr[0] = r[3];
		} else {
			key.family = 6;
			__builtin_memcpy(key.laddr, l, sizeof(l));
			__builtin_memcpy(key.raddr, r, sizeof(r));
		}
	} else {
		return 1;
	}

	/* Sockets join only while bypass can redirect: a socket in the map
	 * reads through tcp_bpf, which lacks busy polling, so a paused bypass
	 * must leave new connections entirely alone. */
	cfg = bpf_map_lookup_elem(&sy_p_config, &zero);
	if (!cfg || cfg->guard == SY_P_GUARD_OFF || cfg->busy_poll)
		return 1;
	/* Only connections that have exchanged no data yet (TCP Fast Open
	 * sends some with the handshake): data that went the normal path
	 * could be overtaken by data redirected later. */
	if (ctx->bytes_received || ctx->data_segs_out || ctx->data_segs_in)
		return 1;
	/* The label is that of the server's end: its local address. */
	if (passive) {
		if (cfg->netns_cookie != bpf_get_netns_cookie(ctx))
			return 1;
		/* The client's end joined first (its handshake completes
		 * first) if it is local; a remote peer is left alone. One hash
		 * lookup settles that before the label's lookup, so a remote
		 * client's connection costs no more. */
		reverse(&peer, &key);
		if (!bpf_map_lookup_elem(&sy_p_rx, &peer))
			return 1;
		__builtin_memcpy(addr, key.laddr, sizeof(addr));
		fam = key.family == 4 ? SY_FAM_V4 : SY_FAM_V6;
		label = sy_lookup_label(SY_PROTO_TCP, fam, addr, key.lport);
	} else {
		__builtin_memcpy(addr, key.raddr, sizeof(addr));
		fam = key.family == 4 ? SY_FAM_V4 : SY_FAM_V6;
		label = sy_lookup_label(SY_PROTO_TCP, fam, addr, key.rport);
	}
	if (!label || !bypass_on(label))
		return 1;

	sk = ctx->sk;
	if (!sk)
		return 1;
	/* Both ends join or neither does: a server end that busy-polls also
	 * takes the client's end out, which nothing can have redirected to
	 * yet (the server's end was not in the map). */
	if (busy_polls(sk)) {
		if (passive) {
			bpf_map_delete_elem(&sy_p_bypass, &peer);
			bpf_map_delete_elem(&sy_p_rx, &peer);
		}
		s = stats(label);
		if (s)
			s->busy_poll++;
		return 1;
	}
	st = bpf_sk_storage_get(&sy_p_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1;
	st->label = label;
	st->key = key;
	{
		struct sy_p_rxstate rx = {};

		if (bpf_map_update_elem(&sy_p_rx, &key, &rx, BPF_ANY) != 0)
			return 1;
	}
	if (bpf_sock_hash_update(ctx, &sy_p_bypass, &key, BPF_ANY) != 0) {
		bpf_map_delete_elem(&sy_p_rx, &key);
		return 1;
	}
	/* To forget sy_p_rx's entry when the socket closes. */
	bpf_sock_ops_cb_flags_set(ctx, BPF_SOCK_OPS_STATE_CB_FLAG);
	if (passive) {
		s = stats(label);
		if (s)
			s->connections++;
	}
	return 1;
}

SEC("sk_msg")
int sy_p_msg(struct sk_msg_md *msg)
{
	struct sy_p_tuple peer = {};
	struct sy_p_counts *s;
	struct sy_p_sock *st;
	struct sy_p_rxstate *rx;
	struct sy_p_cfg *cfg;
	struct tcp_sock *tp;
	__u32 size = msg->size, zero = 0;

	if (!msg->sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&sy_p_sk, msg->sk, 0, 0);
	if (!st)
		return SK_PASS;
	cfg = bpf_map_lookup_elem(&sy_p_config, &zero);
	if (!cfg || cfg->guard == SY_P_GUARD_OFF || cfg->busy_poll || !bypass_on(st->label))
		goto pass;
	if (cfg->guard == SY_P_GUARD_TRUST && st->passed)
		goto pass;

	/* The peer's key is this end's key, as sockops made it, reversed. */
	reverse(&peer, &st->key);

	/* Redirect only when nothing can be lost or overtaken:
	 *  - the peer is a bypass socket (not remote, not gone);
	 *  - the peer has read with recvmsg and never with splice(2):
	 *    splice(2) reads only the TCP receive queue and would never see
	 *    redirected data (the kernel has no splice_read for sockmap);
	 *  - the peer has read everything this end sent the normal way (its
	 *    copied_seq is our write_seq), so no redirected byte overtakes. */
	if (cfg->guard == SY_P_GUARD_TRACE) {
		rx = bpf_map_lookup_elem(&sy_p_rx, &peer);
		if (!rx || !rx->recvmsg || rx->spliced)
			goto pass;
		tp = bpf_skc_to_tcp_sock(msg->sk);
		if (!tp || tp->write_seq != rx->copied_seq)
			goto pass;
	}
	/* SY_P_GUARD_TRUST: this end never sent the normal way (checked
	 * above), and the peer entered the map before it could receive
	 * anything, so redirected data cannot overtake. */

	/* SK_DROP: the peer left the map since; take the normal path. */
	if (bpf_msg_redirect_hash(msg, &sy_p_bypass, &peer, BPF_F_INGRESS) != SK_PASS)
		goto pass;
	s = stats(st->label);
	if (s) {
		s->bytes += size;
		s->messages++;
	}
	return SK_PASS;
pass:
	st->passed = 1;
	s = stats(st->label);
	if (s)
		s->passed++;
	return SK_PASS;
}

/* How the receiving end of a bypass socket reads: recvmsg (read, readv,
 * recv...) sees redirected data, splice(2) does not. Only sockets with
 * policy storage (bypass sockets) are marked. */
static __always_inline void seen_reading(struct sock *sk, int spliced)
{
	struct sy_p_sock *st = bpf_sk_storage_get(&sy_p_sk, sk, 0, 0);
	struct tcp_sock *tp;
	struct sy_p_rxstate *rx;

	if (!st)
		return;
	rx = bpf_map_lookup_elem(&sy_p_rx, &st->key);
	if (!rx)
		return;
	if (spliced) {
		rx->spliced = 1;
		return;
	}
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	rx->copied_seq = tp->copied_seq;
	rx->recvmsg = 1;
}

SEC("fentry/tcp_bpf_recvmsg")
int BPF_PROG(sy_p_recvmsg, struct sock *sk)
{
	seen_reading(sk, 0);
	return 0;
}

SEC("fexit/tcp_bpf_recvmsg")
int BPF_PROG(sy_p_recvmsgx, struct sock *sk)
{
	seen_reading(sk, 0);
	return 0;
}

SEC("fentry/tcp_splice_read")
int BPF_PROG(sy_p_spliceread, struct socket *sock)
{
	struct sock *sk = sock->sk;

	if (sk)
		seen_reading(sk, 1);
	return 0;
}

char _license[] SEC("license") = "Dual BSD/GPL";
