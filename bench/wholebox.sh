#!/usr/bin/env bash
# wholebox.sh -- the whole-box run: many `switchboard serve` processes on one
# WebSocket port (--reuse-port) sharing one loopback redis-server, and the
# load generator holding CONNS connections to them from 127.0.0.x; then one
# broadcast to every connection, timed to the last delivery. As root it
# applies the kernel profile (sysctl/99-switchboard.conf) for the run and
# puts the previous values back when it exits, also on failure or Ctrl-C
# (bench/lib.sh; KEEP_SYSCTL=1 leaves the profile applied).
#
# One process holds at most ~19,900 sockets here (RLIMIT_NOFILE 20,000 that
# cannot be raised), so the node count follows from CONNS. Everything binds
# loopback and stops by itself; every process started is killed on exit.
#
# Usage: bench/wholebox.sh            (CONNS=1000000 by default)
# Environment: CONNS, PER_NODE (connections one node may hold, default
# 18,000), RATE (connects/s, default 8,000), HOLD (default 30s), PORT
# (default 29505), OUT (summary file, default bench/results/wholebox-<time>.json).
set -euo pipefail
cd "$(dirname "$0")/.."

conns=${CONNS:-1000000}
per_node=${PER_NODE:-18000}
rate=${RATE:-8000}
hold=${HOLD:-30s}
port=${PORT:-29505}
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${OUT:-bench/results/wholebox-$stamp.json}

command -v redis-server >/dev/null || { echo "wholebox: redis-server is needed (apt-get install -y redis-server)" >&2; exit 2; }
[ -x bin/switchboard ] || { echo "wholebox: run make build first" >&2; exit 2; }

# Enough nodes that the kernel's uneven SO_REUSEPORT spread stays under
# each node's --max-conns.
nodes=$(( (conns + per_node - 1) / per_node ))
max_conns=$(( $(ulimit -n) - 200 ))

. bench/lib.sh
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
sb_on_exit cleanup

sb_apply_profile "bench/results/wholebox-$stamp-sysctl-before.conf"

# The first free port from PORT+1 on (see the admin ports below).
for redis_port in $(seq $((port + 1)) $((port + 50))); do
	redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
	rpid=$!
	sleep 0.3
	if kill -0 "$rpid" 2>/dev/null && redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
		pids+=("$rpid")
		break
	fi
done

echo "wholebox: $nodes nodes on 127.0.0.1:$port, $conns connections at $rate/s" >&2
server_pids=()
admins=()
logdir=$(mktemp -d)
# Admin ports are picked by the kernel (127.0.0.1:0) and read back from each
# node's "serving" log line: with the profile's wide ephemeral port range,
# any fixed port may already be someone's source port.
for i in $(seq 0 $((nodes - 1))); do
	bin/switchboard serve --listen "127.0.0.1:$port" --reuse-port \
		--admin-listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$redis_port" \
		--connects-per-ip -1 --max-conns "$max_conns" --log-level info --log-format json 2>"$logdir/node-$i.log" &
	pids+=($!)
	server_pids+=($!)
done
for i in $(seq 0 $((nodes - 1))); do
	admin=""
	for _ in $(seq 200); do
		admin=$(grep -o '"admin":"[^"]*"' "$logdir/node-$i.log" 2>/dev/null | head -n 1 | cut -d'"' -f4 || true)
		[ -n "$admin" ] && break
		sleep 0.05
	done
	[ -n "$admin" ] || { echo "wholebox: node $i did not start:" >&2; cat "$logdir/node-$i.log" >&2; exit 1; }
	admins+=("$admin")
	for _ in $(seq 100); do
		curl -fs "http://$admin/readyz" >/dev/null && break
		sleep 0.1
	done
done

pid_list=$(IFS=,; echo "${server_pids[*]}")
bin/switchboard bench --url "ws://127.0.0.1:$port/v1/realtime?project=bench&channels[]=files" \
	--conns "$conns" --rate "$rate" --hold "$hold" --connect-timeout 60s \
	--publish-url "http://${admins[0]}/v1/publish" --events 1 --publish-rate 1 --drain 60s \
	--server-pid "$pid_list" >"$out"
echo "wholebox: summary in $out" >&2
cat "$out"
