# switchyard — run `make help` for the targets.
GO      ?= go
CLANG   ?= clang
BIN     := bin
COUNT   ?= 5
PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: help build generate check-generate test test-short test-long fuzz bench bench-packet bench-policy demo lint clean man completion install

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build switchyard and switchyardd into bin/.
	$(GO) build -o $(BIN)/ ./cmd/...

generate: ## Rebuild the BPF objects (bpfel and bpfeb) from bpf/ with clang (bpf2go), headers from bpf/include only.
	@! git grep -n 'go:generate go tool bpf2go' -- '*.go' | grep -v -e '-nostdinc -I[./]*bpf/include" -target bpfel,bpfeb ' || \
		{ echo "build every BPF object with -nostdinc -I.../bpf/include, for -target bpfel,bpfeb (bpf/include/ has the kernel ABI)"; exit 1; }
	$(GO) generate ./...

GENERATED := '*_bpfel.go' '*_bpfel.o' '*_bpfel_test.go' '*_bpfel_test.o' '*_bpfeb.go' '*_bpfeb.o' '*_bpfeb_test.go' '*_bpfeb_test.o'

check-generate: generate ## Fail if the committed BPF objects differ from a rebuild (or a rebuild makes new ones).
	@out=$$(git status --porcelain -- $(GENERATED)); test -z "$$out" || \
		{ echo "$$out"; echo "generated BPF objects are out of date: run 'make generate' and commit"; exit 1; }

lint: ## gofmt and go vet.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# tests/ (the end-to-end tests, the longest package) is named first so that
# it starts first: go test runs two packages at a time on two cores, in the
# order named, and the others fit beside it.
test: lint ## Run every test (needs root: tests make their own namespaces and bpffs).
	$(GO) test -count=1 -race -timeout 24m ./tests/ ./...

test-long: ## The in-kernel splice engine's integrity test, SPLICE_RUNS times (default 50) of 256 MiB (root).
	SY_SPLICE_RUNS=$${SPLICE_RUNS:-50} $(GO) test -count=1 -timeout 60m -run '^TestKernelSpliceRepeated$$' -v ./internal/policy/

# The fuzzer shrinks each input that finds new code before it goes on, and
# pauses the count meanwhile: FUZZMINIMIZETIME caps that, as go test's 60s
# default stalls parsers whose inputs cost a YAML parse or more per try.
fuzz: ## Run each fuzz test for FUZZTIME (default 30s), shrinking inputs for FUZZMINIMIZETIME (default 1s).
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for f in $$(grep -h '^func Fuzz' $$t/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
			echo "== $$t $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} -fuzzminimizetime $${FUZZMINIMIZETIME:-1s} $$t || exit 1; \
		done; \
	done

bench: ## Run the benchmarks COUNT times and print `name value unit` medians and ratios.
	@$(GO) test -run '^$$' -bench '^BenchmarkLookup$$' -benchtime 1x -count 1 -timeout 30m ./dispatch/ | tee /tmp/switchyard-bench.txt >/dev/null
	@$(GO) test -run '^$$' -bench 'AddBindings|BindOne' -benchtime 3x -count 3 ./dispatch/ | tee -a /tmp/switchyard-bench.txt >/dev/null
	@$(GO) test -run '^$$' -bench '^BenchmarkRecover$$' -benchtime 1x -count 3 ./dispatch/ | tee -a /tmp/switchyard-bench.txt >/dev/null
	@$(GO) test -run '^$$' -bench 'Register|DaemonMemory|StatusUnderListingFlood|ApplyMillion' -count 3 -timeout 30m ./tests/ | tee -a /tmp/switchyard-bench.txt >/dev/null
	@$(GO) test -run '^$$' -bench 'ConfigWatch' -benchtime 9x -count 3 ./tests/ | tee -a /tmp/switchyard-bench.txt >/dev/null
	@$(GO) test -run '^$$' -bench 'LookupCLI' -benchtime 10x -count 3 ./tests/ | tee -a /tmp/switchyard-bench.txt >/dev/null
	@$(GO) run ./internal/benchreport < /tmp/switchyard-bench.txt

bench-packet: ## TCP connections/s and UDP CPU per datagram with the program at 1, 100,000 and 1,048,576 bindings vs without (root).
	@$(GO) test -run '^$$' -bench '^BenchmarkPacketPath$$' -benchtime 1x -count 1 -timeout 30m ./tests/ | tee /tmp/switchyard-bench-packet.txt >/dev/null
	@$(GO) run ./internal/benchreport < /tmp/switchyard-bench-packet.txt | grep -v ' ns/op$$'

bench-policy: ## Benchmark bypass and splice with sockperf, iperf3, socat (root; COUNT runs, default 3).
	@COUNT=$${POLICY_COUNT:-3} GO=$(GO) ./scripts/bench-policy.sh

demo: build ## Dispatch every port of a prefix to one socket in a throwaway namespace.
	./$(BIN)/switchyard demo

man: ## Generate the man pages bin/man/switchyard.1 and switchyardd.8 from the help texts.
	$(GO) run ./internal/docgen -o $(BIN)/man

completion: build ## Generate the bash and zsh completion scripts into bin/completion.
	@mkdir -p $(BIN)/completion
	$(BIN)/switchyard completion bash > $(BIN)/completion/switchyard.bash
	$(BIN)/switchyard completion zsh > $(BIN)/completion/_switchyard

install: build man completion ## Install binaries, man pages, completions and units under DESTDIR/PREFIX (/usr/local).
	install -D -m 0755 $(BIN)/switchyard $(DESTDIR)$(PREFIX)/bin/switchyard
	install -D -m 0755 $(BIN)/switchyardd $(DESTDIR)$(PREFIX)/bin/switchyardd
	install -D -m 0644 $(BIN)/man/switchyard.1 $(DESTDIR)$(PREFIX)/share/man/man1/switchyard.1
	install -D -m 0644 $(BIN)/man/switchyardd.8 $(DESTDIR)$(PREFIX)/share/man/man8/switchyardd.8
	install -D -m 0644 $(BIN)/completion/switchyard.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/switchyard
	install -D -m 0644 $(BIN)/completion/_switchyard $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_switchyard
	install -D -m 0644 systemd/switchyardd.service $(DESTDIR)$(PREFIX)/lib/systemd/system/switchyardd.service
	install -D -m 0644 systemd/switchyardd@.service $(DESTDIR)$(PREFIX)/lib/systemd/system/switchyardd@.service

clean: ## Remove build output.
	rm -rf $(BIN)
