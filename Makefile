GO ?= go
BIN := bin/walrelay
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build test unit e2e bench fuzz demo vet clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/walrelay

# The whole suite: vet, unit tests with the race detector, e2e against real PostgreSQL.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...

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
	$(GO) test -run "^$$" -bench . -benchtime 1x -timeout 30m ./e2e/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseCommand -fuzztime 60s ./relay/

demo: build
	./$(BIN) demo

clean:
	rm -rf bin
