#!/usr/bin/env bash
# make stress-test: `make test-go` (the README's test command without its
# npm and vet steps) COUNT times in a row, with LOAD processes spinning on
# the CPU throughout (LOAD=2 takes both cores of a 2-core box), to shake
# out tests that pass only on a quiet machine. Every run goes on whatever
# the one before did; each run's report is kept, and the end prints which
# runs and tests failed and the tally.
set -uo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-10}
LOAD=${LOAD:-0}
GO=${GO:-go}
TEST_TIMEOUT=${TEST_TIMEOUT:-5m}
out=${STRESS_DIR:-${TMPDIR:-/tmp}/switchboard-stress-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

burners=()
stop_burners() {
  for p in "${burners[@]}"; do kill "$p" 2>/dev/null; done
  wait "${burners[@]}" 2>/dev/null
  burners=()
}
trap 'stop_burners; exit 130' INT TERM
trap stop_burners EXIT
for ((i = 0; i < LOAD; i++)); do
  # A busy loop in the shell itself: no package to install, and nothing
  # that outlives this script (the EXIT trap kills it).
  ( while :; do :; done ) &
  burners+=($!)
done

echo "stress: $COUNT runs with $LOAD CPU burner(s); reports in $out"
uptime
green=0
failed_runs=()
for ((run = 1; run <= COUNT; run++)); do
  start=$(date +%s)
  log="$out/run-$run.txt"
  make --no-print-directory test-go GO="$GO" TEST_TIMEOUT="$TEST_TIMEOUT" >"$log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  count=$(grep -m1 '^tests: ' "$log" || echo "no test count")
  if [ $rc -eq 0 ]; then
    green=$((green + 1))
    echo "run $run: green in ${took}s ($count)"
  else
    failed_runs+=("$run")
    echo "run $run: FAILED in ${took}s ($count); failing tests and packages:"
    grep -E '^(--- FAIL|FAIL|panic: test timed out)' "$log" | sed 's/^/    /' | sort -u
  fi
done
uptime
echo "stress: $green of $COUNT runs green with LOAD=$LOAD${failed_runs:+; failed: ${failed_runs[*]}}"
[ "$green" -eq "$COUNT" ]
