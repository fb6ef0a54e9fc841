#!/usr/bin/env bash
# ab.sh -- `make bench-ab`: two variants of the node, A and B, in
# interleaved runs (the order swapped each round), so that a difference of
# a few percent, or of tens of bytes per connection, shows through this
# machine's run-to-run noise.
#
# A variant is a server binary and the fraction of clients that offer
# permessage-deflate: A="bin/switchboard 0" B="bin/switchboard 1" (the
# default) compares plain with compressing clients on one build;
# A=/tmp/old/switchboard B=bin/switchboard compares two builds.
#
# RUN=idle (default): CONNS (19,000) idle connections held 5 s; the figure
# is the node's RSS per connection. RUN=sustained: make bench's sustained
# run -- CONNS connections, 250 broadcasts at RATE/s (default 25) with
# PAYLOAD bytes each (default 0: ~40 bytes; 2048 is a 2 KB document); the
# figure is the node's CPU per delivery, and every run must deliver
# everything (2 KB events to 19,000 connections at 25/s are more than the
# node and the generator deliver together on a 2-core box: lower RATE).
# Each run starts a fresh `serve` on PORT (default 29505), with
# `bin/switchboard bench` as the load, ROUNDS (default 8) rounds. Raw
# summaries in bench/results/<time>-ab-RUN/. As root it applies the kernel
# profile for the run and puts the previous values back on exit
# (bench/lib.sh), like make bench.
set -euo pipefail
cd "$(dirname "$0")/.."

run=${RUN:-idle}
conns=${CONNS:-19000}
rounds=${ROUNDS:-8}
payload=${PAYLOAD:-0}
rate=${RATE:-25}
port=${PORT:-29505}
admin=$((port + 1))
read -r a_bin a_z <<<"${A:-bin/switchboard 0}"
read -r b_bin b_z <<<"${B:-bin/switchboard 1}"
dir=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-ab-$run
mkdir -p "$dir"
case $run in
idle) load=(--hold 5s) ;;
sustained) load=(--hold 1s --publish-url "http://127.0.0.1:$admin/v1/publish" --events 250 --publish-rate "$rate" --payload-bytes "$payload") ;;
*)
	echo "RUN is idle or sustained" >&2
	exit 2
	;;
esac

# shellcheck source=bench/lib.sh
. bench/lib.sh

server=""
cleanup() {
	[ -z "$server" ] || kill -9 "$server" 2>/dev/null || true
	wait 2>/dev/null || true
}
sb_on_exit cleanup
sb_apply_profile "$dir/sysctl-before.conf"

# once NAME BIN COMPRESSING: one run; its figure goes to $dir/NAME.figure.
# (Not run in a subshell, so that cleanup knows the server to stop.)
once() {
	local name=$1 bin=$2 z=$3
	sb_start_server "$admin" "$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
		--connects-per-ip -1 --log-level warn
	server=$sb_server
	bin/switchboard bench --url "ws://127.0.0.1:$port/v1/realtime?project=bench&channels[]=files" \
		--server-pid "$server" --conns "$conns" --rate 5000 --compressing "$z" "${load[@]}" \
		2>"$dir/$name.progress" >"$dir/$name.json"
	curl -s "http://127.0.0.1:$admin/metrics" >"$dir/$name.metrics"
	kill -9 "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	server=""
	sleep 1
	# Every connection must have been held (and, sustained, every event
	# delivered), and exactly the compressing share must have negotiated
	# permessage-deflate, or the figure is void.
	python3 - "$dir/$name" "$conns" "$z" "$run" >"$dir/$name.figure" <<'PY'
import json, re, sys
name, conns, z, run = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = json.load(open(name + ".json"))
c = s["counters"]
m = re.search(r"^switchboard_deflate_upgrades_total (\S+)", open(name + ".metrics").read(), re.M)
deflated = int(float(m.group(1))) if m else 0
if c["ever_ready"] != conns or c["failed"] or c["dropped"]:
    sys.exit(f"{name}: {c['ever_ready']} of {conns} connections ready, {c['failed']} failed, {c['dropped']} dropped")
if deflated != round(z * conns):
    sys.exit(f"{name}: {deflated} connections negotiated compression, want {round(z * conns)}")
if run == "idle":
    print("%.0f" % s["servers"][0]["rss_per_conn"])
else:
    ev = s["events"]
    if ev["completeness"] != 1 or ev["duplicates"]:
        sys.exit(f"{name}: completeness {ev['completeness']}, {ev['duplicates']} duplicates")
    print("%.0f" % (s["servers"][0]["cpu_seconds"] * 1e9 / ev["received"]))
PY
}

unit="B/conn (node RSS)"
[ "$run" = idle ] || unit="ns/delivery (node CPU)"
echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); RUN=$run, $conns connections, payload $payload, rate $rate"
echo "A: $a_bin, compressing $a_z   B: $b_bin, compressing $b_z   figures in $unit"
for r in $(seq "$rounds"); do
	if [ $((r % 2)) = 1 ]; then
		once "a-$r" "$a_bin" "$a_z"
		once "b-$r" "$b_bin" "$b_z"
	else
		once "b-$r" "$b_bin" "$b_z"
		once "a-$r" "$a_bin" "$a_z"
	fi
	a=$(<"$dir/a-$r.figure")
	b=$(<"$dir/b-$r.figure")
	echo "round $r: A $a, B $b" | tee -a "$dir/rounds.txt"
done
python3 - "$dir/rounds.txt" <<'PY' | tee -a "$dir/rounds.txt"
import re, statistics as st, sys
rows = [tuple(map(int, re.findall(r"\d+", l)[1:3])) for l in open(sys.argv[1]) if l.startswith("round")]
a, b = [x for x, _ in rows], [y for _, y in rows]
d = [y - x for x, y in rows]
se = st.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
print(f"median A {st.median(a)}, median B {st.median(b)}; B-A per round: median {st.median(d)}, mean {st.mean(d):.1f} ± {se:.1f} (standard error); "
      f"A/B: of medians {st.median(a) / st.median(b):.3f}, median of rounds {st.median(x / y for x, y in rows):.3f}; n={len(d)}")
PY
echo "raw summaries in $dir"
