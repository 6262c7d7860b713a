# Two commands do all the set-up on a fresh machine with only Python: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The extras' lower bounds (oldest engines, rq-scheduler, websockets), in a second virtualenv.
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed
# django-celery-beat cannot share a virtualenv with rq-scheduler (two top-level `crontab` modules).
DJBEAT := .venv-djbeat
DJBEAT_STAMP := $(DJBEAT)/.installed
ENGINE_TESTS := tests/test_celery_adapter.py tests/test_celery_worker.py tests/test_celerybeat_adapter.py \
	tests/test_rq_e2e.py tests/test_rq_unit.py tests/test_rqscheduler_adapter.py $(wildcard tests/test_dramatiq_*.py) \
	$(wildcard tests/test_local_brain*.py)
# The slowest parametrized runs stay in the main suite only (current versions): keeps `make test` < 15 min.
OLDEST_SKIP := not (test_lifecycle_without_events_flag and rabbitmq) and not test_broker_down_is_reported_not_raised \
	and not test_ingest_throughput

.PHONY: demo test test-fast test-oldest test-djbeat interop bench services docs-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

services:
	bash scripts/ensure_services.sh

demo: $(STAMP)
	$(PY) -m z4j_bare demo

$(OLDEST_STAMP): pyproject.toml constraints-oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(OLDEST)/bin/python -m pip install -q -e '.[test]' -c constraints-oldest.txt
	touch $(OLDEST_STAMP)

test: $(STAMP) services
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) test-oldest
	$(MAKE) test-djbeat

test-oldest: $(OLDEST_STAMP) services
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider -m "not interop" -k "$(OLDEST_SKIP)" $(ENGINE_TESTS)

$(DJBEAT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DJBEAT)
	$(DJBEAT)/bin/python -m pip install -q --upgrade pip
	$(DJBEAT)/bin/python -m pip install -q -e '.[celery,brain,django]' pytest pytest-timeout
	touch $(DJBEAT_STAMP)

test-djbeat: $(DJBEAT_STAMP) services
	$(DJBEAT)/bin/python -m pytest -q -p no:cacheprovider tests/test_celerybeat_django.py

test-fast: $(STAMP) services
	$(PY) -m pytest -q -p no:cacheprovider -m "not interop and not slow"

interop: $(STAMP) services
	$(PY) -m pytest -q -p no:cacheprovider -m interop tests/interop

bench: $(STAMP) services
	$(PY) -m bench

docs-check: $(STAMP)
	$(PY) scripts/gen_config_docs.py --check

clean:
	rm -rf $(VENV) $(OLDEST) $(DJBEAT) .bench .interop build *.egg-info
