GO ?= go

.PHONY: all build run test sdk-deps vet bench-go bench-index fuzz clean

all: build

build:
	$(GO) build -o bin/switchboard ./cmd/switchboard

# Runs a node with the embedded broker: nothing else needs to be running.
run:
	$(GO) run ./cmd/switchboard serve

# The test command of the README and of .ci/run. The Appwrite SDK test
# needs Node; its packages are pinned in test/sdk/package-lock.json.
test: sdk-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

sdk-deps:
	@if command -v npm >/dev/null; then npm ci --prefix test/sdk --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Appwrite SDK test will be skipped"; fi

# Go micro-benchmarks (index lookup, encode-once fan-out, frame codec).
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

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

# Each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	@set -e; for pkg in $$($(GO) list ./pkg/...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf bin
