GO ?= go

.PHONY: all build run test sdk-deps vet bench-go bench-baseline fuzz clean

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

# The goroutine-per-connection gorilla/websocket server that `switchboard
# bench` figures are compared with. Its own module, so the product's go.mod
# never gains gorilla.
bench-baseline:
	cd bench/baseline && $(GO) build -o ../../bin/baseline .

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
