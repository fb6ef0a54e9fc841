#!/usr/bin/env bash
# slow.sh -- healthy clients beside non-reading ones (make bench-slow).
#
# Runs the same load twice against a fresh local node each time: first
# with no stalled connection (the control), then with SLOW_STALLED of the
# SLOW_CONNS connections not reading after `connected`. Each run publishes
# SLOW_RATE events/s of ~SLOW_PAYLOAD bytes for SLOW_SECONDS. It prints,
# per run, the node's RSS before the connections, at full count (before
# the events), its peak and at the end of the events, the healthy
# connections' completeness and delivery latency, how many stalled
# connections the node closed (the generator's count and the node's
# switchboard_slow_consumer_closes_total from /metrics), and keeps each
# run's JSON summary, node log and metrics under SLOW_OUT/run-<time>/.
#
# Why these defaults: 11,000 connections x 5 events/s = 55,000 deliveries/s
# of ~3.3 KB, which the 2-core development VM sustains (20 events/s of
# 1 KB, 220,000/s, saturated it: healthy latency grew to tens of seconds
# with or without stalled connections, see bench/RESULTS.md). A socket
# that is not read first fills the kernel buffers, and only then the
# node's queue: the node's send buffer grows to tcp_wmem's maximum (1 MiB
# truesize on the VM, ~0.6 MB of payload; 4 MiB stock), so at ~16 KB/s a
# stalled connection overflows a 256 KiB queue after about a minute, and
# 90 s leave time to see the node after the closes. With the default
# 1 MiB queue it would take two minutes on the VM.
# A one-second sample of the node's RSS and of the kernel's TCP memory
# (/proc/net/sockstat "mem", pages) goes to RUN/NAME-samples.txt, so the
# moment the node closes the stalled connections shows.
#
# Knobs (environment): SLOW_CONNS (11000), SLOW_STALLED (1000),
# SLOW_RATE (5 events/s), SLOW_SECONDS (90), SLOW_PAYLOAD (3072 bytes),
# SLOW_MAX_QUEUE (262144: the node's --max-queue-bytes), SLOW_CONNECT_RATE
# (2000 connections/s), SLOW_PORT (29705; the admin API on the next port),
# SLOW_OUT (bench/out/slow), SWITCHBOARD (bin/switchboard).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
conns=${SLOW_CONNS:-11000}
stalled=${SLOW_STALLED:-1000}
rate=${SLOW_RATE:-5}
seconds=${SLOW_SECONDS:-90}
payload=${SLOW_PAYLOAD:-3072}
maxq=${SLOW_MAX_QUEUE:-262144}
crate=${SLOW_CONNECT_RATE:-2000}
port=${SLOW_PORT:-29705}
admin=$((port + 1))
bin=${SWITCHBOARD:-bin/switchboard}
for n in "$conns" "$stalled" "$rate" "$seconds" "$payload" "$maxq" "$crate" "$port"; do
	[[ $n =~ ^[0-9]+$ ]] || { echo "slow.sh: not a number: $n" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "slow.sh: $bin not built (make build)" >&2; exit 1; }
command -v jq >/dev/null || { echo "slow.sh: needs jq" >&2; exit 1; }
command -v curl >/dev/null || { echo "slow.sh: needs curl" >&2; exit 1; }
out=${SLOW_OUT:-bench/out/slow}/run-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

node=""
stop_node() {
	# Only the node this script started, by its pid.
	if [ -n "$node" ] && kill -0 "$node" 2>/dev/null; then
		kill -TERM "$node" 2>/dev/null || true
		wait "$node" 2>/dev/null || true
	fi
	node=""
}
trap stop_node EXIT
trap 'exit 130' INT TERM

# one STALLED NAME: a fresh node, one bench run, the node's metrics.
one() {
	local n=$1 name=$2
	# The ephemeral port range may cover the chosen ports (the kernel
	# profile widens it to 1024-65535), so a port can be taken by some
	# outgoing connection for a while: try the next pair then.
	for _ in 1 2 3 4 5; do
		# --drain-time -1s: the node need not spread its goodbyes at the end.
		"$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
			--connects-per-ip -1 --max-queue-bytes "$maxq" --drain-time -1s \
			--log-level warn --log-format json >"$out/$name-node.log" 2>&1 &
		node=$!
		for _ in $(seq 100); do
			curl -fs "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break 2
			kill -0 "$node" 2>/dev/null || break
			sleep 0.1
		done
		stop_node
		grep -q "address already in use" "$out/$name-node.log" ||
			{ echo "slow.sh: node did not start, see $out/$name-node.log" >&2; exit 1; }
		echo "slow.sh: port $port or $admin is taken, trying $((port + 10))" >&2
		port=$((port + 10)) admin=$((admin + 10))
	done
	[ -n "$node" ] || { echo "slow.sh: no free port pair" >&2; exit 1; }
	(
		while kill -0 "$node" 2>/dev/null; do
			printf '%s %s %s\n' "$(date -u +%T)" \
				"$(awk '/^VmRSS:/{print $2 "kB"}' "/proc/$node/status" 2>/dev/null)" \
				"$(awk '/^TCP:/{print "tcp_mem_pages=" $NF}' /proc/net/sockstat)"
			sleep 1
		done
	) >"$out/$name-samples.txt" 2>/dev/null &
	echo "== $name: $conns connections, $n stalled, $rate events/s x ${seconds}s, payload $payload B, node --max-queue-bytes $maxq" >&2
	"$bin" bench --url "ws://127.0.0.1:$port/v1/realtime?project=bench&channels[]=files" \
		--conns "$conns" --stalled "$n" --rate "$crate" --hold 0s \
		--publish-url "http://127.0.0.1:$admin/v1/publish" \
		--events $((rate * seconds)) --publish-rate "$rate" --payload-bytes "$payload" \
		--drain 10s --close-timeout 10s --server-pid "$node" >"$out/$name.json" 2>"$out/$name-progress.log" ||
		{ tail -5 "$out/$name-progress.log" >&2; echo "slow.sh: bench failed" >&2; exit 1; }
	curl -fs "http://127.0.0.1:$admin/metrics" >"$out/$name-metrics.txt" || true
	stop_node
}

one 0 control
one "$stalled" stalled

# A table, one column per run.
row() { # LABEL JQ-EXPRESSION
	printf '%-44s %16s %16s\n' "$1" "$(jq -r "$2" "$out/control.json")" "$(jq -r "$2" "$out/stalled.json")"
}
mib='(. / 1048576 * 10 | round / 10 | tostring) + " MiB"'
tcpmem() { awk -F'tcp_mem_pages=' 'NF>1 && $2+0>m {m=$2+0} END{printf "%.1f MiB", m*4096/1048576}' "$out/$1-samples.txt"; }
slow() { awk '/^switchboard_slow_consumer_closes_total /{print $2; f=1} END{if(!f) print "n/a"}' "$out/$1-metrics.txt"; }
{
	echo "slow consumers: $conns connections, $rate events/s x ${seconds}s of ~$payload B, node --max-queue-bytes $maxq"
	echo "host: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(go version 2>/dev/null | cut -d' ' -f3)"
	printf '%-44s %16s %16s\n' "" control stalled
	row "stalled connections" '.stalled.conns // 0'
	row "open at full count" '.open_at_full'
	row "node RSS before connections" ".servers[0].rss_before | $mib"
	row "node RSS at full count (before events)" ".servers[0].rss_after | $mib"
	row "node RSS peak during events" ".servers[0].rss_peak | $mib"
	row "node RSS at the end of events" ".servers[0].rss_end | $mib"
	row "node CPU seconds" '.servers[0].cpu_seconds'
	row "events published / achieved rate" '"\(.events.published) / \(.events.publish_rate * 10 | round / 10)"'
	row "healthy completeness" '.events.completeness'
	row "healthy conns complete / missing" '"\(.events.conns_complete) / \(.events.conns_missing)"'
	row "healthy dropped / failed" '"\(.counters.dropped) / \(.counters.failed)"'
	row "healthy latency p50 ms" '.events.latency.p50_ms'
	row "healthy latency p99 ms" '.events.latency.p99_ms'
	row "healthy latency max ms" '.events.latency.max_ms'
	row "time to last delivery p99 ms" '.events.time_to_last_delivery.p99_ms'
	row "stalled closed by the node (generator)" '.stalled.closed_by_server // 0'
	row "stalled still open at the end" '.stalled.open_at_end // 0'
	printf '%-44s %16s %16s\n' "switchboard_slow_consumer_closes_total" "$(slow control)" "$(slow stalled)"
	printf '%-44s %16s %16s\n' "kernel TCP memory peak (all sockets)" "$(tcpmem control)" "$(tcpmem stalled)"
	echo "files: $out"
} | tee "$out/summary.txt"
