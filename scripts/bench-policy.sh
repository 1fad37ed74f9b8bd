#!/bin/sh
# Benchmarks of switchyard's connection policies (internal/policy): sockperf
# ping-pong latency with and without bypass, iperf3 throughput with and
# without bypass, iperf3 through the splice proxy with each engine
# (userspace, and kernel with the share of bytes the kernel moved) against
# socat and a direct connection, and the wakeup floor of a ping-pong that
# sleeps. Prints
# `name value unit` medians over COUNT runs, then ratios measured in the
# same run.
#
# Needs: root, Linux with cgroup v2, go, and the Debian packages sockperf,
# iperf3 and socat (apt-get install -y sockperf iperf3 socat). The busy
# polling cases turn it on for sockperf's sockets only (--lls); they never
# touch the host's sysctls.
#
# Environment: COUNT (runs, default 3), SECONDS_PER_RUN (each tool's run,
# default 4), BENCH (benchmark regexp, default all), GO (default go).
set -eu
GO=${GO:-go}
COUNT=${COUNT:-3}
BENCH=${BENCH:-'BypassPingPong|WakeupFloor|BypassThroughput|SpliceThroughput'}
for tool in sockperf iperf3 socat; do
	command -v "$tool" >/dev/null || { echo "bench-policy: $tool missing: apt-get install -y $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-policy: run as root (namespaces, bpffs, cgroups)" >&2; exit 1; }
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
SY_BENCH_SECONDS=${SECONDS_PER_RUN:-4} $GO test -run '^$' -bench "$BENCH" -benchtime 1x -count "$COUNT" -timeout 60m ./internal/policy/ >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
grep -E '^(--- FAIL|FAIL|panic)' "$out" >&2 && { cat "$out" >&2; exit 1; } || true

awk '
function median(key,   n, i, j, t, a) {
	n = cnt[key]
	for (i = 1; i <= n; i++) a[i] = val[key, i]
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}
function ratio(name, num, den, unit,   a, b) {
	a = num SUBSEP unit; b = den SUBSEP unit
	if (!(a in cnt) || !(b in cnt) || median(b) == 0) return
	printf "%s %.3f ratio\n", name, median(a) / median(b)
}
/^Benchmark/ {
	name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
	for (i = 3; i + 1 <= NF; i += 2) {
		if ($(i + 1) == "ns/op") continue
		key = name SUBSEP $(i + 1)
		if (!(key in cnt)) order[++norder] = key
		val[key, ++cnt[key]] = $i
	}
}
END {
	for (k = 1; k <= norder; k++) {
		split(order[k], p, SUBSEP)
		printf "%s %s %s\n", p[1], median(order[k]), p[2]
	}
	split("unpinned samecpu crosscpu", cpus, " ")
	split("false true", busys, " ")
	for (c = 1; c <= 3; c++) for (b = 1; b <= 2; b++) {
		base = "BypassPingPong/bypass=false/cpu=" cpus[c] "/busypoll=" busys[b]
		with = "BypassPingPong/bypass=true/cpu=" cpus[c] "/busypoll=" busys[b]
		tag = "pingpong_" cpus[c] "_busypoll_" busys[b]
		ratio(tag "_p50_bypass_vs_normal", with, base, "p50_us")
		ratio(tag "_p99_bypass_vs_normal", with, base, "p99_us")
		ratio(tag "_p99.9_bypass_vs_normal", with, base, "p99.9_us")
	}
	# How close each path is to a pipe ping-pong that sleeps the same way
	# (BenchmarkWakeupFloor): across CPUs on a VM the wakeup is most of it.
	for (c = 2; c <= 3; c++) for (v = 1; v <= 2; v++) {
		path = v == 1 ? "normal" : "bypass"
		ratio("pingpong_" cpus[c] "_" path "_p50_vs_wakeup_floor", "BypassPingPong/bypass=" (v == 2 ? "true" : "false") "/cpu=" cpus[c] "/busypoll=false", "WakeupFloor/cpu=" cpus[c], "p50_us")
	}
	ratio("iperf3_bypass_vs_normal", "BypassThroughput/bypass=true", "BypassThroughput/bypass=false", "Gbit/s")
	ratio("iperf3_bypass_vs_normal_cpu_per_byte", "BypassThroughput/bypass=true", "BypassThroughput/bypass=false", "core_s/GB")
	ratio("splice_userspace_vs_socat", "SpliceThroughput/via=proxy=userspace", "SpliceThroughput/via=socat", "Gbit/s")
	ratio("splice_kernel_vs_socat", "SpliceThroughput/via=proxy=kernel", "SpliceThroughput/via=socat", "Gbit/s")
	ratio("splice_userspace_vs_direct", "SpliceThroughput/via=proxy=userspace", "SpliceThroughput/via=direct", "Gbit/s")
	ratio("splice_kernel_vs_direct", "SpliceThroughput/via=proxy=kernel", "SpliceThroughput/via=direct", "Gbit/s")
	ratio("splice_kernel_vs_userspace", "SpliceThroughput/via=proxy=kernel", "SpliceThroughput/via=proxy=userspace", "Gbit/s")
	ratio("splice_kernel_vs_userspace_at_1G", "SpliceThroughput/via=proxy=kernel,rate=1G", "SpliceThroughput/via=proxy=userspace,rate=1G", "Gbit/s")
	ratio("splice_kernel_vs_userspace_at_1G_cpu_per_byte", "SpliceThroughput/via=proxy=kernel,rate=1G", "SpliceThroughput/via=proxy=userspace,rate=1G", "core_s/GB")
	ratio("splice_userspace_vs_socat_cpu_per_byte", "SpliceThroughput/via=proxy=userspace", "SpliceThroughput/via=socat", "core_s/GB")
	ratio("splice_kernel_vs_socat_cpu_per_byte", "SpliceThroughput/via=proxy=kernel", "SpliceThroughput/via=socat", "core_s/GB")
}' "$out"
