# One place for the commands a developer and CI run. `make test` is the README's test command.
CARGO ?= cargo

.PHONY: all fmt lint test bench fuzz-build ci replay local

all: lint test

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Every test: the static checks of infra/ (make checkov), unit, integration (one binary under tests/core) and doc
# tests. The Blob store's contract tests need Azurite: started here unless something already answers on its port,
# and then stopped again, pass or fail.
test:
	@$(MAKE) --no-print-directory checkov
	@$(MAKE) --no-print-directory browser-deps
	$(CARGO) test --locked --doc
	@set -e; \
	if sh .tools/azurite.sh running; then stop=true; else sh .tools/azurite.sh start; stop="sh .tools/azurite.sh stop"; fi; \
	trap "$$stop" EXIT; trap 'exit 130' INT TERM; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast --lib --bins --tests; \
	fi

.PHONY: azurite azurite-stop

# Azurite's Blob service on 127.0.0.1:10000 in the background (installed into .tools/ with npm ci if missing).
azurite:
	@sh .tools/azurite.sh start

azurite-stop:
	@sh .tools/azurite.sh stop

# Replay throughput against plain serde_json parsing, and peak memory (BENCH_EVENTS=200000 for a quick run).
bench:
	$(CARGO) bench --locked --bench replay
	$(CARGO) bench --locked --bench runtime

# The cargo-fuzz target must keep building (running it needs nightly; see fuzz/README.md).
fuzz-build:
	$(CARGO) build --locked --manifest-path fuzz/Cargo.toml --target-dir target

# The standalone relay on embedded defaults (the README's first command).
local:
	$(CARGO) run --locked -q -- local

# The example story.
replay:
	$(CARGO) run --locked -q -- replay --policy examples/policy.toml --format text examples/events

ci: lint test fuzz-build

.PHONY: checkov package package-compat

VENV ?= .venv
PYTHON ?= python3
CHECKOV_VERSION = 3.3.30
ZIGLANG_VERSION = 0.17.0
CARGO_ZIGBUILD_VERSION = 0.24.0

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.checkov-$(CHECKOV_VERSION): $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	@touch $@

# Static checks of the infrastructure code: checkov (pinned, from PyPI into .venv/) over the Bicep in infra/ and the
# workflow in .github/, then the parameter files and infra/README.md against infra/main.bicep. Any failing check
# fails the target; a check is only ever skipped in the Bicep file itself, with the reason.
checkov: $(VENV)/.checkov-$(CHECKOV_VERSION)
	$(VENV)/bin/checkov --directory infra --framework bicep --compact --quiet --skip-download
	$(VENV)/bin/checkov --directory .github --framework github_actions --compact --quiet --skip-download
	$(VENV)/bin/python infra/check_params.py

# The deployable app for Flex Consumption: dist/app/ and dist/mlops-relay.zip (infra/README.md, step 3).
# POLICY=file ships another policy than examples/policy.toml.
DIST ?= dist
package:
	$(CARGO) build --profile dist --locked
	$(CARGO) run --profile dist --locked -q -- package --out $(DIST) $(if $(POLICY),--policy $(POLICY))

$(VENV)/.zigbuild-$(CARGO_ZIGBUILD_VERSION): $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check ziglang==$(ZIGLANG_VERSION) cargo-zigbuild==$(CARGO_ZIGBUILD_VERSION)
	@touch $@

# The same package, with the binary linked against an older glibc (GLIBC=2.28 by default) by Zig, for hosts whose
# glibc is older than the build machine's (infra/README.md, step 3).
GLIBC ?= 2.28
package-compat: $(VENV)/.zigbuild-$(CARGO_ZIGBUILD_VERSION)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CARGO) zigbuild --release --locked --target x86_64-unknown-linux-gnu.$(GLIBC)
	$${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/mlops-relay package --out $(DIST) $(if $(POLICY),--policy $(POLICY))

.PHONY: browser-deps

# The approval page's browser test (tests/core/browser.rs) drives Debian's Chromium with playwright-core:
# Chromium from apt when it is missing (CHROMIUM=path uses another Chromium-based browser, e.g. a CI image's
# Chrome), playwright-core into .tools/ (pinned by its package-lock.json).
browser-deps:
	@[ -x "$${CHROMIUM:-/usr/bin/chromium}" ] || { \
		echo "installing chromium (apt)"; \
		SUDO=$$(if [ "$$(id -u)" -ne 0 ]; then echo sudo; fi); \
		$$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null; }
	@[ -d .tools/node_modules/playwright-core ] || npm ci --prefix .tools --no-audit --no-fund --loglevel=error
