#!/usr/bin/env bash
# run.sh -- `make bench`: density at two connection counts, connect rate and
# fan-out latency, for Switchboard and for the goroutine-per-connection
# baseline in the same run; one table on stdout, the raw summaries and a
# self-contained HTML chart in bench/results/.
#
# Everything is on loopback and stops by itself. Environment: LOW (default
# 5,000) and HIGH (default 19,000) connection counts, EVENTS (broadcasts,
# default 100) at EVENT_RATE per second (default 5) for the time to the last
# delivery, SUSTAINED_EVENTS (default 250) at SUSTAINED_RATE per second
# (default 25) for the deliveries per second one node keeps up with, with
# SUSTAINED_PAYLOAD bytes per event (default 0: ~40-byte payloads) and the
# SUSTAINED_COMPRESSING fraction of clients offering permessage-deflate
# (default 0; COMPRESSION.md: SUSTAINED_PAYLOAD=2048 SUSTAINED_COMPRESSING=0.5
# is the sustained run with 2 KB documents and half the clients compressing),
# PORT (default 29505). As root it applies the kernel profile for the run and
# puts the previous values back when it exits, also on failure or Ctrl-C
# (bench/lib.sh; KEEP_SYSCTL=1 leaves the profile applied).
#
# While it runs, the node under test's dashboard (GET / on its admin port)
# is the live view; its URL is printed first. Every run starts a fresh node
# on the same ports and the open page reconnects to it by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

low=${LOW:-5000}
high=${HIGH:-19000}
events=${EVENTS:-100}
event_rate=${EVENT_RATE:-5}
sustained_events=${SUSTAINED_EVENTS:-250}
sustained_rate=${SUSTAINED_RATE:-25}
sustained_payload=${SUSTAINED_PAYLOAD:-0}
sustained_compressing=${SUSTAINED_COMPRESSING:-0}
port=${PORT:-29505}
admin=$((port + 1))
stamp=$(date -u +%Y%m%dT%H%M%SZ)
dir=bench/results/$stamp
mkdir -p "$dir"

. bench/lib.sh

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
sb_on_exit cleanup

echo "== live view: http://127.0.0.1:$admin/ (the dashboard of the Switchboard node under test; the baseline runs have none)"
echo "== kernel profile (sysctl/apply.sh; changes nothing unless root; put back on exit)"
sb_apply_profile "$dir/sysctl-before.conf"

# start_server KIND: starts Switchboard or the baseline on PORT; sets $server.
start_server() {
	case $1 in
	switchboard)
		sb_start_server "$admin" bin/switchboard serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
			--connects-per-ip -1 --log-level warn
		;;
	baseline)
		sb_start_server "$admin" bin/baseline --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin"
		;;
	esac
	server=$sb_server
	pids+=("$server")
}

stop_server() {
	kill -9 "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	sleep 1 # let the port's sockets go
}

# sample NAME: one line per 0.5 s of the server's RSS while the run lasts.
sample() {
	local name=$1
	while kill -0 "$server" 2>/dev/null; do
		rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$server/status" 2>/dev/null || echo 0)
		open=$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)
		echo "$name $(date +%s.%N) $rss $open"
		sleep 0.5
	done >>"$dir/samples.txt"
}

# run NAME KIND ARGS...: one bench run against a fresh server.
run() {
	local name=$1 kind=$2
	shift 2
	start_server "$kind"
	sample "$name" &
	local sampler=$!
	echo "== $name: switchboard bench $*" >&2
	bin/switchboard bench --url "ws://127.0.0.1:$port/v1/realtime?project=bench&channels[]=files" \
		--server-pid "$server" "$@" 2>"$dir/$name.progress" >"$dir/$name.json"
	stop_server
	wait "$sampler" 2>/dev/null || true
}

for kind in switchboard baseline; do
	run "$kind-idle-$low" "$kind" --conns "$low" --rate 5000 --hold 5s
	run "$kind-idle-$high" "$kind" --conns "$high" --rate 5000 --hold 5s
	run "$kind-connect" "$kind" --conns "$high" --rate 0 --hold 1s
	run "$kind-fanout" "$kind" --conns "$high" --rate 5000 --hold 1s \
		--publish-url "http://127.0.0.1:$admin/v1/publish" --events "$events" --publish-rate "$event_rate"
	run "$kind-sustained" "$kind" --conns "$high" --rate 5000 --hold 1s \
		--publish-url "http://127.0.0.1:$admin/v1/publish" --events "$sustained_events" --publish-rate "$sustained_rate" \
		--payload-bytes "$sustained_payload" --compressing "$sustained_compressing"
done

{
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(go version | cut -d' ' -f3-4), load $(cut -d' ' -f1-3 /proc/loadavg)"
	go run ./bench/chart --dir "$dir" --low "$low" --high "$high"
} | tee "$dir/table.txt"
echo "raw summaries, samples and chart.html in $dir"
