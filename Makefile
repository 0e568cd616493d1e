# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check gevwire codecs tests examples benchmarks fuzz
	$(PY) -m mypy gevwire codecs
	MYPYPATH=fuzz $(PY) -m mypy fuzz/fuzzkit fuzz/run.py

# Test modules that serve sockets are marked ``io`` and run a second time on io_uring
# ("auto": it falls back to epoll, and says so in pytest's header, where the kernel
# refuses io_uring); tests/conftest.py fails a test that serves without the mark.
test: $(STAMP) lint
	$(PY) -m pytest -q
	$(PY) -m pytest -q --backend=auto -m io

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/run_echo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
