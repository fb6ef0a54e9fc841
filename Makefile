GO ?= go

.PHONY: all build run test sdk-deps vet bench-go bench-tsung fuzz clean

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

# Tsung's loopback scenario against a local node (needs tsung: apt-get
# install tsung). Knobs: TSUNG_USERS, TSUNG_RATE, TSUNG_HOLD (seconds each
# user stays connected), TSUNG_PORT; the report lands in bench/tsung/log/.
bench-tsung: build
	bench/tsung/run.sh

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
