#!/usr/bin/env bash
# run.sh -- the loopback Tsung scenario against a local node (make bench-tsung).
#
# Applies the kernel profile (and puts the previous values back on exit,
# also on failure or Ctrl-C, since development hosts are shared; see
# bench/lib.sh), starts bin/switchboard on loopback, runs
# bench/tsung/loopback.xml with the knobs below, builds Tsung's HTML
# report with tsung_stats.pl, stops the node and prints a summary: the peak
# of Tsung's "connected" gauge (open WebSocket connections) and the node's
# own switchboard_connections and resident memory at that peak.
#
# Knobs (environment): TSUNG_USERS (18000), TSUNG_RATE (1000 users/s),
# TSUNG_HOLD (60 s each user stays connected), TSUNG_PORT (9505),
# TSUNG_ADMIN_PORT (9506), TSUNG_LOG (bench/tsung/log), KEEP_SYSCTL=1 to
# leave the profile applied, SWITCHBOARD (bin/switchboard).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
users=${TSUNG_USERS:-18000}
rate=${TSUNG_RATE:-1000}
hold=${TSUNG_HOLD:-60}
port=${TSUNG_PORT:-9505}
admin=${TSUNG_ADMIN_PORT:-9506}
logroot=${TSUNG_LOG:-bench/tsung/log}
bin=${SWITCHBOARD:-bin/switchboard}
stats_pl=""
for p in /usr/lib/x86_64-linux-gnu/tsung/bin/tsung_stats.pl /usr/lib/tsung/bin/tsung_stats.pl "$(command -v tsung_stats.pl || true)"; do
	if [ -n "$p" ] && [ -x "$p" ]; then stats_pl=$p; break; fi
done

command -v tsung >/dev/null || { echo "run.sh: tsung is not installed (Debian/Ubuntu: apt-get install tsung)" >&2; exit 1; }
[ -x "$bin" ] || { echo "run.sh: $bin not built (make build)" >&2; exit 1; }
for n in "$users" "$rate" "$hold" "$port" "$admin"; do
	[[ $n =~ ^[0-9]+$ ]] || { echo "run.sh: not a number: $n" >&2; exit 2; }
done

# The node is one process: it cannot hold more connections than its
# descriptor limit, whatever Tsung offers. Say so up front.
nofile=$(ulimit -Hn)
if [ "$nofile" != unlimited ] && [ "$users" -ge "$nofile" ]; then
	echo "run.sh: warning: $users users but RLIMIT_NOFILE is $nofile: the node will refuse connections past it" >&2
fi

mkdir -p "$logroot"
logroot=$(cd "$logroot" && pwd)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
work="$logroot/run-$stamp"
mkdir -p "$work"

. bench/lib.sh
node_pid="" sampler_pid=""
cleanup() {
	if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
	if [ -n "$node_pid" ]; then
		kill -TERM "$node_pid" 2>/dev/null || true
		wait "$node_pid" 2>/dev/null || true
	fi
}
sb_on_exit cleanup

echo "== kernel profile (restored on exit unless KEEP_SYSCTL=1)"
sb_apply_profile "$work/sysctl-before.conf"

echo "== node on 127.0.0.1:$port (admin $admin)"
# connects-per-ip -1: every Tsung user comes from eight 127.0.0.x addresses,
# which the default per-IP limit (128 a minute) would refuse.
"$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
	--connects-per-ip -1 --log-level warn --log-format json >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 50); do
	curl -fsS "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break
	kill -0 "$node_pid" 2>/dev/null || { echo "run.sh: node exited:" >&2; cat "$work/node.log" >&2; exit 1; }
	sleep 0.2
done

# One sample a second of the node's own view: connections and RSS.
(
	while sleep 1; do
		m=$(curl -fsS "http://127.0.0.1:$admin/metrics" 2>/dev/null) || continue
		c=$(awk '/^switchboard_connections /{print $2}' <<<"$m")
		r=$(awk '/^process_resident_memory_bytes /{printf "%.0f", $2}' <<<"$m")
		echo "$(date +%s) ${c:-0} ${r:-0}"
	done
) >"$work/node-samples.txt" &
sampler_pid=$!

sed -e "s/ENTITY users \"[0-9]*\"/ENTITY users \"$users\"/" \
	-e "s/ENTITY rate \"[0-9]*\"/ENTITY rate \"$rate\"/" \
	-e "s/ENTITY hold \"[0-9]*\"/ENTITY hold \"$hold\"/" \
	-e "s/ENTITY port \"[0-9]*\"/ENTITY port \"$port\"/" \
	bench/tsung/loopback.xml >"$work/loopback.xml"

echo "== tsung: $users users at $rate/s, each held ${hold}s"
tsung -n -r "$PWD/bench/tsung/local-rsh.sh" -f "$work/loopback.xml" -l "$work" start | tee "$work/tsung.out"
tsdir=$(sed -n 's/^Log directory is: //p' "$work/tsung.out" | tail -1)
[ -d "$tsdir" ] || { echo "run.sh: no Tsung log directory found" >&2; exit 1; }

if [ -n "$stats_pl" ]; then
	echo "== report: $tsdir/report.html"
	(cd "$tsdir" && "$stats_pl" >stats_pl.out 2>&1) || echo "run.sh: tsung_stats.pl failed, see $tsdir/stats_pl.out" >&2
else
	echo "run.sh: tsung_stats.pl not found: no HTML report (tsung.log has the figures)" >&2
fi

# tsung.log: "stats: NAME <this interval> <total so far>"; for the gauges
# users and connected the second number is the current value.
peak() { awk -v k="$1" '$1=="stats:" && $2==k && $4+0>m {m=$4+0} END{print m+0}' "$tsdir/tsung.log"; }
total() { awk -v k="$1" '$1=="stats:" && $2==k {t=$NF} END{print t+0}' "$tsdir/tsung.log"; }
read -r node_peak node_rss < <(sort -k2,2n "$work/node-samples.txt" | tail -1 | awk '{print $2, $3}')
node_peak=${node_peak:-0} node_rss=${node_rss:-0}
# RSS before the first connection: the growth over it, per connection, is
# a rough density figure (it includes GC slack; make bench measures properly).
node_rss0=$(awk 'NR==1{print $3}' "$work/node-samples.txt")
node_rss0=${node_rss0:-0}
{
	echo "users offered        $users ($rate/s, hold ${hold}s)"
	echo "tsung connected peak $(peak connected)"
	echo "tsung users peak     $(peak users)"
	echo "websocket upgrades   $(total websocket_succ) ok, $(total websocket_fail) failed"
	awk '$1=="stats:" && $2 ~ /^error_/ {print $2}' "$tsdir/tsung.log" | sort -u | while read -r e; do
		echo "tsung $e $(total "$e")"
	done
	echo "node connections peak $node_peak"
	echo "node RSS at that peak $((node_rss / 1048576)) MiB (idle node: $((node_rss0 / 1048576)) MiB)"
	if [ "$node_peak" -gt 0 ]; then
		echo "node RSS growth/conn $(((node_rss - node_rss0) / node_peak)) bytes"
	fi
	echo "report               $tsdir/report.html"
} | tee "$work/summary.txt"
