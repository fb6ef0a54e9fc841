GO ?= go

.PHONY: all build run test vet bench-go fuzz clean

all: build

build:
	$(GO) build -o bin/switchboard ./cmd/switchboard

# Runs a node with the embedded broker: nothing else needs to be running.
run:
	$(GO) run ./cmd/switchboard serve

# The test command of the README and of .ci/run.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

# Go micro-benchmarks (index lookup, encode-once fan-out, frame codec).
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

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
