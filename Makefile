# The operator: build, test, benchmark, demo.
# Every target that needs real hosts installs what it needs first.

GO       ?= go
PKGS     := ./...
# How long make fuzz runs each fuzz target, and how much make test does
# (a count of executions, a few seconds each: a count never meets the
# deadline race of Go 1.26's fuzzing coordinator, see scripts/fuzz.sh).
FUZZTIME      ?= 10m
TEST_FUZZTIME ?= 5000x
# The packages make test also runs under the race detector: all but the
# end-to-end suites of reconcile and cmd/operator, whose real clusters
# take minutes as it is (their Go code is raced through the packages
# they use).
RACE_PKGS := ./config/ ./gitsrc/ ./history/ ./hosts/ ./manifests/ ./pages/ ./server/ ./statuses/... ./testbed/...

.PHONY: all build test bench fuzz demo lint deps clean

all: build

build:
	$(GO) build -o bin/operator ./cmd/operator

deps:
	@bash scripts/install-deps.sh

# The whole suite: unit tests, integration tests on real hosts (network
# namespaces with sshd, a real Elixir cluster, HAProxy, PostgreSQL, git),
# the race detector on RACE_PKGS, then every fuzz target for a few seconds.
test: deps lint
	$(GO) test -count=1 -timeout 40m $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(RACE_PKGS)
	GO=$(GO) FUZZTIME=$(TEST_FUZZTIME) bash scripts/fuzz.sh

# Every fuzz target of every parser of outside input, FUZZTIME each.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

# The benchmarks, on the same real hosts, one package at a time (each
# loads the machine's two cores). The deploy benchmarks (reconcile: one
# change, and under traffic) also write their reports, with the figures
# and this command, to docs/benchmarks.md, a section each.
bench: deps
	BENCH_REPORT=$(CURDIR)/docs/benchmarks.md BENCH_ROUNDS=3 BENCH_COMMAND='make bench: BENCH_ROUNDS=3 go test -p 1 -run=NONE -bench=. -benchtime=1x -timeout 90m $(PKGS)' \
	  $(GO) test -p 1 -run=NONE -bench=. -benchtime=1x -timeout 90m $(PKGS)

demo: deps build
	$(GO) run ./examples/demo

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

clean:
	rm -rf bin
