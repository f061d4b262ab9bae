# tablemq. `make` (or `make help`) lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO           ?= go
BIN          := bin/tablemq
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      := -X main.version=$(VERSION)
FUZZTIME     ?= 5s
TEST_TIMEOUT ?= 20m
GOBIN        := $(shell $(GO) env GOPATH)/bin
STATICCHECK  := $(shell command -v staticcheck 2>/dev/null || echo $(GOBIN)/staticcheck)

.PHONY: help build run test test-all bench bench-memory lint fuzz imports clean

help: ## list the targets
	@echo "tablemq make targets:"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/tablemq
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tablemq

run: ## run a broker on the embedded SQLite store (./data/tablemq.db) at 127.0.0.1:8780
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/tablemq serve

test: ## run every test on each reachable backend (SQLite always), then fuzz each target for FUZZTIME
	$(GO) run ./internal/testdb/probe
	$(GO) test -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

test-all: ## like test but with -race, and PostgreSQL and MySQL must be reachable (never skips a backend)
	TABLEMQ_TEST_REQUIRE=postgres,mysql $(GO) run ./internal/testdb/probe
	TABLEMQ_TEST_REQUIRE=postgres,mysql $(GO) test -race -count=1 -p 2 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

# A run that fails with nothing but "context deadline exceeded" (no failing input
# written, no panic) is Go 1.26's fuzz coordinator racing its own -fuzztime deadline
# (go.dev/issue/75804, fixed in Go 1.27), not a finding: such a target runs once more,
# and fails the target only if that fails too.
fuzz: ## run each fuzz target (func FuzzXxx in *_test.go) for FUZZTIME (default 5s)
	@found=0; \
	for f in $$(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . | sort); do \
		dir=$$(dirname "$$f"); \
		for name in $$(grep -oE '^func Fuzz[A-Za-z0-9_]*' "$$f" | sed 's/^func //'); do \
			found=1; echo "fuzz $$dir $$name ($(FUZZTIME))"; \
			for try in 1 2; do \
				rc=0; out=$$($(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) "$$dir" 2>&1) || rc=$$?; \
				echo "$$out"; \
				if [ $$rc = 0 ]; then break; fi; \
				if [ $$try = 1 ] && grep -q 'context deadline exceeded' <<<"$$out" && ! grep -qE 'Failing input written|panic:' <<<"$$out"; then \
					echo "fuzz $$dir $$name: the fuzz coordinator's deadline race (go.dev/issue/75804), no finding: once more"; continue; \
				fi; \
				exit $$rc; \
			done; \
		done; \
	done; \
	if [ $$found = 0 ]; then echo "no fuzz targets found"; fi

bench: build ## measure throughput and latency beside raw PostgreSQL and RabbitMQ (BENCHMARKS.md; BENCH_FLAGS='-runs 3' for medians)
	$(GO) run ./cmd/tmqbench -binary $(BIN) $(BENCH_FLAGS)

bench-memory: build ## measure bounded memory and takeover on PostgreSQL: RSS with 1M queued, kill -9 → first delivery, 1 GiB message, backlog consume rate (issue 4)
	$(GO) run ./cmd/tmqbench -memory -binary $(BIN) $(BENCH_FLAGS)

lint: imports ## gofmt, go vet, staticcheck, import rules, golangci-lint when installed
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt -w needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if [ ! -x "$(STATICCHECK)" ]; then echo "installing staticcheck"; $(GO) install honnef.co/go/tools/cmd/staticcheck@latest; fi
	$(STATICCHECK) ./...
	@if command -v golangci-lint >/dev/null 2>&1; then golangci-lint run ./...; \
	else echo "golangci-lint not installed: skipped (its config is .golangci.yml; 'make imports' checks the import rules)"; fi

imports: ## check the import direction between packages (the depguard rules of .golangci.yml)
	@.ci/imports

clean: ## remove build output and the test cache (not ./data)
	rm -rf bin
	$(GO) clean -testcache
