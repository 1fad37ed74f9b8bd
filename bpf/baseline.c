// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* The cheapest possible sk_lookup program. Benchmarks run it beside
 * sy_dispatch to express the dispatch cost as a ratio. */

#include "sy_helpers.h"

SEC("sk_lookup")
int sy_baseline(struct bpf_sk_lookup *ctx)
{
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
