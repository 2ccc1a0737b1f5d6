# chatlog: the two commands a newcomer needs are `make demo` and `make test`.
# Everything they need is installed here, every time; caches only make it faster.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# `make test` spreads the tests over this many pytest-xdist workers (0: one process). The
# tests wait on brokers, servers and processes more than they compute, so three keep two
# cores busy. The system tests then run alone, one at a time: they time failovers and
# stops, which other tests beside them would slow. Both runs always run; exit 5 (no test
# selected, as for PYTEST_ARGS=tests/unit) fails neither.
PYTEST_WORKERS ?= 3

.PHONY: help venv lint services services-3 services-stop services-status topics browser test demo demo-stop bench clean

help:
	@echo "make demo           set everything up, run the demo, leave the chat page running"
	@echo "make demo-stop      stop the chat page the demo left running"
	@echo "make test           set everything up, lint, and run every test (real Kafka + Redis)"
	@echo "make services       start the local Kafka broker and Redis (no Docker needed)"
	@echo "make services-3     the same with a three-broker Kafka cluster (fault tests)"
	@echo "make services-stop  stop exactly what make services (and make demo) started"
	@echo "make lint           ruff + mypy --strict on the package code"
	@echo "make bench          chatlog beside its peers and Kafka's limits (~9 min; BENCH_ARGS=--quick)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "chatlog needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

services: venv
	$(PY) -m dev.services up

services-3: venv
	$(PY) -m dev.services up --brokers 3

services-stop: venv
	$(PY) -m dev.demo_page stop
	$(PY) -m dev.services down

services-status: venv
	$(PY) -m dev.services status

topics: services
	$(VENV)/bin/chatlog topics create

# Debian's chromium and chromedriver for the chat page's browser test (apt-get, first run).
browser: venv
	$(PY) -m dev.browser

# The stack stays up after the tests so a second run is fast; `make services-stop` ends it.
test: lint services browser
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder \
		-m 'not system' $(PYTEST_ARGS); parallel=$$?; \
	$(PY) -m pytest -m system $(PYTEST_ARGS); serial=$$?; \
	for status in $$parallel $$serial; do [ $$status -eq 0 ] || [ $$status -eq 5 ] || exit 1; done

# The demo starts what it needs, stops the projector it ran, and leaves the stack up and
# the chat page running (a dev-mode gateway and its projector: `make demo-stop`).
demo: services
	$(PY) -m dev.demo

demo-stop: venv
	$(PY) -m dev.demo_page stop

bench: services
	$(PY) -m bench $(BENCH_ARGS)

clean: services-stop
	rm -rf $(VENV) .chatlog .mypy_cache .ruff_cache .pytest_cache
