# dualscope: the two commands of the README, and what they need.
# Each target makes its own virtual environment (.venv) and installs what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test venv lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this takes the machine's CPU build; a plain 'torch' would pull
	# several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[reference,scale,test,bench]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## The main job: the demo on the bundled samples (no GPU needed)
demo: $(STAMP)
	$(BIN)/dualscope demo

# Debian's Chromium for the browser tests (Playwright drives it; no browser download)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null

# Debian's Prometheus for the rule checks and the live Prometheus tests (brings promtool)
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

CODE := dualscope profiler probes dashboard tests bench sample_traces

## Install everything, then lint, type-check and run the whole test suite
test: $(STAMP) $(CHROMIUM) $(PROMTOOL) lint
	$(BIN)/python -m pytest -q

## ruff and mypy, failing on any finding (also the pre-commit hooks)
lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
