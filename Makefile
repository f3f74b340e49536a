# The README's two commands: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Pinned here, loose in pyproject: on these machines 2.13.0 is a local CPU build. GPU hosts give
# their own, words and all: `make serve TORCH_SPEC="torch==2.13.0 --index-url https://..."`.
TORCH_SPEC ?= torch==2.13.0
# Each word of TORCH_SPEC quoted on its own, so that pip gets them apart and the shell keeps "<", ">".
TORCH_ARGS := $(foreach word,$(TORCH_SPEC),'$(word)')

.PHONY: install install-dev serve test bench lint clean FORCE

# What torch was asked for, rewritten only when it changes: a new TORCH_SPEC installs torch again.
$(VENV)/.torch-spec: FORCE
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo $(TORCH_ARGS) | cmp -s - $@ || echo $(TORCH_ARGS) > $@

# Serving needs the project's own dependencies only (no test or benchmark tools).
$(VENV)/.installed: pyproject.toml $(VENV)/.torch-spec
	$(PIP) $(TORCH_ARGS)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

serve: install
	$(PY) -m service

test: install-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install-dev
	$(PY) bench/sliding_window.py
	$(PY) bench/service.py

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
