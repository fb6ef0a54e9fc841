GO ?= go
SHELL := /bin/bash # the fuzz loop reads PIPESTATUS

.PHONY: all build run test test-go stress-test soak storm resume-storm sdk-deps browser-deps bench bench-dashboard bench-go bench-index bench-tsung bench-slow bench-ab bench-baseline bench-wholebox fuzz clean

all: build

build:
	$(GO) build -o bin/switchboard ./cmd/switchboard

# Runs a node with the embedded broker: nothing else needs to be running.
run:
	$(GO) run ./cmd/switchboard serve

# The test command of the README and of .ci/run. The Appwrite SDK test
# needs Node; its packages are pinned in test/sdk/package-lock.json. The
# browser tests (internal/browsertest) also need Debian's chromium, and
# playwright-core, pinned in test/browser/package-lock.json.
#
# Each package's tests are bounded by TEST_TIMEOUT (pkg/server, the
# longest, takes about 1.5 minutes alone and 3 on a loaded box): a hang
# fails within minutes with the goroutine dump of where it hangs.
# internal/testreport prints each package's result, the whole output of a
# failed test, and the slowest tests. The second go test runs the
# shutdown-at-any-moment test at a production binary's speed, where it
# takes its 10,000 rounds in seconds (under -race it takes 1,000).
TEST_TIMEOUT ?= 5m
test: sdk-deps browser-deps
	$(GO) vet ./...
	@$(MAKE) --no-print-directory test-go

# The go tests alone, as make test runs them once and make stress-test
# COUNT times.
test-go:
	set -o pipefail; $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -json ./... | $(GO) run ./internal/testreport
	$(GO) test -count=1 -timeout 2m -run '^TestShutdownAtAnyMomentAfterStart$$' ./pkg/server/

# make test-go COUNT times (10) in a row with LOAD (0) processes
# spinning on the CPU throughout: flakes show up here before CI finds
# them. Prints each run's result and failing tests, and the tally; the
# reports stay in $TMPDIR/switchboard-stress-<time>/ (test/stress.sh).
# (COUNT's own default, 3, is the benchmarks' repeat count below.)
LOAD ?= 0
stress-test: sdk-deps browser-deps
	COUNT=$(if $(filter file undefined,$(origin COUNT)),10,$(COUNT)) LOAD=$(LOAD) TEST_TIMEOUT=$(TEST_TIMEOUT) GO=$(GO) test/stress.sh

# TestSoak for SOAKTIME: connection churn, steady publishes and random
# subscribe/unsubscribe against one node; fails on a missed, extra or
# duplicate event, or on goroutine/heap/connection growth. `make test` runs
# it for ~15 s. -race covers the test's own clients (2 cores suffice); the
# node under test is TestMain's plain build, so its memory figures are
# those of a production binary.
SOAKTIME ?= 10m
soak:
	SWITCHBOARD_SOAK=$(SOAKTIME) $(GO) test -race -count=1 -run '^TestSoak$$' -v -timeout 0 ./cmd/switchboard/

# The issue-23 storm at full size: 5,000 connections of 50 users
# reconnecting at once under --auth appwrite (the stand-in 20 ms, then
# 500 ms late); logs another project's event latency idle and during it.
# ~15 s under -race, and 10,000 sockets in one process: not in make test.
storm:
	SWITCHBOARD_STORM=1 $(GO) test -race -count=1 -run '^TestAppwriteAuthStormFullSize$$' -v -timeout 5m ./pkg/server/

# Issue 24's resume storm at full size: 19,000 connections over two nodes
# on a real redis-server, 25 events/s straight to Redis, node 0 drained
# (SIGTERM); every connection must keep every event exactly once, in
# order. Logs the time until every connection is live again, the replay
# rate and the nodes' CPU during the storm (cmd/switchboard/
# resume_storm_test.go). About 1-2 minutes; the 200-connection version
# (TestResumeStorm) runs in make test.
resume-storm:
	SWITCHBOARD_RESUME_STORM=1 $(GO) test -count=1 -run '^TestResumeStormFullSize$$' -v -timeout 6m ./cmd/switchboard/

sdk-deps:
	@if command -v npm >/dev/null; then npm ci --prefix test/sdk --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Appwrite SDK test will be skipped"; fi

browser-deps:
	@if command -v npm >/dev/null; then npm ci --prefix test/browser --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the browser tests will be skipped"; fi

# Go micro-benchmarks (index lookup, encode-once fan-out, frame codec).
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

# Tsung's loopback scenario against a local node (needs tsung: apt-get
# install tsung). Knobs: TSUNG_USERS, TSUNG_RATE, TSUNG_HOLD (seconds each
# user stays connected), TSUNG_PORT; the report lands in bench/tsung/log/.
bench-tsung: build
	bench/tsung/run.sh

# Density at two counts, connect rate and fan-out latency, Switchboard and
# the baseline in one run: a table, and bench/results/<time>/chart.html.
# Knobs: LOW, HIGH (connections), EVENTS, EVENT_RATE, SUSTAINED_EVENTS,
# SUSTAINED_RATE. It prints the URL of the node under test's dashboard
# first: the live view while it runs. Root applies sysctl/ for the run and puts the previous
# values back on exit, also on failure or Ctrl-C (bench/lib.sh).
bench: build bench-baseline
	bench/run.sh

# The whole box: as many nodes as CONNS (default 1,000,000) needs on one
# port (--reuse-port) and one loopback Redis, the load generator holding
# CONNS connections, one broadcast to all of them. Minutes; root applies
# sysctl/ for the run and puts the previous values back on exit, also on
# failure or Ctrl-C (bench/lib.sh). Summary in bench/results/.
bench-wholebox: build
	bench/wholebox.sh

# Healthy clients beside non-reading ones: the same load twice on a fresh
# local node, without and with SLOW_STALLED (1000) of SLOW_CONNS (11000)
# connections that stop reading, SLOW_RATE (5) events/s of SLOW_PAYLOAD
# (3072) bytes for SLOW_SECONDS (90); prints node RSS, healthy latency and
# the slow-consumer closes of each run (details in bench/slow.sh).
bench-slow: build
	bench/slow.sh

# Two variants of the node in interleaved runs: A and B are "BINARY
# COMPRESSING-FRACTION" (default bin/switchboard with 0 and with 1), RUN is
# idle (RSS per connection at CONNS, default 19,000) or sustained (node CPU
# per delivery in make bench's sustained run, PAYLOAD bytes per event at
# RATE events/s); ROUNDS (8). Prints each round, the paired difference and
# the ratio.
bench-ab: build
	bench/ab.sh

# What an open dashboard costs: the node's CPU per delivery under 2,000
# connections and 50 events/s, in alternating 8 s windows without and with
# a page's event stream open (BenchmarkDashboardCost, ~45 s per COUNT);
# then one second of the dashboard's own work (BenchmarkTick).
bench-dashboard:
	@$(GO) version; uptime
	$(GO) test -run '^$$' -bench '^BenchmarkDashboardCost$$' -benchtime 1x -count $(COUNT) ./cmd/switchboard/
	$(GO) test -run '^$$' -bench '^BenchmarkTick$$' -benchmem -count $(COUNT) ./pkg/dashboard/
	@uptime

# The goroutine-per-connection gorilla/websocket server that `switchboard
# bench` figures are compared with. Its own module, so the product's go.mod
# never gains gorilla.
bench-baseline:
	cd bench/baseline && $(GO) build -o ../../bin/baseline .

# The subscription index at 10k to 5M subscriptions: the seed's fan-out
# table (time to resolve one event, heap per subscription), subscribe and
# unsubscribe costs, and lookups under churn; see bench/RESULTS.md.
# INDEX_BENCH_MAX_SUBS lets the 5M world be built (it is skipped otherwise);
# COUNT repeats each figure, report the median. Load is printed before and
# after because the figures are only as good as the machine was quiet.
COUNT ?= 3
bench-index:
	@$(GO) version; uptime
	INDEX_BENCH_MAX_SUBS=5000000 $(GO) test -run '^$$' -bench '^Benchmark(Index|Memory|Write|LookupUnderChurn)$$' \
	  -benchmem -count=$(COUNT) -timeout 60m ./pkg/index/
	@uptime

# Each fuzz target of every package (pkg/, internal/, cmd/: any func FuzzX
# in a _test.go file is found) for FUZZTIME. Seed corpora live in each
# package's testdata/fuzz/<FuzzName>/ and also run in every plain go test.
# A run that ends only in Go 1.26's end-of-fuzztime "context deadline
# exceeded" (no failing input written) is reported, not failed. FUZZTIME may
# also be a count (e.g. 5000x), which has no deadline to race.
FUZZTIME ?= 30s
fuzz:
	@set -e; list=$$($(GO) test -list '^Fuzz' ./...) || { echo "$$list"; exit 1; }; \
	targets=$$(echo "$$list" | awk '/^Fuzz/ { n = n " " $$1 } /^ok / { k = split(n, a, " "); for (i = 1; i <= k; i++) print $$2 ":" a[i]; n = "" }'); \
	[ -n "$$targets" ] || { echo "no fuzz targets found"; exit 1; }; \
	failed=; for pt in $$targets; do \
	  pkg=$${pt%%:*}; t=$${pt##*:}; \
	  echo "== $$pkg $$t ($(FUZZTIME))"; \
	  log=$$(mktemp); \
	  $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg 2>&1 | tee $$log; rc=$${PIPESTATUS[0]}; \
	  if [ $$rc -ne 0 ]; then \
	    if grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
	      echo "$$t: the fuzz coordinator's -fuzztime deadline race (golang/go#75804, fixed in Go 1.27), no input failed"; \
	    else failed="$$failed $$t"; fi; \
	  fi; rm -f $$log; \
	done; \
	[ -z "$$failed" ] || { echo "fuzz targets failed:$$failed (crashers are in the package's testdata/fuzz)"; exit 1; }

clean:
	rm -rf bin
