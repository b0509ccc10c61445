# One place for the commands a developer and CI run. `make test` is the README's test command.
CARGO ?= cargo

.PHONY: all fmt lint test bench fuzz-build ci replay local

all: lint test

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Every test: unit, integration (one binary under tests/core) and doc tests.
test:
	$(CARGO) test --locked --doc
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast --lib --bins --tests; \
	fi

# Replay throughput against plain serde_json parsing, and peak memory (BENCH_EVENTS=200000 for a quick run).
bench:
	$(CARGO) bench --locked --bench replay

# The cargo-fuzz target must keep building (running it needs nightly; see fuzz/README.md).
fuzz-build:
	$(CARGO) build --locked --manifest-path fuzz/Cargo.toml

# The standalone relay on embedded defaults (the README's first command).
local:
	$(CARGO) run --locked -q -- local

# The example story.
replay:
	$(CARGO) run --locked -q -- replay --policy examples/policy.toml --format text examples/events

ci: lint test fuzz-build
