// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* switchyard's in-kernel splice engine, which a splice label selects with
 * engine kernel: userspace puts the two sockets of a proxied connection into
 * sy_k_peers and then sy_k_pairs at slots 2n and 2n+1, and sy_k_splice (an
 * SK_SKB stream verdict program) redirects what one receives to the other's
 * send path, within a bound on what may queue in between. See
 * kernelsplice.h for the map layouts. Bypass is another object (bypass.c). */

#include "sy_helpers.h"

#include "kernelsplice.h"

/* Only the field the program reads: write_seq, for the bound. CO-RE finds
 * it in the kernel's struct tcp_sock. */
struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sy_k_cfg);
} sy_k_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SY_K_MAX_LABELS);
	__type(key, __u32);
	__type(value, struct sy_k_counts);
} sy_k_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2 * SY_K_MAX_PAIRS);
	__type(key, __u32);
	__type(value, __u64);
} sy_k_pairs SEC(".maps");

/* sy_k_peers: the sockets of sy_k_pairs at the same slots, in a map with no
 * program, which the program redirects through. Userspace puts both sockets
 * of a pair here before either enters sy_k_pairs (which gives a socket the
 * program), so the program never runs for a socket whose peer it cannot
 * find: data that arrived between the two inserts into sy_k_pairs would
 * otherwise have had nowhere to go in the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2 * SY_K_MAX_PAIRS);
	__type(key, __u32);
	__type(value, __u64);
} sy_k_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SY_K_MAX_PAIRS);
	__type(key, __u32);
	__type(value, struct sy_k_dir);
} sy_k_dirs SEC(".maps");

/* sy_k_force[slot]: nonzero when userspace has taken the direction over
 * (data readable on the source that the program never saw; not what
 * arrived before the pair entered the sockmap: userspace has the kernel
 * run the program over that as the pair starts). Only userspace writes it
 * and only the program writes sy_k_dirs once the pair runs, so neither
 * overwrites what the other counts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SY_K_MAX_PAIRS);
	__type(key, __u32);
	__type(value, __u32);
} sy_k_force SEC(".maps");

/* sy_k_cookies: socket cookie -> slot in sy_k_pairs. Entries are made as
 * pairs start, so they are not preallocated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 2 * SY_K_MAX_PAIRS);
	__type(key, __u64);
	__type(value, __u32);
} sy_k_cookies SEC(".maps");

/* What one socket of a pair receives goes to the other's send path. The
 * kernel queues redirected data without limit when the destination is
 * slower than the source, so the program keeps count: once more than limit
 * bytes sit between redirect and the destination's send queue, the
 * direction falls back to userspace for good. From then on data stays in
 * the source's receive queue, which is bounded and closes the TCP window,
 * and userspace moves it once the kernel's queue has drained. */
SEC("sk_skb/stream_verdict")
int sy_k_splice(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct tcp_sock *tp;
	struct sy_k_counts *s;
	struct bpf_sock *peer;
	struct sy_k_dir *d;
	struct sy_k_cfg *cfg;
	__u32 *slot, *force, pslot, zero = 0, written, backlog, limit;
	__u32 len = skb->len;

	/* A bare FIN: the socket has recorded it already, and userspace sends
	 * it on after the data. Redirected, it would make the peer's send
	 * fail once userspace has shut that down (EPIPE on the peer). */
	if (len == 0)
		return SK_DROP;
	slot = bpf_map_lookup_elem(&sy_k_cookies, &cookie);
	if (!slot)
		return SK_PASS;
	d = bpf_map_lookup_elem(&sy_k_dirs, slot);
	if (!d || d->mode != SY_K_KERNEL)
		return SK_PASS;
	force = bpf_map_lookup_elem(&sy_k_force, slot);
	if (force && *force)
		goto user;
	cfg = bpf_map_lookup_elem(&sy_k_config, &zero);
	limit = cfg ? cfg->limit : 0;

	pslot = *slot ^ 1;
	peer = bpf_map_lookup_elem(&sy_k_peers, &pslot);
	if (!peer)
		goto user;
	tp = bpf_skc_to_tcp_sock(peer);
	if (!tp) {
		bpf_sk_release(peer);
		goto user;
	}
	if (!d->based) {
		d->base_seq = tp->write_seq;
		d->based = 1;
	}
	written = tp->write_seq - d->base_seq;
	bpf_sk_release(peer);

	backlog = (__u32)d->redirected - written;
	if ((__u64)backlog + len > limit)
		goto user;
	if (bpf_sk_redirect_map(skb, &sy_k_peers, pslot, 0) != SK_PASS)
		goto user;
	d->redirected += len;
	if ((__u64)backlog + len > d->max_backlog)
		d->max_backlog = (__u64)backlog + len;
	s = bpf_map_lookup_elem(&sy_k_stats, &d->label);
	if (s) {
		s->bytes += len;
		s->messages++;
	}
	return SK_PASS;
user:
	d->mode = SY_K_USER;
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
