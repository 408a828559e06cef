# Two commands do everything on a fresh Debian machine (as root, or with sudo):
#   make synth   set up, then render dist/ from charts/settings/
#   make test    set up, then run the whole test suite
# Set-up is idempotent: it installs only what is missing or out of date.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# checkov, the suite's security scan, needs versions requirements.txt cannot
# take, so it gets a venv of its own.
CHECKOV_VENV := .venv-checkov
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# promtool checks the rules at every synth; the tests run the real programs.
SYNTH_DEBS := prometheus
TEST_DEBS := prometheus prometheus-alertmanager prometheus-node-exporter \
	prometheus-postgres-exporter prometheus-redis-exporter postgresql \
	redis-server iproute2 util-linux curl openssl dash mawk

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION ?= 18,20

.PHONY: setup setup-test synth test lint clean bench

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || ./scripts/install-debs.sh python3-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r requirements-checkov.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed
	@./scripts/install-debs.sh $(SYNTH_DEBS)

setup-test: setup $(CHECKOV_VENV)/.installed
	@./scripts/install-debs.sh $(TEST_DEBS)

# The check runs the same validation first, so a bad setting stops with one
# line instead of the CLI's report of a failed child process.
synth: setup
	@$(PY) main.py --check
	npx --no-install cdk8s synth --check-upgrade=false

test: setup-test
	$(PY) -m pytest

# Render and alert-latency figures (docs/benchmarks.md);
# e.g. make bench BENCH_ARGS=--quick
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf .build $(VENV) $(CHECKOV_VENV) node_modules
