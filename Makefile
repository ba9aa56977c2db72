# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := docker-registry skopeo umoci busybox chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps system-deps test unit fuzz demo up bench clean

deps: system-deps $(STAMP)

# Debian packages: the real OCI registry server, skopeo/umoci/busybox for the run-the-image test, a
# Java runtime for gcloud's Firestore and Pub/Sub emulators (this machine kind ships the emulators
# themselves under the gcloud SDK; infra/local/firestore_emulator.py says what is missing if not), and
# Chromium, whose headless mode renders `baseroll status --html` for tests/e2e/test_status_views.py.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS) java; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker-registry skopeo umoci busybox-static \
	    default-jre-headless chromium >/dev/null; \
	fi
	@sdk="$$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)"; \
	jar="$${BASEROLL_FIRESTORE_EMULATOR_JAR:-$$sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar}"; \
	[ -f "$$jar" ] || { echo "gcloud's Firestore emulator is missing ($$jar): install gcloud's cloud-firestore-emulator component or set BASEROLL_FIRESTORE_EMULATOR_JAR"; exit 1; }

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# The import contract (.importlinter) first, then every tier but the bench on $(TEST_WORKERS) pytest-xdist
# workers (most e2e time is spent waiting on deploys, quotas and deliveries, so more workers than
# cores): tests/conftest.py keeps each integration/e2e module on one worker and starts the longest first.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope

test: deps
	$(BIN)/lint-imports --no-cache --no-logo
	$(PYTEST) -m "not bench"

# The quick loop: the contract and the unit tier but its fuzzers (10,000 inputs per parser, about
# a minute of CPU), which `make test` runs beside the end-to-end tests and `make fuzz` alone.
unit: $(STAMP)
	$(BIN)/lint-imports --no-cache --no-logo
	$(PYTEST) -m "not fuzz" tests/unit

fuzz: $(STAMP)
	$(PYTEST) -m fuzz tests/unit

demo: deps
	$(BIN)/python -m infra.local.demo

# The local stack with a seeded fleet, kept up until Ctrl-C: prints the exports and commands to try.
up: deps
	$(BIN)/python -m infra.local.playground up

bench: deps
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/bench

clean:
	rm -rf $(VENV) build *.egg-info functions/*.egg-info
