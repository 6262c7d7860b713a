# Two commands do all the set-up on a fresh machine with only Python: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast interop bench services docs-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

services:
	bash scripts/ensure_services.sh

demo: $(STAMP)
	$(PY) -m z4j_bare demo

test: $(STAMP) services
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP) services
	$(PY) -m pytest -q -p no:cacheprovider -m "not interop and not slow"

interop: $(STAMP) services
	$(PY) -m pytest -q -p no:cacheprovider -m interop tests/interop

bench: $(STAMP) services
	$(PY) -m bench

docs-check: $(STAMP)
	$(PY) scripts/gen_config_docs.py --check

clean:
	rm -rf $(VENV) .bench .interop build *.egg-info
