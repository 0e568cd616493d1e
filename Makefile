# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The other Python versions the suite runs on (each once, in .venv-X.Y): pythonX.Y on
# PATH, else pyenv's; skipped with a message where this machine has neither.  They run
# with GEVWIRE_PURE_PYTHON=1, so the pure-Python path of what gevwire._speedups
# compiles is tested whole too.
OTHER_PYTHONS ?= 3.12 3.13

.PHONY: demo test test-once other-pythons lint bench clean

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
	$(PY) -m mypy examples
	MYPYPATH=fuzz $(PY) -m mypy fuzz/fuzzkit fuzz/run.py fuzz/soak.py

# Test modules that serve sockets are marked ``io`` and run a second time on io_uring
# ("auto": it falls back to epoll, and says so in pytest's header, where the kernel
# refuses io_uring); tests/conftest.py fails a test that serves without the mark.
# The public conformance suites (Autobahn, Paho's; minutes each) run in the first pass only.
test: $(STAMP) lint
	$(PY) -m pytest -q
	$(PY) -m pytest -q --backend=auto -m "io and not conformance"
	@$(MAKE) --no-print-directory other-pythons

# The suite once (epoll) on $(PYTHON) in $(VENV): what other-pythons runs per version.
test-once: $(STAMP)
	$(PY) -m pytest -q -m "not conformance"

other-pythons:
	@main=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	for v in $(OTHER_PYTHONS); do \
		if [ "$$v" = "$$main" ]; then continue; fi; \
		py=; \
		if python$$v -c '' >/dev/null 2>&1; then py=python$$v; \
		else for p in $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v; do \
			if [ -x "$$p" ]; then py=$$p; fi; done; fi; \
		if [ -z "$$py" ]; then \
			echo "Python $$v: not on this machine (nor in pyenv), its run is skipped"; \
			continue; fi; \
		echo "== the suite on Python $$v ($$py), on the pure-Python path"; \
		GEVWIRE_PURE_PYTHON=1 $(MAKE) --no-print-directory test-once PYTHON=$$py \
			VENV=.venv-$$v || exit 1; \
	done

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/run_echo.py

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
