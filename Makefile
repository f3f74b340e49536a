# The README's two commands: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned here, loose in pyproject: on these machines 2.13.0 is a local CPU build; GPU hosts may
# override, e.g. `make serve TORCH_SPEC=torch==2.13.0 --index-url ...`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install serve test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(PY) -m service

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) bench/sliding_window.py
	$(PY) bench/service.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
